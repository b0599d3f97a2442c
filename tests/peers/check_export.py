#!/usr/bin/env python3
"""Check neuroedge's exports with the readers researchers use, against the
journal read independently (journal_reader.py: sqlite3, cbor2, zstandard,
cryptography).

    check_export.py xdf FILE --journal J --key K [--key K2] [--missing-key-id ID]
    check_export.py edf FILE --journal J --key K... --device D [--filtered]
                    [--exact] [--missing-key-id ID] [--expect-restart]
    check_export.py bids ROOT --journal J --key K... --subject S --task T
                    [--run N] [--filtered]

xdf: pyxdf.load_xdf (dejitter off) logs no warning; per device a float32
stream whose every value equals the journal's f32 bit for bit and every
timestamp the journal's f64; its marker stream has every marker at its
exact time; every gap and unreadable batch is a BAD_ACQ_SKIP marker and in
the footer.

edf/bdf: pyedflib and MNE read it; every journal sample sits at the
position docs/export.md's timeline rule gives (implemented here
independently), within half a quantisation step (--exact: equal to the
journal's f32); every padded position is covered by a BAD_* annotation,
every journal gap and unreadable batch has its BAD_ACQ_SKIP annotation
with its sample count, every marker its annotation at its time.

bids: the BIDS validator (bids-validator-deno) reports no error;
mne_bids.read_raw_bids reads every recording; events.tsv holds the markers
and gaps; the recordings pass the edf checks.

Prints one JSON line of counts; exits 1 naming the first failure."""
import argparse, json, logging, math, os, subprocess, sys
from datetime import datetime, timezone

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from journal_reader import read_journal  # noqa: E402


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


class Batch:
    def __init__(self, h, p):
        self.h = h
        self.readable = p is not None
        self.seq = h["seq"]
        self.first = h["first_sample"]
        self.n = h["n_samples"]
        self.rate = h["sample_rate"]
        if p is None:
            return
        ch = h["n_channels"]
        self.t = np.frombuffer(p["timestamps"], "<f8")
        self.raw = np.frombuffer(p["raw"], "<f4").reshape(self.n, ch)
        self.filtered = np.frombuffer(p["filtered"], "<f4").reshape(self.n, ch)
        self.channels = list(p["channels"])
        self.markers = [(m["t"], m["value"]) for m in p["markers"]]
        self.gaps = [g for g in p["gaps"] if g["missing"] > 0]
        self.steps = p.get("clock_steps", [])
        self.filter = p["filter"]
        self.idx = self.indices()

    def indices(self):
        inner = sorted(
            (g for g in self.gaps if g["before_sample"] > self.first),
            key=lambda g: g["before_sample"],
        )
        out, index, k = [], self.first, 0
        for _ in range(self.n):
            while k < len(inner) and inner[k]["before_sample"] - inner[k]["missing"] <= index:
                index = max(index, inner[k]["before_sample"])
                k += 1
            out.append(index)
            index += 1
        return np.array(out, dtype=np.int64)


def journal(args, device=None):
    missing = tuple(args.missing_key_id or ())
    rows = read_journal(args.journal, args.key, device=device, missing=missing)
    by_dev = {}
    for h, p in rows:
        by_dev.setdefault(h["device_id"], []).append(Batch(h, p))
    return by_dev


# ---------------------------------------------------------------- XDF

