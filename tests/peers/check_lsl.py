#!/usr/bin/env python3
"""Check what neuroedge journaled from tests/peers/lsl_outlet.py.

Usage: check_lsl.py JOURNAL KEYFILE --device ID --log PEERLOG
                    [--require-markers FROM:TO ...] [--labels C1,C2,...]

Decodes the device's batches with ordinary libraries (sqlite3, cbor2,
zstandard, cryptography) and checks:
- every raw value equals, bit for bit, the float32 the peer pushed
  (sample identified by its channels 0 = n and 1 = run);
- every timestamp equals the peer's LSL stamp (t0 + n / rate of its run)
  plus one offset K, the same for every run and every marker, within
  --tolerance-ms. K maps this host's LSL clock (the monotonic clock) to
  neuroedge's timeline; it is the median of timestamp - stamp. The
  timeline is the wall clock as it was when the daemon started and does
  not follow wall-clock steps under 0.5 s (docs/timing.md), so the check
  does not use the wall clock beyond a sanity bound: each run's
  wall_minus_lsl (the peer's reading of time.time() - local_clock()) must
  be within 1 s of K (reported as wall_minus_timeline_ms);
- timestamps increase;
- every journaled marker is in the batch the format says: the first whose
  t_end is at or after its time, i.e. previous batch's t_end < t <= t_end
  (a marker between two batches' samples goes into the later one), and
  matches the peer's stamp within the tolerance; every marker the peer
  pushed within a --require-markers window (unix seconds) is journaled.
Prints one JSON summary line; exits non-zero on any problem.
"""
import argparse, json, os, struct, sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from journal_reader import read_journal  # noqa: E402
from lsl_outlet import sample_values  # noqa: E402


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("journal")
    ap.add_argument("keyfile")
    ap.add_argument("--device", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--labels")
    ap.add_argument("--tolerance-ms", type=float, default=5.0)
    ap.add_argument("--require-markers", action="append", default=[])
    a = ap.parse_args()

    runs, pushed = {}, {}
    for line in open(a.log):
        r = json.loads(line)
        if "run" in r:
            runs[r["run"]] = r
            current = r
        elif "last_sample" in r:
            pass
        else:
            pushed[r["marker"]] = r["t"]

    batches = read_journal(a.journal, a.keyfile, a.device)
    # K: the median of timestamp - peer stamp over the samples it knows.
    diffs = []
    for h, p in batches:
        n, ch = h["n_samples"], h["n_channels"]
        ts = struct.unpack(f"<{n}d", p["timestamps"])
        raw = struct.unpack(f"<{n * ch}I", p["raw"])
        for i in range(n):
            k = struct.unpack("<f", struct.pack("<I", raw[i * ch]))[0]
            run = struct.unpack("<f", struct.pack("<I", raw[i * ch + 1]))[0]
            if run in runs and k == int(k) and k >= 0:
                r = runs[int(run)]
                diffs.append(ts[i] - (r["t0"] + int(k) / r["rate"]))
    diffs.sort()
    K = diffs[len(diffs) // 2] if diffs else 0.0
    problems = []
    samples, mismatched, max_err, sum_err, last_t = 0, 0, 0.0, 0.0, None
    journaled = {}
    last_n = {}
    gaps = 0
    labels = None
    prev_end = None
    last_seq = batches[-1][0]["seq"] if batches else None
    for h, p in batches:
        n, ch = h["n_samples"], h["n_channels"]
        labels = p["channels"]
        ts = struct.unpack(f"<{n}d", p["timestamps"])
        raw = struct.unpack(f"<{n * ch}I", p["raw"])
        gaps += sum(g["missing"] for g in p["gaps"])
        for i in range(n):
            frame = raw[i * ch:(i + 1) * ch]
            k = struct.unpack("<f", struct.pack("<I", frame[0]))[0]
            run = struct.unpack("<f", struct.pack("<I", frame[1]))[0]
            if run not in runs or k != int(k) or k < 0:
                mismatched += 1
                problems.append(f"seq {h['seq']} sample {i}: unknown sample (n={k}, run={run})")
                continue
            r = runs[int(run)]
            want = [f32_bits(v) for v in sample_values(int(run), int(k), ch)]
            if list(frame) != want:
                mismatched += 1
                problems.append(f"seq {h['seq']} sample {i}: values differ from the peer's")
            expect = r["t0"] + int(k) / r["rate"] + K
            err = ts[i] - expect
            max_err = max(max_err, abs(err))
            sum_err += err
            if last_t is not None and ts[i] <= last_t:
                problems.append(f"seq {h['seq']} sample {i}: timestamp not increasing")
            last_t = ts[i]
            samples += 1
            last_n[int(run)] = max(last_n.get(int(run), -1), int(k))
        for m in p["markers"]:
            journaled[m["value"]] = m["t"]
            after = prev_end if prev_end is not None else float("-inf")
            # The run's last batch also carries the markers stamped after
            # its last sample (the daemon stopped before a later batch
            # could cover them: docs/batch-format.md).
            upto = float("inf") if h["seq"] == last_seq else h["t_end"]
            if not (after < m["t"] <= upto):
                problems.append(
                    f"marker {m['value']} at {m['t']:.4f} not in its batch "
                    f"({after:.4f}, {h['t_end']:.4f}] (seq {h['seq']})")
            if m["value"] in pushed:
                d = abs(m["t"] - (pushed[m["value"]] + K))
                if d > a.tolerance_ms / 1000:
                    problems.append(f"marker {m['value']} off by {d * 1000:.2f} ms")
            else:
                problems.append(f"marker {m['value']} was never pushed")
        prev_end = h["t_end"]
    required = 0
    for w in a.require_markers:
        lo, hi = (float(x) for x in w.split(":"))
        for value, t in pushed.items():
            if lo <= t + K <= hi:
                required += 1
                if value not in journaled:
                    problems.append(f"marker {value} (pushed at {t + K:.3f}) missing from the journal")
    if max_err * 1000 > a.tolerance_ms:
        problems.append(f"timestamps off the peer's by up to {max_err * 1000:.3f} ms")
    wall = {run: (r["wall_minus_lsl"] - K) * 1000 for run, r in runs.items()}
    for run, ms in wall.items():
        if diffs and abs(ms) > 1000:
            problems.append(f"run {run}: the wall clock is {ms:.1f} ms from the timeline")
    if a.labels and labels != a.labels.split(","):
        problems.append(f"channel names {labels}")
    if samples == 0:
        problems.append("no samples")
    print(json.dumps({
        "batches": len(batches), "samples": samples, "mismatched": mismatched,
        "max_ts_err_ms": max_err * 1000, "mean_ts_err_ms": (sum_err / samples * 1000) if samples else None,
        "markers_journaled": len(journaled), "markers_required": required, "gap_samples": gaps,
        "wall_minus_timeline_ms": {str(k): round(v, 3) for k, v in sorted(wall.items())},
        "runs": sorted(runs), "last_sample": {str(k): v for k, v in sorted(last_n.items())},
        "problems": problems[:20]}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
