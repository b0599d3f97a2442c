#!/usr/bin/env python3
"""Print every batch of a neuroedge journal as one JSON line (header fields
plus markers, gaps and clock steps), decoded with ordinary libraries.

Usage: dump_batches.py JOURNAL KEYFILE
"""
import base64, json, sqlite3, sys

import cbor2
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def main():
    journal, keyfile = sys.argv[1], sys.argv[2]
    aes = AESGCM(base64.b64decode(open(keyfile).read().strip()))
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    for device, seq, env_bytes in db.execute(
            "SELECT device_id, seq, envelope FROM batches ORDER BY device_id, seq"):
        env = cbor2.loads(env_bytes)
        h = json.loads(env["header"])
        body = aes.decrypt(env["nonce"], env["ciphertext"], env["header"])
        if h["compression"] == "zstd":
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        p = cbor2.loads(body)
        print(json.dumps({
            "device_id": device, "seq": seq, "first_sample": h["first_sample"],
            "n_samples": h["n_samples"], "t_start": h["t_start"], "t_end": h["t_end"],
            "markers": p["markers"], "gaps": p["gaps"],
            "clock_steps": p.get("clock_steps", []),
        }))


if __name__ == "__main__":
    main()
