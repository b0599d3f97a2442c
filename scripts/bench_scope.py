#!/usr/bin/env python3
"""What live-view subscribers cost the daemon, and what `neuroedge scope`
costs itself (issue 16).

For each rig (8 ch x 250 Hz and 384 ch x 30 kHz, synthetic, paced, the
default band-pass + notch), one daemon runs on a temporary journal (bounded
by max_bytes, deleted afterwards). Its CPU time (utime + stime from
/proc/PID/stat) is measured over alternating phases, in the same run: a
phase without subscribers, then a phase with N subscribers at HZ lines/s
(one client process reading all N sockets), repeated. The result is the
ratio of CPU seconds per wall second with / without. On a shared machine
the alternation spreads other load over both sides.

Then `neuroedge scope` runs in a tmux pane (120 x 40) on each rig for a
phase; its own CPU is reported as % of one core.

The floor: after each rig, `examples/socket_floor` (a program that only
writes) sends the same clients the same bytes per second the daemon sent,
in one write per client per ring block (100 ms, one write per processing
publish, as the daemon's feed does), and its CPU is measured the same way.
No feed can cost less than those system calls and the readers' wake-ups:
"best ratio" = (daemon without + floor) / daemon without is the lowest
ratio any implementation reaches on this machine.

    cargo build --release --example socket_floor
    scripts/bench_scope.py [--bin target/release/neuroedge] [--phase 10]
                           [--rounds 3] [--subscribers 20] [--hz 30] [--json]
                           [--floor target/release/examples/socket_floor]
"""
import argparse
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """CPU time of all the process's threads, from the scheduler's own
    nanosecond counters (/proc/PID/task/TID/schedstat): at 0.2 % of a core,
    utime + stime in 10-ms clock ticks would count 2 ticks in 10 s. A
    thread that exits between two readings drops out of the sum: the
    daemon's device, journal and I/O threads live for the whole run (only
    tokio's blocking-pool threads come and go, after about a millisecond of
    work such as the minute's heap trim), and tmux's pane process is
    single-threaded. Falls back to utime + stime when schedstat is absent."""
    total = 0.0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0]) / 1e9
            except (FileNotFoundError, ProcessLookupError):
                pass
    except FileNotFoundError:
        pass
    if total > 0:
        return total
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime, stime are fields 14, 15.
    return (int(fields[11]) + int(fields[12])) / CLK


