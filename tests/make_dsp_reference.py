#!/usr/bin/env python3
"""Generate tests/data/dsp_reference.json with SciPy as the oracle.

The Rust tests in src/dsp/reference_tests.rs compare the dsp module against:
  * SOS coefficients of butter(..., output="sos") + iirnotch sections,
  * sosfilt(sos, x, zi=sosfilt_zi(sos) * x[0]) outputs per channel,
  * scipy.signal.welch band powers, window RMS and line-noise ratios.

Deterministic: fixed numpy seed; inputs are rounded to 3 decimals so they
serialise compactly and parse to identical doubles in Rust. Outputs use
Python's shortest round-trip float repr (exact).

Usage:  python3 tests/make_dsp_reference.py   (needs numpy, scipy)
"""

import json
import os

import numpy as np
import scipy
from scipy import signal

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "dsp_reference.json")


def design(fs, spec):
    """The contract's cascade: butter (bp/hp/lp) then notch harmonics."""
    hp, lp, order = spec["highpass_hz"], spec["lowpass_hz"], spec["order"]
    rows = []
    if hp is not None and lp is not None:
        rows.append(signal.butter(order, [hp, lp], btype="bandpass", fs=fs, output="sos"))
    elif hp is not None:
        rows.append(signal.butter(order, hp, btype="highpass", fs=fs, output="sos"))
    elif lp is not None:
        rows.append(signal.butter(order, lp, btype="lowpass", fs=fs, output="sos"))
    if spec["notch_hz"] is not None:
        for k in range(1, spec["notch_harmonics"] + 1):
            f = k * spec["notch_hz"]
            if f >= fs / 2:
                break
            b, a = signal.iirnotch(f, Q=spec["notch_q"], fs=fs)
            rows.append(np.concatenate([b / a[0], a / a[0]])[None, :])
    if not rows:
        return np.zeros((0, 6))
    return np.vstack(rows)


def spec(hp=None, lp=None, order=4, notch=None, harmonics=1, q=30.0):
    return {
        "highpass_hz": hp,
        "lowpass_hz": lp,
        "order": order,
        "notch_hz": notch,
        "notch_harmonics": harmonics,
        "notch_q": q,
    }


def sos_cases():
    cases = []
    for fs in (125.0, 250.0, 500.0, 1000.0, 16000.0):
        nyq = fs / 2
        kinds = [
            dict(lp=0.18 * fs),
            dict(lp=45.0),
            dict(hp=0.5),
            dict(hp=1.0),
            dict(hp=1.0, lp=45.0),
            dict(hp=0.5, lp=0.45 * fs),  # wide band: real poles after lp2bp
            dict(hp=0.1 * fs, lp=0.2 * fs),
        ]
        notches = [None, dict(notch=50.0, harmonics=3, q=30.0), dict(notch=60.0, harmonics=2, q=25.0)]
        i = 0
        for order in range(1, 9):
            for kind in kinds:
                # every kind plain, plus a rotating notch variant
                for n in (None, notches[1 + (i % 2)]):
                    i += 1
                    s = spec(order=order, **kind, **(n or {}))
                    cases.append({"fs": fs, "spec": s, "sos": design(fs, s).tolist()})
        for h in (1, 2, 3, 40):
            s = spec(notch=50.0, harmonics=h, q=30.0)
            cases.append({"fs": fs, "spec": s, "sos": design(fs, s).tolist()})
        assert all(k.get("lp", 0) < nyq for k in kinds)
    return cases