def check_xdf(args):
    import pyxdf

    records = []

    class Keep(logging.Handler):
        def emit(self, r):
            records.append(r)

    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    root.addHandler(Keep(level=logging.WARNING))
    streams, header = pyxdf.load_xdf(args.file, dejitter_timestamps=False)
    check(not records, f"pyxdf logged: {[r.getMessage() for r in records]}")
    check(header["info"]["version"][0] == "1.0", f"file header {header}")
    by_name = {s["info"]["name"][0]: s for s in streams}
    devs = journal(args)
    summary = {"streams": len(streams), "devices": {}}
    rates = set()
    for dev, batches in devs.items():
        ok = [b for b in batches if b.readable]
        s = by_name.get(dev)
        check(s is not None, f"no stream {dev!r}; streams {sorted(by_name)}")
        info = s["info"]
        check(info["type"][0] == "EEG", f"{dev}: type {info['type']}")
        check(info["channel_format"][0] == "float32", f"{dev}: format")
        rate = float(info["nominal_srate"][0])
        check(rate == ok[0].rate, f"{dev}: nominal_srate {rate} != {ok[0].rate}")
        rates.add(rate)
        labels = [c["label"][0] for c in info["desc"][0]["channels"][0]["channel"]]
        check(labels == ok[0].channels, f"{dev}: labels {labels}")
        units = {c["unit"][0] for c in info["desc"][0]["channels"][0]["channel"]}
        check(units == {"microvolts"}, f"{dev}: units {units}")
        acq = info["desc"][0]["neuroedge"][0]
        check(acq["device_id"][0] == dev and acq["site_id"][0], f"{dev}: desc/neuroedge {acq}")
        want_vals = np.concatenate([b.filtered if args.filtered else b.raw for b in ok])
        want_t = np.concatenate([b.t for b in ok])
        got = s["time_series"]
        check(got.dtype == np.float32, f"{dev}: dtype {got.dtype}")
        check(got.shape == want_vals.shape, f"{dev}: shape {got.shape} != {want_vals.shape}")
        diff = np.nonzero(got.view(np.uint32) != want_vals.view(np.uint32))[0]
        check(len(diff) == 0, f"{dev}: {len(diff)} values differ, first at sample {diff[:1]}")
        check(np.array_equal(s["time_stamps"], want_t), f"{dev}: timestamps differ")
        foot = s["footer"]["info"]
        check(int(foot["sample_count"][0]) == len(want_t), f"{dev}: footer count")
        check(float(foot["first_timestamp"][0]) == want_t[0], f"{dev}: footer first")
        check(float(foot["last_timestamp"][0]) == want_t[-1], f"{dev}: footer last")
        fgaps = (foot.get("gaps") or [{}])[0] or {}
        fgaps = fgaps.get("gap", []) if isinstance(fgaps, dict) else []
        # Markers: every journal marker at its exact time, gaps marked.
        m = by_name.get(f"{dev}-markers")
        check(m is not None, f"no stream {dev}-markers")
        check(m["info"]["channel_format"][0] == "string", "marker format")
        got_m = list(zip(m["time_stamps"].tolist(), [v[0] for v in m["time_series"]]))
        want_m = [mk for b in ok for mk in b.markers]
        for t, v in want_m:
            check((t, v) in got_m, f"{dev}: marker {v!r} at {t!r} missing from {got_m[:20]}")
        plain = [x for x in got_m if not x[1].startswith("BAD_ACQ_SKIP ")]
        check(len(plain) == len(want_m), f"{dev}: {len(plain)} markers, journal {len(want_m)}")
        gaps = [g for b in ok for g in b.gaps]
        bad = [x for x in got_m if x[1].startswith("BAD_ACQ_SKIP ")]
        for g in gaps:
            check(
                any(x[1].startswith(f"BAD_ACQ_SKIP {g['missing']} samples (") for x in bad),
                f"{dev}: gap {g} not marked",
            )
            check(
                any(int(fg["before_sample"][0]) == g["before_sample"] for fg in fgaps),
                f"{dev}: gap {g} not in the footer",
            )
        unread = [b for b in batches if not b.readable]
        for b in unread:
            text = f"BAD_ACQ_SKIP {b.n} samples (batch seq {b.seq} unreadable: "
            check(
                any(x[0] == b.h["t_start"] and x[1].startswith(text) for x in bad),
                f"{dev}: unreadable seq {b.seq} not marked at {b.h['t_start']}",
            )
            check(
                any(int(fg["missing"][0]) == b.n and "unreadable" in fg["cause"][0] for fg in fgaps),
                f"{dev}: unreadable seq {b.seq} not in the footer",
            )
        summary["devices"][dev] = {
            "samples": len(want_t),
            "markers": len(want_m),
            "gaps": len(gaps),
            "unreadable": len(unread),
            "rate": rate,
        }
    check(len(rates) == len(devs), f"devices share a rate: {rates}")
    return summary


# ---------------------------------------------------------------- EDF / BDF

def rnd(x):
    return int(math.floor(x + 0.5))


