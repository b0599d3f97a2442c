"""Read a neuroedge journal with ordinary libraries (sqlite3, cbor2,
zstandard, cryptography), as the backend would: the test checkers share
this one reader. (tests/decode_batches.py stays self-contained: it is the
worked example of docs/batch-format.md.)"""
import base64, json, sqlite3

import cbor2
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def read_journal(journal, keyfile, device=None):
    """[(header, payload)] of every batch (or one device's), ordered by
    device and seq; the header is the JSON header as a dict, the payload
    the decrypted, decompressed CBOR map."""
    aes = AESGCM(base64.b64decode(open(keyfile).read().strip()))
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    rows = db.execute("SELECT device_id, envelope FROM batches ORDER BY device_id, seq").fetchall()
    out = []
    for dev, env_bytes in rows:
        if device is not None and dev != device:
            continue
        env = cbor2.loads(env_bytes)
        h = json.loads(env["header"])
        body = aes.decrypt(env["nonce"], env["ciphertext"], env["header"])
        if h["compression"] == "zstd":
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        out.append((h, cbor2.loads(body)))
    return out
