#!/usr/bin/env python3
"""Check a Cyton run's journal against what cyton_emulator.py sent.

Usage: check_cyton.py JOURNAL KEYFILE EMULATOR_LOG [--device ID]

Decrypts the journal with ordinary libraries (sqlite3, cbor2, zstandard,
cryptography), as tests/decode_batches.py does, then:
- maps every journaled sample to the emulator's packet (8 channels) or
  frame (Daisy) and compares every raw value bit for bit with
  counts * 4.5 / 24 / (2^23 - 1) * 1e6 rounded once to f32;
- derives the gaps the emulator's drops must produce (a Daisy frame is lost
  when either of its packets was dropped) and compares them with the
  journal's `gaps`;
- measures timestamp jitter: the std of successive timestamp differences,
  against the sample period.
Prints one JSON line; exits non-zero on any problem.
"""
import argparse, json, math, struct, sys


from cyton_emulator import counts
from journal_reader import read_journal  # noqa: F401 (check_ascii imports it from here)

SCALE_UV = 4.5 / 24.0 / (2 ** 23 - 1) * 1e6


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def samples(batches):
    """Yield (index, timestamp, [values]) over all batches, sample indices
    reconstructed from first_sample and the gaps; and the list of gaps."""
    gaps, rows = [], []
    for h, p in batches:
        n, ch = h["n_samples"], h["n_channels"]
        ts = struct.unpack(f"<{n}d", p["timestamps"])
        raw = struct.unpack(f"<{n * ch}f", p["raw"])
        starts = {}
        for g in p["gaps"]:
            gaps.append((g["before_sample"], g["missing"], g.get("cause", "device")))
            starts[g["before_sample"] - g["missing"]] = g["before_sample"]
        idx = h["first_sample"]
        for k in range(n):
            if k > 0:
                idx += 1
                idx = starts.get(idx, idx)
            rows.append((idx, ts[k], raw[k * ch:(k + 1) * ch]))
    return rows, gaps


def jitter(rows, rate, skip_s=0.0):
    period = 1.0 / rate
    diffs = [b[1] - a[1] for a, b in zip(rows, rows[1:])
             if b[0] == a[0] + 1 and a[0] >= skip_s * rate]
    if len(diffs) < 2:
        return None
    m = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / len(diffs))
    return {"pairs": len(diffs), "period_s": period, "mean_diff_s": m, "std_diff_s": sd,
            "std_rel": sd / period, "max_abs_dev_s": max(abs(d - period) for d in diffs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("journal")
    ap.add_argument("keyfile")
    ap.add_argument("emulog")
    ap.add_argument("--device")
    a = ap.parse_args()
    log = json.load(open(a.emulog))
    batches = read_journal(a.journal, a.keyfile, a.device)
    problems = []
    if not batches:
        print(json.dumps({"problems": ["no batches"]}))
        sys.exit(1)
    daisy = batches[0][0]["n_channels"] == 16
    rate = batches[0][0]["sample_rate"]
    ch = 16 if daisy else 8
    rows, gaps = samples(batches)

    def expected(unit):
        return [f32(counts(unit, c) * SCALE_UV) for c in range(ch)]

    # Which emulator unit (packet, or Daisy frame) is journal index 0?
    last_packet = log.get("last_packet", 0)
    last_unit = (last_packet - 2) // 2 if daisy else last_packet
    first_vals = list(rows[0][2])
    n0 = next((u for u in range(0, last_unit + 1) if expected(u) == first_vals), None)
    if n0 is None:
        print(json.dumps({"problems": ["first journaled sample matches no emulator packet"]}))
        sys.exit(1)
    if rows[0][0] != 0:
        problems.append(f"first journaled index is {rows[0][0]}, not 0")

    mismatches = 0
    for idx, _, vals in rows:
        if list(vals) != expected(n0 + idx):
            mismatches += 1
            if mismatches <= 5:
                problems.append(f"sample {idx} (unit {n0 + idx}): {list(vals)[:4]} != {expected(n0 + idx)[:4]}")
    if mismatches:
        problems.append(f"{mismatches} of {len(rows)} samples differ")

    # Units the emulator's drops lost.
    lost_packets = set()
    for d in log["drops"]:
        lost_packets.update(range(d["first"], d["first"] + d["count"]))
    if daisy:
        lost = {k for k in range(0, last_unit + 1) if (2 * k + 1) in lost_packets or (2 * k + 2) in lost_packets}
    else:
        lost = lost_packets
    last_received = n0 + rows[-1][0]
    want_gaps, u = [], n0
    while u <= last_received:
        if u in lost:
            start = u
            while u in lost:
                u += 1
            if u <= last_received:
                want_gaps.append([u - n0, u - start])
        else:
            u += 1
    got_gaps = [[g[0], g[1]] for g in gaps]
    if got_gaps != want_gaps:
        problems.append(f"gaps {gaps} != expected {want_gaps}")
    if any(u < n0 for u in lost):
        problems.append("a drop happened before the first journaled sample")

    latency = None
    if log.get("first_packet_unix"):
        t0 = log["first_packet_unix"]
        # When the packet completing a sample was due (Daisy: the even half).
        due = [t0 + ((2 * (n0 + i) + 2) if daisy else (n0 + i)) / 250.0 for i, _, _ in rows]
        lat = [r[1] - d for r, d in zip(rows, due)]
        latency = {"mean_s": sum(lat) / len(lat), "min_s": min(lat), "max_s": max(lat)}

    print(json.dumps({
        "daisy": daisy, "rate": rate, "batches": len(batches), "samples": len(rows),
        "first_unit": n0, "last_unit": last_received, "gaps": got_gaps, "expected_gaps": want_gaps,
        "jitter": jitter(rows, rate), "jitter_after_2s": jitter(rows, rate, 2.0),
        "latency": latency, "problems": problems[:20]}))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