def timeline(batches):
    """docs/export.md's rule: positions of every frame, padded runs, markers."""
    st = {"last": None, "pending": 0.0, "t0": None}
    frames, pads, marks = [], [], []
    fs = next(b.rate for b in batches if b.readable)

    def place(index, t, leading, seq):
        if st["last"] is None:
            st["t0"] = t
            return 0
        li, lp, lt = st["last"]
        step = max(index - li, 1)
        excess = (t - lt - st["pending"]) - step / fs
        extra = rnd(excess * fs) if excess >= 0.25 else 0
        st["pending"] = 0.0
        pos = lp + 1
        unexplained = max(step - 1 - sum(leading), 0)
        if unexplained:
            pads.append((pos, unexplained, "index jump"))
            pos += unexplained
        if extra:
            pads.append((pos, extra, "no samples for"))
            pos += extra
        for m in leading:
            pads.append((pos, m, "lead"))
            pos += m
        return pos

    for b in batches:
        if not b.readable:
            p0 = place(b.first, b.h["t_start"], [], b.seq)
            pads.append((p0, b.n, f"batch seq {b.seq} unreadable"))
            st["last"] = (b.first + b.n - 1, p0 + b.n - 1, b.h["t_end"])
            continue
        if b.n == 0:
            continue
        st["pending"] += sum(c["applied_s"] for c in b.steps if c["t"] <= b.t[0])
        leading = [g["missing"] for g in b.gaps if g["before_sample"] == b.first]
        first = st["last"] is None
        p0 = place(int(b.idx[0]), b.t[0], [] if first else leading, b.seq)
        for g in b.gaps:
            if g["before_sample"] > b.first:
                pads.append((p0 + g["before_sample"] - g["missing"] - int(b.idx[0]), g["missing"], "inner"))
        pos = p0 + (b.idx - b.idx[0])
        frames.append((pos, b))
        for t, v in b.markers:
            k = int(np.searchsorted(b.t, t, side="right"))
            if k == 0:
                onset = pos[0] - (b.t[0] - t) * fs
            else:
                room = (pos[k] - pos[k - 1]) if k < b.n else 1
                onset = pos[k - 1] + min((t - b.t[k - 1]) * fs, room)
            marks.append((max(onset, 0.0), v))
        st["last"] = (int(b.idx[-1]), int(pos[-1]), b.t[-1])
        st["pending"] = sum(c["applied_s"] for c in b.steps if c["t"] > b.t[-1])
    total = st["last"][1] + 1
    return fs, st["t0"], total, frames, pads, marks


