#!/usr/bin/env python3
"""Check a serial-ascii run's journal against what ascii_emulator.py sent.

Usage: check_ascii.py JOURNAL KEYFILE EMULATOR_LOG [--device ID]

Every journaled frame must be, in order and without a hole, the valid lines
the emulator printed (starting wherever the daemon started listening), each
value the printed decimal rounded once to the nearest f32 (ties to even) --
what Rust's `str::parse::<f32>` does. Prints one JSON line; exits non-zero
on any problem.
"""
import argparse, json, struct, sys
from fractions import Fraction

from check_cyton import jitter, read_journal, samples


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f32_from_bits(b):
    return struct.unpack("<f", struct.pack("<I", b))[0]


def f32_of_decimal(text):
    """The f32 nearest to the decimal `text`, ties to even (no double
    rounding through f64)."""
    exact = Fraction(text.strip())
    guess = f32_bits(float(exact))
    best = None
    for b in (guess - 1, guess, guess + 1):
        if b < 0 or b >= 1 << 32:
            continue
        v = f32_from_bits(b)
        if v != v or v in (float("inf"), float("-inf")):
            continue
        key = (abs(Fraction(v) - exact), b & 1)
        if best is None or key < best[0]:
            best = (key, v)
    return best[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("journal")
    ap.add_argument("keyfile")
    ap.add_argument("emulog")
    ap.add_argument("--device")
    a = ap.parse_args()
    log = json.load(open(a.emulog))
    batches = read_journal(a.journal, a.keyfile, a.device)
    if not batches:
        print(json.dumps({"problems": ["no batches"]}))
        sys.exit(1)
    rate = batches[0][0]["sample_rate"]
    rows, gaps = samples(batches)
    problems = []
    if gaps:
        problems.append(f"unexpected gaps {gaps}")
    lines = [[f32_of_decimal(v) for v in vals] for _, vals in log["lines"]]
    first = list(rows[0][2])
    m0 = next((m for m, vals in enumerate(lines) if vals == first), None)
    if m0 is None:
        print(json.dumps({"problems": ["first journaled frame matches no printed line"]}))
        sys.exit(1)
    mismatches = 0
    for i, (idx, _, vals) in enumerate(rows):
        m = m0 + i
        if idx != i:
            problems.append(f"sample index {idx} at position {i}")
            break
        if m >= len(lines) or list(vals) != lines[m]:
            mismatches += 1
            if mismatches <= 5:
                problems.append(f"frame {i} (line {m}): {list(vals)} != {lines[m] if m < len(lines) else None}")
    if mismatches:
        problems.append(f"{mismatches} of {len(rows)} frames differ")
    print(json.dumps({"batches": len(batches), "samples": len(rows), "first_line": m0,
                      "jitter": jitter(rows, rate), "problems": problems[:20]}))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
