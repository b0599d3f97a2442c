"""Read a neuroedge journal with ordinary libraries (sqlite3, cbor2,
zstandard, cryptography), as the backend would: the test checkers share
this one reader. (tests/decode_batches.py stays self-contained: it is the
worked example of docs/batch-format.md.)"""
import base64, hashlib, json, sqlite3

import cbor2
import numpy as np
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from scipy import signal


def unshuffle(b):
    """Batch format v2's byte-shuffled f32 array -> plain little-endian bytes."""
    return np.frombuffer(b, np.uint8).reshape(4, -1).T.tobytes()


def design(f, fs):
    """The SOS cascade a batch's `filter` map describes (contract §4):
    Butterworth, then one iirnotch per harmonic below Nyquist; None when
    there is no filter."""
    sos = []
    hp, lp, order = f.get("highpass_hz"), f.get("lowpass_hz"), f.get("order")
    if hp is not None and lp is not None:
        sos.append(signal.butter(order, [hp, lp], btype="bandpass", fs=fs, output="sos"))
    elif hp is not None:
        sos.append(signal.butter(order, hp, btype="highpass", fs=fs, output="sos"))
    elif lp is not None:
        sos.append(signal.butter(order, lp, btype="lowpass", fs=fs, output="sos"))
    notch = f.get("notch_hz")
    if notch is not None:
        for k in range(1, (f.get("notch_harmonics") or 1) + 1):
            if k * notch < fs / 2:
                b, a = signal.iirnotch(k * notch, Q=f.get("notch_q") or 30.0, fs=fs)
                sos.append(signal.tf2sos(b, a))
    return np.vstack(sos) if sos else None


def fill_filtered(out):
    """Give every payload without `filtered` (v2, `store = ["raw"]`) the
    filter chain's output, computed with SciPy as the backend would: one
    chain per device and `filter.run_start`, over the run's raw samples in
    seq order, initial state sosfilt_zi * the run's first sample."""
    runs = {}
    for h, p in out:
        if p is not None and "filtered" not in p:
            key = (h["device_id"], p["filter"].get("run_start"))
            runs.setdefault(key, []).append((h, p))
    for batches in runs.values():
        h0, p0 = batches[0]
        ch = h0["n_channels"]
        raw = np.concatenate([np.frombuffer(p["raw"], "<f4").reshape(-1, ch) for _, p in batches])
        sos = design(p0["filter"], h0["sample_rate"])
        if sos is None:
            filt = raw
        else:
            x = raw.astype(np.float64)
            zi = signal.sosfilt_zi(sos)
            filt = np.empty_like(x)
            for c in range(ch):
                filt[:, c], _ = signal.sosfilt(sos, x[:, c], zi=zi * x[0, c])
        filt = filt.astype("<f4")
        k = 0
        for h, p in batches:
            n = h["n_samples"]
            p["filtered"] = filt[k:k + n].tobytes()
            k += n


def read_journal(journal, keyfile, device=None, missing=(), reproduce_filtered=True):
    """[(header, payload)] of every batch (or one device's), ordered by
    device and seq; the header is the JSON header as a dict, the payload
    the decrypted, decompressed CBOR map, with `raw` and `filtered` as
    plain little-endian f32 bytes whatever the batch format. A batch that
    does not store `filtered` gets it reproduced from raw with SciPy
    (`fill_filtered`) unless `reproduce_filtered` is false. `keyfile` is
    one key file or a list of them (after a key rotation: each batch is
    opened with the key its header's key_id names). Batches sealed with a
    key whose id is in `missing` are returned with payload None."""
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
        p = cbor2.loads(body)
        if h["format"] == "neuroedge.batch.v2":
            for k in ("raw", "filtered"):
                if k in p:
                    p[k] = unshuffle(p[k])
        out.append((h, p))
    if reproduce_filtered:
        fill_filtered(out)
    return out