def check_edf_file(path, batches, filtered, exact, expect_restart):
    import pyedflib
    import mne

    fs, t0, total, frames, pads, marks = timeline(batches)
    f = pyedflib.EdfReader(path)
    nsig = f.signals_in_file
    labels = f.getSignalLabels()
    ch = len(batches[0].channels) if batches[0].readable else len(next(b for b in batches if b.readable).channels)
    check(nsig == ch, f"{path}: {nsig} signals, journal {ch}")
    check(list(f.getSampleFrequencies()) == [fs] * ch, f"{path}: rates {f.getSampleFrequencies()}")
    n_file = f.getNSamples()[0]
    check(n_file >= total and n_file - total < fs * f.datarecord_duration + 1, f"{path}: {n_file} samples for {total} positions")
    data = np.array([f.readSignal(c) for c in range(ch)])  # physical, µV
    digital = np.array([f.readSignal(c, digital=True) for c in range(ch)]).astype(np.int64)
    steps = []
    for c in range(ch):
        pmin, pmax = f.getPhysicalMinimum(c), f.getPhysicalMaximum(c)
        dmin, dmax = f.getDigitalMinimum(c), f.getDigitalMaximum(c)
        steps.append((pmax - pmin) / (dmax - dmin))
    steps = np.array(steps)
    covered = np.zeros(n_file, dtype=bool)
    worst = 0.0
    for pos, b in frames:
        want = (b.filtered if filtered else b.raw).T  # ch x n
        covered[pos] = True
        got = data[:, pos]
        if exact:
            # The file holds the ADC counts themselves: each digital value
            # is the count of the journal's value (the negative rail,
            # -2^23, is written one count up: docs/export.md), and the
            # physical value is count x scale up to f64 rounding (edflib's
            # offset arithmetic gives -2e-11 uV for count 0).
            scale = 4.5 / 24 / 8388607 * 1e6
            counts = np.rint(want.astype(np.float64) / scale).astype(np.int64)
            check(((counts * scale).astype(np.float32) == want).all(), f"{path}: journal values are not counts")
            counts = np.maximum(counts, -8388607)
            dig = digital[:, pos]
            same = dig == counts
            check(same.all(), f"{path}: counts differ at positions {pos[~same.all(axis=0)][:5]}: {dig[~same][:5]} vs {counts[~same][:5]}")
            check((np.abs(got - counts * scale) < 1e-9).all(), f"{path}: physical values not count x scale")
        err = np.abs(got - want.astype(np.float64))
        lim = steps[:, None] / 2 * (1 + 1e-6) + 1e-9
        bad = err > lim
        if exact:
            bad &= want != np.float32(-8388608 * 4.5 / 24 / 8388607 * 1e6)  # the rail, above
        check(not bad.any(), f"{path}: {bad.sum()} values off by more than half a step (max {err.max()} > {lim.max()})")
        worst = max(worst, float((np.where(bad | (err <= lim), err, 0) / steps[:, None]).max()))
    # Annotations (pyedflib: onsets from the first sample).
    onsets, durations, texts = f.readAnnotations()
    start = f.getStartdatetime()
    f.close()
    ann = list(zip(onsets.tolist(), durations.tolist(), list(texts)))
    badann = [a for a in ann if a[2].startswith("BAD_")]
    # Every padded position is covered by a BAD_* annotation, exactly.
    pad_mask = ~covered
    ann_mask = np.zeros(n_file, dtype=bool)
    for on, du, tx in badann:
        a = rnd(on * fs)
        n = int(tx.split(" ")[1])
        check(abs(du - n / fs) < 1e-5, f"{path}: {tx!r} lasts {du}")
        ann_mask[a : a + n] = True
    check(np.array_equal(pad_mask, ann_mask), f"{path}: padded positions {np.nonzero(pad_mask)[0][:10]} vs annotated {np.nonzero(ann_mask)[0][:10]}")
    for p, n, why in pads:
        check(
            any(rnd(on * fs) == p and tx.startswith(f"BAD_ACQ_SKIP {n} samples (") for on, du, tx in badann),
            f"{path}: padding of {n} at {p} ({why}) not annotated; BAD annotations {badann[:10]}",
        )
        if why.startswith("batch seq"):
            check(any(why in tx for _, _, tx in badann), f"{path}: {why} not named")
    if expect_restart:
        check(any("no samples for" in tx for _, _, tx in badann), f"{path}: no restart hole annotated")
    plain = [a for a in ann if not a[2].startswith("BAD_")]
    check(len(plain) == len(marks), f"{path}: {len(plain)} marker annotations, journal {len(marks)}")
    for onset, text in marks:
        check(
            any(tx == text and abs(on - onset / fs) < 2e-6 for on, _, tx in plain),
            f"{path}: marker {text!r} at {onset / fs} s not found in {plain}",
        )
    # Start: the first sample, UTC (header second + the first TAL's fraction).
    want_start = datetime.fromtimestamp(math.floor(t0), tz=timezone.utc)
    check(start.replace(microsecond=0, tzinfo=timezone.utc) == want_start, f"{path}: start {start} != {want_start}")
    # MNE reads the same values and annotations.
    rd = mne.io.read_raw_bdf if path.endswith(".bdf") else mne.io.read_raw_edf
    raw = rd(path, preload=True, verbose="error")
    check(raw.info["sfreq"] == fs, f"{path}: MNE sfreq {raw.info['sfreq']}")
    check(raw.info["meas_date"] == want_start, f"{path}: MNE meas_date {raw.info['meas_date']} != {want_start}")
    md = raw.get_data() * 1e6
    for pos, b in frames:
        want = (b.filtered if filtered else b.raw).T.astype(np.float64)
        err = np.abs(md[:, pos] - want)
        lim = steps[:, None] / 2 * (1 + 1e-6) + 1e-6
        if exact:
            err[want == np.float64(np.float32(-8388608 * 4.5 / 24 / 8388607 * 1e6))] = 0
        check((err <= lim).all(), f"{path}: MNE values off by {err.max()}")
    mne_ann = [(a["onset"], a["description"]) for a in raw.annotations]
    for on, _, tx in ann:
        check(any(abs(o - on) < 2e-6 and d == tx for o, d in mne_ann), f"{path}: MNE lacks {tx!r} at {on}")
    return {
        "positions": int(total),
        "samples": int(covered.sum()),
        "padded": int(pad_mask.sum()),
        "markers": len(marks),
        "bad_annotations": len(badann),
        "worst_error_in_steps": worst,
        "step_uv_max": float(steps.max()),
    }


