#!/usr/bin/env python3
"""Decode a neuroedge journal with ordinary libraries only (sqlite3, cbor2,
zstandard, cryptography) -- the way the backend team would -- and check it.

Usage: decode_batches.py JOURNAL KEYFILE [--seed N --channels N --rate HZ]

With --seed, the synthetic signal is regenerated independently (same
formula as src/source/synthetic.rs) and every raw sample is compared.
Prints one JSON summary line; exits non-zero on any problem.
"""
import argparse, base64, hashlib, json, math, sqlite3, struct, sys

import cbor2
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASK = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return state, z ^ (z >> 31)


class Synth:
    """Independent re-implementation of the synthetic driver, one channel."""

    def __init__(self, seed, c):
        self.rng = (seed ^ (((c + 1) * 0xD1B54A32D192ED03) & MASK)) & MASK
        self.pink = [0.0, 0.0, 0.0]
        self.amp = 20.0 + 5.0 * c
        self.phase = 0.3 * c
        self.dc = 50.0 + 25.0 * c

    def next(self, t):
        self.rng, z = splitmix64(self.rng)
        w = (z >> 11) / float(1 << 53) * 2.0 - 1.0
        p = self.pink
        p[0] = 0.99765 * p[0] + w * 0.0990460
        p[1] = 0.96300 * p[1] + w * 0.2965164
        p[2] = 0.57000 * p[2] + w * 1.0526913
        pink = p[0] + p[1] + p[2] + w * 0.1848
        tau = 2.0 * math.pi
        return (self.dc + self.amp * math.sin(tau * 10.0 * t + self.phase)
                + 8.0 * math.sin(tau * 50.0 * t) + 3.0 * pink)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("journal")
    ap.add_argument("keyfile")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--rate", type=float, default=250.0)
    a = ap.parse_args()

    key = base64.b64decode(open(a.keyfile).read().strip())
    assert len(key) == 32, "key must be 32 bytes"
    key_id = hashlib.sha256(key).digest()[:8].hex()
    aes = AESGCM(key)
    db = sqlite3.connect(f"file:{a.journal}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT device_id, seq, batch_id, envelope FROM batches ORDER BY device_id, seq").fetchall()

    problems, samples, batches, max_err = [], 0, 0, 0.0
    last = {}
    gens, gen_n = None, 0
    for device, seq, batch_id, env_bytes in rows:
        env = cbor2.loads(env_bytes)
        assert env["v"] == 1
        header_bytes = env["header"]
        h = json.loads(header_bytes)
        if h["format"] not in ("neuroedge.batch.v1", "neuroedge.batch.v2") or h["cipher"] != "AES-256-GCM":
            problems.append(f"{batch_id}: bad format/cipher")
        if h["key_id"] != key_id:
            problems.append(f"{batch_id}: key_id {h['key_id']} != {key_id}")
        if h["batch_id"] != batch_id or h["seq"] != seq:
            problems.append(f"{batch_id}: header/row mismatch")
        body = aes.decrypt(env["nonce"], env["ciphertext"], header_bytes)
        if h["compression"] == "zstd":
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        p = cbor2.loads(body)
        n, ch = h["n_samples"], h["n_channels"]
        ts = struct.unpack(f"<{n}d", p["timestamps"])
        def f32_array(b):
            # v2 byte-shuffles the f32 array: all first bytes, then all
            # second bytes, ...; v1 stores it as is.
            if h["format"] == "neuroedge.batch.v2":
                m = len(b) // 4
                b = bytes(b[j * m + i] for i in range(m) for j in range(4))
            return struct.unpack(f"<{n * ch}f", b)
        raw = f32_array(p["raw"])
        # v2 leaves `filtered` out unless the journal stores it.
        filt = f32_array(p["filtered"]) if "filtered" in p else None
        if len(p["channels"]) != ch:
            problems.append(f"{batch_id}: {len(p['channels'])} channel names for {ch} channels")
        if ts[0] != h["t_start"] or ts[-1] != h["t_end"]:
            problems.append(f"{batch_id}: t_start/t_end disagree with timestamps")
        dt = 1.0 / h["sample_rate"]
        for i in range(1, n):
            if abs((ts[i] - ts[i - 1]) - dt) > 1e-6:
                problems.append(f"{batch_id}: timestamp step {ts[i] - ts[i - 1]} at {i}")
                break
        # seq gapless; sample indices contiguous (gaps consume indices).
        lead = sum(g["missing"] for g in p["gaps"] if g["before_sample"] == h["first_sample"])
        if device in last:
            prev_seq, prev_end, prev_t = last[device]
            if seq != prev_seq + 1:
                problems.append(f"{device}: seq {prev_seq} -> {seq}")
            if h["first_sample"] - lead != prev_end:
                problems.append(f"{device}: first_sample {h['first_sample']} after end {prev_end}")
            if lead == 0 and abs(ts[0] - prev_t - dt) > 1e-6:
                problems.append(f"{device}: timestamp jump across batches at seq {seq}")
        inner = sum(g["missing"] for g in p["gaps"] if g["before_sample"] > h["first_sample"])
        last[device] = (seq, h["first_sample"] + n + inner, ts[-1])
        f = p["filter"]
        if f.get("highpass_hz") is None and f.get("lowpass_hz") is None and f.get("notch_hz") is None:
            if filt is not None and filt != raw:
                problems.append(f"{batch_id}: filtered != raw without a filter")
        if a.seed is not None and not p["gaps"]:
            if gens is None:
                gens = [Synth(a.seed, c) for c in range(ch)]
            if h["first_sample"] != gen_n:
                problems.append(f"{batch_id}: first_sample {h['first_sample']} but generator at {gen_n}")
            for i in range(n):
                t = gen_n / a.rate
                for c in range(ch):
                    max_err = max(max_err, abs(gens[c].next(t) - raw[i * ch + c]))
                gen_n += 1
        samples += n
        batches += 1

    if a.seed is not None and max_err > 1e-3:
        problems.append(f"raw samples differ from the synthetic formula by {max_err}")
    print(json.dumps({"batches": batches, "samples": samples, "max_abs_err_uv": max_err,
                      "problems": problems[:20]}))
    if problems or batches == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
