#!/usr/bin/env python3
"""High-density and idle figures of the real daemon, in one table (issue 14).

For each rig (synthetic device, paced, 300-6000 Hz band-pass as a
Neuropixels-class recording would use (1-45 Hz + 50 Hz notch below 15 kHz),
default features, ring_seconds 2,
the default journal settings unless --store-filtered): start the daemon,
let it warm up, then measure over --seconds:
  cores      CPU time of the daemon / wall time
  delivered  samples per second the device delivered / its rate
  dropped    samples dropped in the window (ring overflow or journal)
  rss, hwm   resident memory now and its high-water mark (MiB)
  B/ch-smp   journal bytes added per channel-sample (sealed envelopes)
  stop s     seconds from SIGTERM to exit (the journal queue drains first)
Then the idle default run (8 ch x 250 Hz, 1-45 Hz band-pass + notch,
default features, uplink off): cores and RSS over --idle-seconds.

Usage: bench_highdensity.py --bin target/release/neuroedge
           [--rig 384x30000 --rig 1024x30000] [--seconds 30] [--warmup 5]
           [--idle-seconds 60] [--store-filtered] [--page-size-kib K] [--json]
Needs an otherwise idle machine: figures are CPU shares.
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_scope import CLK, cpu_seconds, request  # noqa: E402


def thread_cpu(pid):
    """{thread name: CPU seconds} of every thread of `pid` (names summed)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:
            continue
        name = head.split("(", 1)[1]
        fields = tail.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK
    return out


def mem_mib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    return out["VmRSS"], out["VmHWM"]


# Seconds between the last rig and the idle run (after a sync).
IDLE_SETTLE_S = 20


def write_config(root, channels, rate, filters, store_filtered, page_kib=None):
    os.makedirs(f"{root}/devices", exist_ok=True)
    store = '["raw", "filtered"]' if store_filtered else '["raw"]'
    if page_kib:
        store += f"\npage_size_kib = {page_kib}"
    with open(f"{root}/neuroedge.toml", "w") as f:
        f.write(
            '[daemon]\nsite_id = "bench"\nnode_id = "bench"\ndevices_dir = "devices"\n'
            f'[journal]\npath = "var/journal.db"\nmax_bytes = "8GiB"\nstore = {store}\n'
            '[crypto]\nkey_file = "var/batch.key"\ngenerate_if_missing = true\n'
            '[status]\nsocket = "var/ne.sock"\n[log]\nlevel = "warn"\n'
        )
    with open(f"{root}/devices/rig.toml", "w") as f:
        f.write(
            'id = "rig"\ndriver = "synthetic"\nenabled = true\n'
            f"[connection]\nsample_rate = {float(rate)}\nchannels = {channels}\nseed = 1\n"
            f"[filters]\n{filters}[buffer]\nring_seconds = 2.0\n"
        )


def wait_streaming(sock, log, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            d = request(sock, "status")["devices"][0]
            if d["state"] == "streaming" and d["samples_total"] > 0:
                return
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.2)
    with open(log) as f:
        tail = f.read()[-2000:]
    raise SystemExit(f"daemon not streaming; its log:\n{tail}")