def check_edf(args):
    devs = journal(args, device=args.device)
    check(args.device in devs, f"device {args.device} not in the journal")
    return check_edf_file(args.file, devs[args.device], args.filtered, args.exact, args.expect_restart)


# ---------------------------------------------------------------- BIDS

def check_bids(args):
    import mne_bids

    out = subprocess.run(
        # The validator's own entry point, through this Python (no PATH lookup).
        [sys.executable, "-c", "from bids_validator_deno import cli; cli()", args.file, "--format", "json"],
        capture_output=True,
        text=True,
    )
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        fail(f"validator output is not JSON: {out.stdout[:500]} {out.stderr[:500]}")
    issues = report["issues"]["issues"]
    errors = [i for i in issues if i["severity"] == "error"]
    check(not errors, f"BIDS validator errors: {errors[:5]}")
    devs = journal(args)
    summary = {"validator_warnings": len(issues), "recordings": {}}
    ext = "edf" if args.filtered else "bdf"
    for dev, batches in devs.items():
        acq = "".join(c for c in dev if c.isalnum()) if len(devs) > 1 else None
        bp = mne_bids.BIDSPath(
            subject=args.subject,
            task=args.task,
            run=args.run,
            acquisition=acq,
            datatype="eeg",
            suffix="eeg",
            extension=f".{ext}",
            root=args.file,
        )
        check(os.path.exists(bp.fpath), f"no recording {bp.fpath}")
        raw = mne_bids.read_raw_bids(bp, verbose="error")
        ok = [b for b in batches if b.readable]
        notch = ok[0].filter.get("notch_hz")
        if notch is not None:
            check(raw.info["line_freq"] == notch, f"{dev}: line_freq {raw.info['line_freq']}")
        descs = list(raw.annotations.description)
        for b in ok:
            for _, v in b.markers:
                check(v in descs, f"{dev}: marker {v!r} not in mne_bids annotations {descs}")
        ev = bp.copy().update(suffix="events", extension=".tsv").fpath
        rows = [l.split("\t") for l in open(ev).read().splitlines()]
        check(rows[0][:4] == ["onset", "duration", "sample", "trial_type"], f"{ev}: header {rows[0]}")
        types = [r[3] for r in rows[1:]]
        for b in ok:
            for _, v in b.markers:
                check(v in types, f"{ev}: marker {v!r} missing")
            for g in b.gaps:
                check(
                    any(r[3] == "BAD_ACQ_SKIP" and r[4].startswith(f"BAD_ACQ_SKIP {g['missing']} samples") for r in rows[1:]),
                    f"{ev}: gap {g} missing",
                )
        # A device whose values are Cyton counts is written as counts (BDF).
        scale = 4.5 / 24 / 8388607 * 1e6
        counts = ext == "bdf" and all(
            ((np.rint(b.raw.astype(np.float64) / scale) * scale).astype(np.float32) == b.raw).all()
            for b in ok
        )
        summary["recordings"][dev] = check_edf_file(
            str(bp.fpath), batches, args.filtered, counts, False
        )
        summary["recordings"][dev]["annotations_mne_bids"] = len(descs)
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["xdf", "edf", "bids"])
    ap.add_argument("file")
    ap.add_argument("--journal", required=True)
    ap.add_argument("--key", action="append", required=True)
    ap.add_argument("--missing-key-id", action="append")
    ap.add_argument("--device")
    ap.add_argument("--filtered", action="store_true")
    ap.add_argument("--exact", action="store_true")
    ap.add_argument("--expect-restart", action="store_true")
    ap.add_argument("--subject")
    ap.add_argument("--task")
    ap.add_argument("--run")
    args = ap.parse_args()
    summary = {"xdf": check_xdf, "edf": check_edf, "bids": check_bids}[args.kind](args)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