def request(sock_path, line):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock_path)
    s.sendall((line + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


def write_config(root, channels, rate):
    os.makedirs(f"{root}/devices", exist_ok=True)
    with open(f"{root}/neuroedge.toml", "w") as f:
        f.write(
            '[daemon]\nsite_id = "bench"\nnode_id = "bench"\ndevices_dir = "devices"\n'
            '[journal]\npath = "var/journal.db"\nmax_bytes = "1GiB"\nwhen_full = "drop_oldest"\n'
            'retain_uploaded = "1s"\n'
            '[crypto]\nkey_file = "var/batch.key"\ngenerate_if_missing = true\n'
            '[status]\nsocket = "var/ne.sock"\n[log]\nlevel = "warn"\n'
        )
    with open(f"{root}/devices/rig.toml", "w") as f:
        f.write(
            f'id = "rig"\ndriver = "synthetic"\nenabled = true\n'
            f"[connection]\nsample_rate = {float(rate)}\nchannels = {channels}\nseed = 1\n"
            "[filters]\nhighpass_hz = 1.0\nlowpass_hz = 45.0\norder = 4\nnotch_hz = 50.0\n"
        )


def wait_streaming(sock, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            r = request(sock, "status")
            d = r["devices"][0]
            if d["state"] == "streaming" and d["samples_total"] > 0:
                return r
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.2)
    raise SystemExit("daemon not streaming")


def subscribers_phase(sock, n, hz, seconds, warmup):
    """Open n subscriptions, read everything for warmup + seconds; returns
    (t0, t1) of the measured part and per-client figures."""
    sel = selectors.DefaultSelector()
    clients = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        s.sendall(f"subscribe rig filtered hz {hz}\n".encode())
        s.setblocking(False)
        c = {"sock": s, "lines": 0, "bytes": 0, "skips": 0, "closed": False, "tail": b""}
        clients.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    start = time.monotonic()
    t0 = start + warmup
    t1 = t0 + seconds
    lines_at_t0 = None
    while time.monotonic() < t1:
        if lines_at_t0 is None and time.monotonic() >= t0:
            lines_at_t0 = sum(c["lines"] for c in clients)
            yield "t0"
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            try:
                chunk = c["sock"].recv(1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                c["closed"] = True
                sel.unregister(c["sock"])
                continue
            c["bytes"] += len(chunk)
            c["lines"] += chunk.count(b"\n")
            c["skips"] += chunk.count(b'"skipped"')
    lines = sum(c["lines"] for c in clients) - (lines_at_t0 or 0)
    for c in clients:
        c["sock"].close()
    yield {
        "lines_per_s_per_client": lines / seconds / n,
        "closed_by_daemon": sum(c["closed"] for c in clients),
        "skip_lines": sum(c["skips"] for c in clients),
        "mbytes_per_s": sum(c["bytes"] for c in clients) / (seconds + warmup) / 1e6,
    }


def measure_daemon(binary, channels, rate, args):
    root = tempfile.mkdtemp(prefix="ne-bench-scope-")
    try:
        write_config(root, channels, rate)
        log = open(f"{root}/daemon.log", "w")
        d = subprocess.Popen([binary, "run", "--config", f"{root}/neuroedge.toml"], stderr=log)
        sock = f"{root}/var/ne.sock"
        try:
            wait_streaming(sock)
            time.sleep(args.warmup)
            without, with_, subs = [], [], []
            for _ in range(args.rounds):
                # Without subscribers.
                time.sleep(args.warmup)
                c0, w0 = cpu_seconds(d.pid), time.monotonic()
                time.sleep(args.phase)
                c1, w1 = cpu_seconds(d.pid), time.monotonic()
                without.append((c1 - c0) / (w1 - w0))
                # With subscribers (CPU counted after their warm-up).
                g = subscribers_phase(sock, args.subscribers, args.hz, args.phase, args.warmup)
                assert next(g) == "t0"
                c0, w0 = cpu_seconds(d.pid), time.monotonic()
                figures = next(g)
                c1, w1 = cpu_seconds(d.pid), time.monotonic()
                with_.append((c1 - c0) / (w1 - w0))
                subs.append(figures)
            st = request(sock, "status")["devices"][0]
            scope_cpu = measure_scope(binary, sock, args) if args.scope else None
        finally:
            d.terminate()
            # A high-density rig drains its journal queue before it exits.
            d.wait(timeout=300)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mean = lambda xs: sum(xs) / len(xs)
    return {
        "channels": channels,
        "rate": rate,
        "cpu_without": [round(x, 4) for x in without],
        "cpu_with": [round(x, 4) for x in with_],
        "ratio": round(mean(with_) / mean(without), 4),
        "subscribers": subs,
        "dropped_samples": st["dropped_samples"],
        "samples_per_s": st["samples_per_s"],
        "scope_cpu_percent": scope_cpu,
    }


def measure_floor(floor, client_bytes_per_s, args):
    """CPU (cores) of socket_floor writing client_bytes_per_s to each of
    the subscribers, one write per client every 100 ms; one socket_floor
    per round (it serves one set of clients)."""
    root = tempfile.mkdtemp(prefix="ne-bench-floor-")
    sock = f"{root}/floor.sock"
    per_write = max(1, round(client_bytes_per_s / 10))
    cores = []
    try:
        for _ in range(args.rounds):
            p = subprocess.Popen([floor, sock, str(args.subscribers), "100", str(per_write)])
            try:
                end = time.monotonic() + 10
                while not os.path.exists(sock):
                    if time.monotonic() > end or p.poll() is not None:
                        raise SystemExit(f"{floor} did not listen on {sock}")
                    time.sleep(0.05)
                g = subscribers_phase(sock, args.subscribers, args.hz, args.phase, args.warmup)
                assert next(g) == "t0"
                c0, w0 = cpu_seconds(p.pid), time.monotonic()
                next(g)
                c1, w1 = cpu_seconds(p.pid), time.monotonic()
                cores.append((c1 - c0) / (w1 - w0))
            finally:
                p.kill()
                p.wait()
                if os.path.exists(sock):
                    os.unlink(sock)
        return {"bytes_per_write": per_write, "cpu": [round(x, 5) for x in cores]}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_scope(binary, sock, args):
    if shutil.which("tmux") is None:
        return None
    server = f"ne-bench-{os.getpid()}"
    tm = ["tmux", "-L", server]
    subprocess.run(tm + ["-f", "/dev/null", "new-session", "-d", "-s", "b", "-x", "120", "-y", "40",
                         f"{binary} scope --socket {sock}"], check=True,
                   env={**os.environ, "TERM": "xterm-256color"})
    try:
        pid = None
        end = time.time() + 10
        while pid is None and time.time() < end:
            out = subprocess.run(tm + ["display-message", "-p", "-t", "b", "#{pane_pid}"],
                                 capture_output=True, text=True).stdout.strip()
            pid = int(out) if out.isdigit() else None
            time.sleep(0.2)
        time.sleep(args.warmup + 1)
        c0, w0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.phase)
        c1, w1 = cpu_seconds(pid), time.monotonic()
        return round(100 * (c1 - c0) / (w1 - w0), 2)
    finally:
        subprocess.run(tm + ["kill-server"], capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/neuroedge")
    ap.add_argument("--phase", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--subscribers", type=int, default=20)
    ap.add_argument("--hz", type=int, default=30)
    ap.add_argument("--rigs", default="8x250,384x30000")
    ap.add_argument("--no-scope", dest="scope", action="store_false")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--floor", default="target/release/examples/socket_floor",
                    help="socket_floor binary; 'none' skips the floor")
    args = ap.parse_args()
    if args.floor != "none" and not os.access(args.floor, os.X_OK):
        raise SystemExit(f"no {args.floor}: cargo build --release --example socket_floor (or --floor none)")
    results = []
    for rig in args.rigs.split(","):
        ch, rate = rig.split("x")
        r = measure_daemon(os.path.abspath(args.bin), int(ch), float(rate), args)
        if args.floor != "none":
            per_client = 1e6 * sum(x["mbytes_per_s"] for x in r["subscribers"]) / len(r["subscribers"]) / args.subscribers
            r["floor"] = measure_floor(os.path.abspath(args.floor), per_client, args)
            without = sum(r["cpu_without"]) / len(r["cpu_without"])
            r["best_ratio"] = round((without + sum(r["floor"]["cpu"]) / len(r["floor"]["cpu"])) / without, 4)
        results.append(r)
        if not args.json:
            print(
                f"{r['channels']} ch x {r['rate']:.0f} Hz: daemon CPU {sum(r['cpu_without'])/len(r['cpu_without']):.3f} "
                f"-> {sum(r['cpu_with'])/len(r['cpu_with']):.3f} core with {args.subscribers} subscribers at {args.hz} Hz: "
                f"ratio {r['ratio']:.3f}; per client {r['subscribers'][0]['lines_per_s_per_client']:.1f} lines/s, "
                f"dropped by daemon {sum(s['closed_by_daemon'] for s in r['subscribers'])}, "
                f"lag lines {sum(s['skip_lines'] for s in r['subscribers'])}; "
                f"device {r['samples_per_s']:.0f} samples/s, dropped samples {r['dropped_samples']}; "
                f"scope CPU {r['scope_cpu_percent']} % of a core",
                flush=True,
            )
            if "floor" in r:
                f = r["floor"]
                print(
                    f"  floor: socket_floor writing the same {f['bytes_per_write']} B per client every 100 ms: "
                    f"{sum(f['cpu'])/len(f['cpu']):.4f} core -> best ratio {r['best_ratio']:.3f}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
