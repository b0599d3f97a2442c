"""Read a neuroedge journal with ordinary libraries (sqlite3, cbor2,
zstandard, cryptography), as the backend would: the test checkers share
this one reader. (tests/decode_batches.py stays self-contained: it is the
worked example of docs/batch-format.md.)"""
import base64, hashlib, json, sqlite3

import cbor2
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def read_journal(journal, keyfile, device=None, missing=()):
    """[(header, payload)] of every batch (or one device's), ordered by
    device and seq; the header is the JSON header as a dict, the payload
    the decrypted, decompressed CBOR map. `keyfile` is one key file or a
    list of them (after a key rotation: each batch is opened with the key
    its header's key_id names). Batches sealed with a key whose id is in
    `missing` are returned with payload None."""
    files = [keyfile] if isinstance(keyfile, str) else list(keyfile)
    keys = {}
    for f in files:
        k = base64.b64decode(open(f).read().strip())
        keys[hashlib.sha256(k).digest()[:8].hex()] = AESGCM(k)
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    rows = db.execute("SELECT device_id, envelope FROM batches ORDER BY device_id, seq").fetchall()
    out = []
    for dev, env_bytes in rows:
        if device is not None and dev != device:
            continue
        env = cbor2.loads(env_bytes)
        h = json.loads(env["header"])
        if h["key_id"] in missing:
            out.append((h, None))
            continue
        aes = keys[h["key_id"]]
        body = aes.decrypt(env["nonce"], env["ciphertext"], env["header"])
        if h["compression"] == "zstd":
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        out.append((h, cbor2.loads(body)))
    return out
