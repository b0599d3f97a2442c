#!/usr/bin/env python3
"""DSP throughput in one run: `neuroedge bench --stage dsp` vs SciPy's
sosfilt and BrainFlow's perform_bandpass, on identical data.

The data (deterministic: sines + noise + DC per channel, seed 42) is written
once as little-endian f64, frame-major, and given to `neuroedge bench --input`;
SciPy and BrainFlow filter the same array with the same 4th-order 1-45 Hz
Butterworth band-pass. The methods are timed in interleaved rounds (a busy
machine penalises all alike) and the best time of each is kept.

  scipy            sosfilt over the whole (channels, samples) array in one call,
                   zi = sosfilt_zi(sos) * x[:, 0]
  scipy_1s_batches the same, fed in 1 s batches with zi carried (a streaming
                   pipeline's call pattern)
  brainflow        DataFilter.perform_bandpass per channel (whole row, in place)
  neuroedge        `neuroedge bench --stage dsp`: the daemon's filter stage in
                   its ring-block sizes (100 ms), f32 in/out, f64 inside

Usage: scripts/bench_dsp_compare.py [--channels 32] [--fs 250] [--seconds 60]
                                    [--rounds 10] [--bin target/release/neuroedge]
Needs numpy, scipy, brainflow (pip install numpy scipy brainflow).
Prints one JSON object with ch-samples/s and the ratios.
"""
import argparse, json, os, subprocess, sys, time

import numpy as np
import scipy
from scipy import signal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_data(channels, fs, seconds, seed=42):
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fs))
    t = np.arange(n) / fs
    x = np.empty((n, channels))
    for ch in range(channels):
        x[:, ch] = (rng.uniform(-500, 500)
                    + 20 * np.sin(2 * np.pi * (8 + ch % 6) * t + rng.uniform(0, 6.28))
                    + 10 * np.sin(2 * np.pi * 50 * t)
                    + rng.normal(0, 5, n))
    return x


def timed(fn, reps=3):
    best = float("inf")
    for _ in range(reps):
        best = min(best, fn())
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--fs", type=float, default=250.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "neuroedge"))
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "dsp_bench_input.f64"))
    a = ap.parse_args()
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} not found: run `cargo build --release` first")

    x = make_data(a.channels, a.fs, a.seconds)
    os.makedirs(os.path.dirname(a.data), exist_ok=True)
    x.astype("<f8").tofile(a.data)
    x_cm = np.ascontiguousarray(x.T)
    total = x.size
    sos = signal.butter(4, [1.0, 45.0], btype="bandpass", fs=a.fs, output="sos")
    zi = signal.sosfilt_zi(sos)
    batch = int(round(a.fs))

    def scipy_one_call():
        z = zi[:, None, :] * x_cm[:, 0][None, :, None]
        t = time.perf_counter()
        signal.sosfilt(sos, x_cm, axis=-1, zi=z)
        return time.perf_counter() - t

    def scipy_batches():
        z = zi[:, None, :] * x_cm[:, 0][None, :, None]
        t = time.perf_counter()
        for s in range(0, x_cm.shape[1], batch):
            _, z = signal.sosfilt(sos, x_cm[:, s:s + batch], axis=-1, zi=z)
        return time.perf_counter() - t

    brainflow = None
    try:
        from brainflow.data_filter import DataFilter, FilterTypes
        DataFilter.disable_data_logger()

        def brainflow():
            rows = [r.copy() for r in x_cm]
            t = time.perf_counter()
            for r in rows:
                DataFilter.perform_bandpass(r, int(a.fs), 1.0, 45.0, 4, FilterTypes.BUTTERWORTH.value, 0.0)
            return time.perf_counter() - t
    except ImportError:
        print("brainflow is not installed: pip install brainflow", file=sys.stderr)

    def ours():
        out = subprocess.run([a.bin, "bench", "--stage", "dsp", "--channels", str(a.channels),
                              "--rate", str(a.fs), "--input", a.data, "--json"],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        assert r["filter_sections"] == sos.shape[0], "same filter as SciPy's"
        return total / r["stages"]["dsp"]

    best = {"scipy": float("inf"), "scipy_1s_batches": float("inf"), "brainflow": float("inf"),
            "neuroedge": float("inf")}
    for i in range(a.rounds):
        best["neuroedge"] = min(best["neuroedge"], timed(ours))
        best["scipy"] = min(best["scipy"], timed(scipy_one_call))
        best["scipy_1s_batches"] = min(best["scipy_1s_batches"], timed(scipy_batches))
        if brainflow:
            best["brainflow"] = min(best["brainflow"], timed(brainflow))
        print(f"round {i + 1}/{a.rounds}", file=sys.stderr)

    rate = {k: total / v for k, v in best.items() if v != float("inf")}
    res = {"channels": a.channels, "fs": a.fs, "seconds": a.seconds, "scipy_version": scipy.__version__,
           "ch_samples_per_s": rate,
           "ratio_vs_scipy": rate["neuroedge"] / rate["scipy"],
           "ratio_vs_scipy_1s_batches": rate["neuroedge"] / rate["scipy_1s_batches"]}
    if "brainflow" in rate:
        from importlib.metadata import version
        res["brainflow_version"] = version("brainflow")
        res["ratio_vs_brainflow"] = rate["neuroedge"] / rate["brainflow"]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
