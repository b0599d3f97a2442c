#!/usr/bin/env python3
"""End-to-end DSP check of a neuroedge journal against SciPy.

For each device: concatenate the journaled raw samples of all batches (in seq
order, no gaps expected), filter them with SciPy exactly as the contract says
(butter(..., output="sos") then iirnotch per harmonic, initial state
sosfilt_zi(sos) * x[0]), and compare with the journaled `filtered` field
(the journal must store it: `[journal] store = ["raw", "filtered"]`).
Then recompute every journaled feature window with scipy.signal.welch on the
journaled filtered samples and compare band powers and RMS.

Usage: check_filtered.py JOURNAL KEYFILE
Prints one JSON line; exits non-zero on any mismatch.
"""
import json, os, sys

import numpy as np
from scipy import signal

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
from journal_reader import design, read_journal  # noqa: E402


def main():
    journal, keyfile = sys.argv[1], sys.argv[2]
    notch_q = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    per_dev = {}
    # The journaled filtered signal itself: the journal must store it.
    for h, p in read_journal(journal, keyfile, reproduce_filtered=False):
        if "filtered" not in p:
            print(json.dumps({"problems": ["the journal does not store the filtered signal"]}))
            sys.exit(1)
        device = h["device_id"]
        n, ch = h["n_samples"], h["n_channels"]
        d = per_dev.setdefault(device, {"fs": h["sample_rate"], "ch": ch, "raw": [], "filt": [],
                                        "ts": [], "features": [], "filter": p["filter"], "gaps": 0})
        d["raw"].append(np.frombuffer(p["raw"], "<f4").reshape(n, ch))
        d["filt"].append(np.frombuffer(p["filtered"], "<f4").reshape(n, ch))
        d["ts"].append(np.frombuffer(p["timestamps"], "<f8"))
        d["features"].extend(p["features"])
        d["gaps"] += len(p["gaps"])

    report, problems = {}, []
    for device, d in per_dev.items():
        fs, ch = d["fs"], d["ch"]
        raw = np.concatenate(d["raw"]).astype(np.float64)
        filt = np.concatenate(d["filt"])
        ts = np.concatenate(d["ts"])
        if d["gaps"]:
            problems.append(f"{device}: {d['gaps']} gaps; this check needs a gap-free recording")
        f = dict(d["filter"])
        f["notch_q"] = notch_q
        sos = design(f, fs)
        if sos is None:
            ref = raw
        else:
            zi = signal.sosfilt_zi(sos)
            ref = np.empty_like(raw)
            for c in range(ch):
                ref[:, c], _ = signal.sosfilt(sos, raw[:, c], zi=zi * raw[0, c])
        filt_err = float(np.max(np.abs(filt.astype(np.float64) - ref)))
        if filt_err > 1e-4:
            problems.append(f"{device}: filtered differs from scipy sosfilt by {filt_err} uV")

        # Features: recompute each window from the journaled filtered samples.
        nperseg_cap = int(round(fs))
        worst_bp, worst_rms, checked = 0.0, 0.0, 0
        fx = filt.astype(np.float64)
        for rec in d["features"]:
            end = int(np.searchsorted(ts, rec["t"], side="right"))
            if end == 0 or ts[end - 1] != rec["t"]:
                problems.append(f"{device}: feature t={rec['t']} is not a sample timestamp")
                continue
            win = int(round(1.0 * fs))
            if end < win:
                problems.append(f"{device}: feature at t={rec['t']} before a full window")
                continue
            x = fx[end - win:end, :]
            nper = min(win, nperseg_cap)
            freqs, psd = signal.welch(x, fs=fs, window="hann", nperseg=nper, noverlap=nper // 2,
                                      detrend="constant", scaling="density", axis=0)
            df = freqs[1] - freqs[0]
            for band, vals in rec["band_power"].items():
                lo, hi = {"delta": (1, 4), "theta": (4, 8), "alpha": (8, 13),
                          "beta": (13, 30), "gamma": (30, 45)}[band]
                sel = (freqs >= lo) & (freqs < hi)
                exp = psd[sel, :].sum(axis=0) * df
                rel = np.abs(np.asarray(vals) - exp) / np.maximum(np.abs(exp), 1e-300)
                worst_bp = max(worst_bp, float(rel.max()))
            rms = np.sqrt(np.mean(x ** 2, axis=0))
            worst_rms = max(worst_rms, float(np.max(np.abs(np.asarray(rec["rms"]) - rms) / rms)))
            checked += 1
        if checked == 0:
            problems.append(f"{device}: no feature windows to check")
        if worst_bp > 1e-6 or worst_rms > 1e-6:
            problems.append(f"{device}: band power rel err {worst_bp}, rms rel err {worst_rms}")
        report[device] = {"samples": int(raw.shape[0]), "channels": ch, "sections": 0 if sos is None else int(sos.shape[0]),
                          "filtered_max_abs_err_uv": filt_err, "feature_windows": checked,
                          "band_power_max_rel_err": worst_bp, "rms_max_rel_err": worst_rms}
    print(json.dumps({"devices": report, "problems": problems}))
    sys.exit(1 if problems or not report else 0)


if __name__ == "__main__":
    main()
