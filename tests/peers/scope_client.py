"""A plain Python client of neuroedge's `subscribe` stream (contract §12),
used by tests/it/scope.rs. Only the standard library on the socket side;
the journal is read with tests/peers/journal_reader.py.

  collect SOCKET OUT REQUEST SECONDS
      send REQUEST (e.g. "subscribe eeg filtered hz 30"), read the header
      and frames for SECONDS, write {"header", "frames": [...with "rx":
      receive time...], "lines"} to OUT as JSON.
  compare JOURNAL KEY DEVICE SIGNAL FRAMES...
      check each collected file's frames against the journal's samples:
      print a JSON summary (frames checked, mismatches, tiling, ...).
  stall SOCKET REQUEST SECONDS
      subscribe, then read nothing for SECONDS; then report whether the
      daemon had closed the connection (it must not wait for us) and how
      many bytes it had sent.
"""
import json
import socket
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])


def connect(path, request):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall((request + "\n").encode())
    return s


def collect(path, out, request, seconds):
    s = connect(path, request)
    s.settimeout(0.5)
    buf = b""
    header = None
    frames = []
    others = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            chunk = s.recv(1 << 16)
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            v = json.loads(line)
            if header is None:
                header = v
                if "error" in v:
                    break
            elif "min" in v:
                v["rx"] = time.monotonic()
                frames.append(v)
            else:
                others.append(v)
    s.close()
    json.dump({"header": header, "frames": frames, "others": others}, open(out, "w"))


def compare(journal, key, device, signal, files):
    import numpy as np
    from journal_reader import read_journal

    batches = read_journal(journal, key, device)
    # Sample index -> (timestamp, values) over the whole journal.
    first = None
    ts_parts, data_parts = [], []
    expected = None
    for h, p in batches:
        n, ch = h["n_samples"], h["n_channels"]
        if first is None:
            first = h["first_sample"]
            expected = first
        if h["first_sample"] != expected:
            raise SystemExit(f"journal not contiguous at seq {h['seq']}: {h['first_sample']} != {expected}")
        expected += n
        ts_parts.append(np.frombuffer(p["timestamps"], dtype="<f8"))
        data_parts.append(np.frombuffer(p[signal], dtype="<f4").reshape(n, ch))
    ts = np.concatenate(ts_parts)
    data = np.concatenate(data_parts)
    summary = {"journal_first": first, "journal_end": expected, "files": []}
    for f in files:
        doc = json.load(open(f))
        h = doc["header"]
        frames = doc["frames"]
        res = {
            "header": h,
            "frames": len(frames),
            "checked": 0,
            "mismatches": [],
            "not_tiled": 0,
            "skipped": sum(fr.get("skipped", 0) for fr in frames),
            "n_other_than_decimation": 0,
            "t_mismatches": 0,
            "outside_journal": 0,
        }
        prev_end = None
        for fr in frames:
            i, n = fr["i"], fr["n"]
            if prev_end is not None and i != prev_end:
                res["not_tiled"] += 1
            prev_end = i + n
            if n != h["decimation"]:
                res["n_other_than_decimation"] += 1
            lo, hi = i - first, i - first + n
            if lo < 0 or hi > len(ts):
                res["outside_journal"] += 1
                continue
            block = data[lo:hi]
            want_min = block.min(axis=0)
            want_max = block.max(axis=0)
            got_min = np.array([np.float32(x) for x in fr["min"]], dtype=np.float32)
            got_max = np.array([np.float32(x) for x in fr["max"]], dtype=np.float32)
            if not (np.array_equal(got_min, want_min) and np.array_equal(got_max, want_max)):
                if len(res["mismatches"]) < 5:
                    res["mismatches"].append({"i": i, "n": n, "got_min": fr["min"][:4], "want_min": want_min[:4].tolist()})
                else:
                    res["mismatches"].append(i)
            if fr["t"] != float(ts[hi - 1]):
                res["t_mismatches"] += 1
            res["checked"] += 1
        if len(frames) >= 2:
            span = frames[-1]["rx"] - frames[0]["rx"]
            res["rx_span_s"] = span
            res["lines_per_s"] = (len(frames) - 1) / span if span > 0 else None
            # The most lines received in any 2-second window.
            rx = [fr["rx"] for fr in frames]
            j = 0
            most = 0
            for k in range(len(rx)):
                while rx[k] - rx[j] > 2.0:
                    j += 1
                most = max(most, k - j + 1)
            res["max_lines_in_2s"] = most
        summary["files"].append(res)
    print(json.dumps(summary))


def stall(path, request, seconds):
    s = connect(path, request)
    time.sleep(seconds)
    s.setblocking(False)
    received = 0
    closed = False
    while True:
        try:
            chunk = s.recv(1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            closed = True
            break
        received += len(chunk)
    print(json.dumps({"closed_by_daemon": closed, "bytes_received": received}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "collect":
        collect(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
    elif cmd == "stall":
        stall(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {cmd}")