def make_input(fs, channels, seconds, seed):
    """Sines + noise + DC offset per channel, rounded to 1e-3 uV."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fs))
    t = np.arange(n) / fs
    x = np.empty((n, channels))
    for ch in range(channels):
        dc = rng.uniform(-300.0, 300.0)
        sig = (
            20.0 * np.sin(2 * np.pi * (10.0 + ch) * t + rng.uniform(0, 6.28))
            + 8.0 * np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6.28))
            + 15.0 * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 6.28))
            + 5.0 * np.sin(2 * np.pi * 0.2 * t)  # slow drift
            + rng.normal(0.0, 5.0, n)
        )
        if fs >= 240:
            sig += 6.0 * np.sin(2 * np.pi * 100.0 * t) + 4.0 * np.sin(2 * np.pi * 60.0 * t)
        x[:, ch] = dc + sig
    return np.round(x, 3)


def run_sosfilt(sos, x):
    y = np.empty_like(x)
    if sos.shape[0] == 0:
        return x.copy()
    zi = signal.sosfilt_zi(sos)
    for ch in range(x.shape[1]):
        y[:, ch], _ = signal.sosfilt(sos, x[:, ch], zi=zi * x[0, ch])
    return y


FILTER_CASES = [
    ("bp_notch_250_3ch", 250.0, 3, 12.0, spec(hp=1.0, lp=45.0, order=4, notch=50.0, harmonics=2)),
    ("hp_notch_500_5ch", 500.0, 5, 10.0, spec(hp=0.5, order=3, notch=60.0, harmonics=3, q=25.0)),
    ("lp8_125_3ch", 125.0, 3, 10.0, spec(lp=30.0, order=8)),
    ("bp8_1000_1ch", 1000.0, 1, 10.0, spec(hp=0.5, lp=100.0, order=8, notch=50.0, harmonics=4)),
    ("bp5_16000_3ch", 16000.0, 3, 0.15, spec(hp=100.0, lp=3000.0, order=5)),
    ("notch_only_250_1ch", 250.0, 1, 10.0, spec(notch=50.0, harmonics=2)),
    ("bp1_250_3ch", 250.0, 3, 10.0, spec(hp=1.0, lp=45.0, order=1)),
]

FEATURE_CASES = [
    # name, source filter case, window_s, step_s, bands (None = defaults), line_hz
    ("default_250", "bp_notch_250_3ch", 1.0, 0.5, None, 50.0),
    ("win2_step03_250", "bp_notch_250_3ch", 2.0, 0.3,
     [["low", 0.5, 4.5], ["mid", 4.5, 20.0], ["high", 20.0, 125.0]], 50.0),
    ("odd_nperseg_125", "lp8_125_3ch", 1.0, 0.4, None, 50.0),
    ("win15_500", "hp_notch_500_5ch", 1.5, 0.25, None, 60.0),
]
DEFAULT_BANDS = [["delta", 1.0, 4.0], ["theta", 4.0, 8.0], ["alpha", 8.0, 13.0],
                 ["beta", 13.0, 30.0], ["gamma", 30.0, 45.0]]
T0 = 1000.0


def features(raw, filt, fs, window_s, step_s, bands, line_hz):
    """Emission rule: every `step` new frames once a full window exists."""
    win = int(round(window_s * fs))
    step = int(round(step_s * fs))
    nperseg = min(win, int(round(fs)))
    n, channels = raw.shape
    ts = T0 + np.arange(n) / fs
    out = []
    since, filled = 0, 0
    for i in range(n):
        since += 1
        filled = min(filled + 1, win)
        if since >= step and filled == win:
            since = 0
            lo_i = i + 1 - win
            bp = np.zeros((len(bands), channels))
            rms = np.zeros(channels)
            lnr = np.zeros(channels)
            for ch in range(channels):
                xf = filt[lo_i:i + 1, ch]
                f, p = signal.welch(xf, fs=fs, nperseg=nperseg)
                df = fs / nperseg
                for bi, (_, lo, hi) in enumerate(bands):
                    bp[bi, ch] = p[(f >= lo) & (f < hi)].sum() * df
                rms[ch] = np.sqrt(np.mean(xf ** 2))
                xr = raw[lo_i:i + 1, ch]
                f, p = signal.welch(xr, fs=fs, nperseg=nperseg)
                tot = p[(f >= 1.0) & (f <= fs / 2)].sum()
                line = p[(f >= line_hz - 2.0) & (f <= line_hz + 2.0)].sum()
                lnr[ch] = line / tot if tot > 0 else 0.0
            out.append({
                "t": float(ts[i]),
                "band_power": bp.reshape(-1).tolist(),  # band-major
                "rms": rms.tolist(),
                "line_noise_ratio": lnr.tolist(),
            })
    return out


def main():
    ref = {
        "meta": {
            "scipy": scipy.__version__,
            "numpy": np.__version__,
            "t0": T0,
            "notes": "frame-major flattened arrays; band_power is band-major",
        },
        "sos_cases": sos_cases(),
        "filter_cases": [],
        "feature_cases": [],
    }
    data = {}
    for seed, (name, fs, ch, secs, s) in enumerate(FILTER_CASES):
        x = make_input(fs, ch, secs, seed=1234 + seed)
        sos = design(fs, s)
        y = run_sosfilt(sos, x)
        data[name] = (x, y, fs)
        ref["filter_cases"].append({
            "name": name, "fs": fs, "channels": ch, "spec": s,
            "input": x.reshape(-1).tolist(), "output": y.reshape(-1).tolist(),
        })
    for name, src, window_s, step_s, bands, line_hz in FEATURE_CASES:
        x, y, fs = data[src]
        # The extractor consumes f32 samples: round exactly as Rust does.
        raw32 = x.astype(np.float32).astype(np.float64)
        filt32 = y.astype(np.float32).astype(np.float64)
        b = bands or DEFAULT_BANDS
        ref["feature_cases"].append({
            "name": name, "source": src, "fs": fs, "window_s": window_s,
            "step_s": step_s, "bands": b, "line_hz": line_hz,
            "emissions": features(raw32, filt32, fs, window_s, step_s, b, line_hz),
        })
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump(ref, fh, separators=(",", ":"))
    print(f"wrote {OUT}: {os.path.getsize(OUT) / 1e6:.2f} MB, "
          f"{len(ref['sos_cases'])} sos cases, {len(ref['filter_cases'])} filter cases, "
          f"{len(ref['feature_cases'])} feature cases")


if __name__ == "__main__":
    main()