def run_rig(binary, channels, rate, filters, seconds, warmup, store_filtered, page_kib=None):
    root = tempfile.mkdtemp(prefix="ne-hd-")
    try:
        write_config(root, channels, rate, filters, store_filtered, page_kib)
        log = open(f"{root}/daemon.log", "w")
        d = subprocess.Popen([binary, "run", "--config", f"{root}/neuroedge.toml"], stderr=log)
        sock = f"{root}/var/ne.sock"
        try:
            wait_streaming(sock, f"{root}/daemon.log")
            time.sleep(warmup)
            s0 = request(sock, "status")
            c0, w0, t0 = cpu_seconds(d.pid), time.monotonic(), thread_cpu(d.pid)
            time.sleep(seconds)
            s1 = request(sock, "status")
            c1, w1, t1 = cpu_seconds(d.pid), time.monotonic(), thread_cpu(d.pid)
            rss, hwm = mem_mib(d.pid)
        finally:
            t = time.monotonic()
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(600)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
            stop_s = time.monotonic() - t
        # What the daemon warned of (a dropped batch, a slow journal
        # transaction), so that a drop in the table comes with its cause;
        # not the new key, nor each batch evicted once the quota is reached
        # (the runs are longer than the quota holds).
        log.close()
        expected = ("generated a new batch key", "evicted for space")
        with open(f"{root}/daemon.log") as f:
            warnings = [l.rstrip() for l in f if (" WARN " in l or " ERROR " in l)
                        and not any(e in l for e in expected)]
        dev0, dev1 = s0["devices"][0], s1["devices"][0]
        wall = w1 - w0
        samples = dev1["samples_total"] - dev0["samples_total"]
        added = s1["journal"]["total_bytes"] - s0["journal"]["total_bytes"]
        # Journal bytes added per channel-sample delivered in the window
        # (commits lag delivery by about a batch; over a window of many
        # batches the two agree).
        return {
            "rig": f"{channels} ch x {rate:g} Hz",
            "cores": (c1 - c0) / wall,
            "delivered": samples / wall / rate,
            "dropped": dev1["dropped_samples"] - dev0["dropped_samples"],
            "rss_mib": rss,
            "hwm_mib": hwm,
            # Once the quota is reached, old batches make room for new
            # ones: the file's growth no longer measures what is written.
            "bytes_per_ch_sample": added / (samples * channels)
            if samples and s1["journal"]["evicted_batches"] == s0["journal"]["evicted_batches"]
            else None,
            "stop_s": stop_s,
            "exit": d.returncode,
            "warnings": warnings,
            "threads": {k: round((v - t0.get(k, 0.0)) / wall, 4)
                        for k, v in sorted(t1.items(), key=lambda kv: -kv[1])
                        if v - t0.get(k, 0.0) > 0},
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--rig", action="append", help="CHANNELSxRATE, e.g. 384x30000")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--store-filtered", action="store_true")
    ap.add_argument("--page-size-kib", type=int,
                    help="[journal] page_size_kib of the rigs (default: unset, as the daemon's default)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--json-out", metavar="FILE",
                    help="also write the rows as JSON to FILE (the table is still printed)")
    a = ap.parse_args()
    rigs = a.rig or ["384x30000", "1024x30000"]
    # Spike-band filters for extracellular rigs, the EEG defaults otherwise.
    hd_filters = "highpass_hz = 300.0\nlowpass_hz = 6000.0\norder = 4\n"
    eeg_filters = "highpass_hz = 1.0\nlowpass_hz = 45.0\norder = 4\nnotch_hz = 50.0\n"
    rows = []
    for r in rigs:
        ch, rate = r.lower().split("x")
        filters = hd_filters if float(rate) >= 15000 else eeg_filters
        print(f"bench_highdensity: {ch} ch x {rate} Hz for {a.warmup:g}+{a.seconds:g} s ...",
              file=sys.stderr, flush=True)
        rows.append(run_rig(a.bin, int(ch), float(rate), filters, a.seconds, a.warmup,
                            a.store_filtered, a.page_size_kib))
    if a.idle_seconds > 0:
        if rows:
            # The rigs leave gigabytes of journal just deleted: straight
            # after a 300-s 1024-ch run the idle run read 0.7 % of a core
            # instead of 0.2, most of it in its journal thread (stop 41;
            # the kernel's work on those files, presumably). Let it settle.
            os.sync()
            time.sleep(IDLE_SETTLE_S)
        print(f"bench_highdensity: idle default run for {a.idle_seconds:g} s ...",
              file=sys.stderr, flush=True)
        rows.append(run_rig(a.bin, 8, 250.0, eeg_filters, a.idle_seconds, a.warmup,
                            a.store_filtered))
        rows[-1]["rig"] += " (idle)"
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(rows, f)
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'RIG':<26}{'CORES':>7}{'DELIVERED':>11}{'DROPPED':>9}{'RSS MiB':>9}{'HWM MiB':>9}"
          f"{'B/CH-SMP':>10}{'STOP s':>8}")
    for r in rows:
        b = r["bytes_per_ch_sample"]
        print(f"{r['rig']:<26}{r['cores']:>7.3f}{r['delivered']:>10.3f}x{r['dropped']:>9}"
              f"{r['rss_mib']:>9.1f}{r['hwm_mib']:>9.1f}{(f'{b:.2f}' if b else '(quota)'):>10}"
              f"{r['stop_s']:>8.1f}")
    print("cores per thread:")
    for r in rows:
        top = ", ".join(f"{k} {v:.3f}" for k, v in list(r["threads"].items())[:6])
        print(f"  {r['rig']:<24}{top}")
    for r in rows:
        if r["warnings"]:
            print(f"{r['rig']}: the daemon's warnings ({len(r['warnings'])}; the first 10):")
            for w in r["warnings"][:10]:
                print(f"  {w}")


if __name__ == "__main__":
    main()
