#!/usr/bin/env bash
# Latency and CPU cost of the LSL outlets (docs/outlets.md), issue 12:
#
# - everything LSL in a network namespace of its own (loopback only,
#   multicast routed to lo; LSLAPICFG = tests/peers/lsl_api.cfg);
# - neuroedge with one paced synthetic device: load A 8 ch x 250 Hz,
#   load B 384 ch x 30 kHz, and M (64 ch x 2 kHz) in between; no filters,
#   the default features;
# - run 1: `[lsl_outlet] streams = ["filtered"]` and a pylsl inlet pulling
#   into numpy: latency of each sample = the inlet's local_clock() when the
#   chunk arrives - the sample's LSL stamp (= its arrival at the driver,
#   the synthetic source stamps samples as it makes them), p50 / p99;
#   target p99 <= one ring block (100 ms) + 20 ms;
# - run 2: the same device without outlets;
# - CPU = neuroedge's threads' run time (/proc/PID/task/*/schedstat, ns)
#   over SECONDS after a 3 s warm-up; ratio = run 1 / run 2 (target <= 1.3);
# - run 3, the floor: a pylsl outlet of the same shape (channels, rate,
#   float32, one chunk per 100 ms) and the same inlet, without neuroedge;
#   CPU of liblsl's own threads in that process (all but the Python thread
#   that pushes). No outlet built on liblsl costs less than that:
#   best ratio = (run 2 + floor) / run 2.
#
# Needs root (network namespace), python3 with pylsl and numpy. Usage:
#   scripts/bench_outlet_latency.sh [--bin target/release/neuroedge]
#       [--seconds 20] [--loads A,B] (A, M, B)
# Prints one row per load.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN=target/release/neuroedge
SECONDS_RUN=20
LOADS=A,B
while [ $# -gt 0 ]; do
  case $1 in
    --bin) BIN=$2; shift 2 ;;
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    --loads) LOADS=$2; shift 2 ;;
    -h|--help) sed -n 2,26p "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespace)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no neuroedge binary at $BIN (cargo build --release, or --bin)" >&2; exit 2; }
BIN=$(realpath "$BIN")
python3 -c 'import pylsl, numpy' 2>/dev/null || { echo "python3 lacks pylsl or numpy" >&2; exit 2; }

. scripts/lsl-netns-lib.sh
lsl_work neuroedge-outbench
lsl_netns

cat > "$WORK/inlet.py" <<'EOF'
import sys, time
import numpy as np
import pylsl
name, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
info = pylsl.resolve_byprop("name", name, 1, 30.0)[0]
inlet = pylsl.StreamInlet(info, max_buflen=30)
inlet.open_stream(10.0)
n = info.channel_count()
buf = np.empty((65536, n), dtype=np.float32)
stamps = np.empty(65536)
lat = []
end = time.monotonic() + seconds
warm = time.monotonic() + 3.0
while time.monotonic() < end:
    k = inlet.pull_chunk(timeout=0.0, max_samples=65536, dest_obj=buf)[1]
    now = pylsl.local_clock()
    if k:
        if time.monotonic() > warm:
            lat.append(now - np.asarray(k))
    else:
        time.sleep(0.001)
lat = np.concatenate(lat) * 1000.0
with open(out, "w") as f:
    f.write(f"{np.percentile(lat, 50):.1f} {np.percentile(lat, 99):.1f} {len(lat)}\n")
EOF

cat > "$WORK/floor.py" <<'EOF'
import os, sys, threading, time
import numpy as np
import pylsl
name, channels, rate, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
info = pylsl.StreamInfo(name, "EEG", channels, rate, pylsl.cf_float32, name + "-floor")
outlet = pylsl.StreamOutlet(info)
me = threading.get_native_id()
def liblsl_ns():
    total = 0
    for t in os.listdir("/proc/self/task"):
        if int(t) != me:
            with open(f"/proc/self/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
    return total
chunk = np.random.default_rng(1).standard_normal((int(rate / 10), channels)).astype(np.float32)
start = time.monotonic(); nxt = start; c0 = t0 = None
while time.monotonic() - start < seconds + 3.0:
    nxt += 0.1
    time.sleep(max(0.0, nxt - time.monotonic()))
    outlet.push_chunk(chunk)
    if c0 is None and time.monotonic() - start >= 3.0:
        c0, t0 = liblsl_ns(), time.monotonic()
with open(out, "w") as f:
    f.write(f"{100 * (liblsl_ns() - c0) / 1e9 / (time.monotonic() - t0):.3f}\n")
EOF

# Run time of all of PID's threads, in nanoseconds.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }

# floor LOAD CHANNELS RATE -> prints liblsl's CPU % for an outlet of that shape
floor() {
  local dir=$WORK/$1-floor
  mkdir -p "$dir"
  ip netns exec "$NS" python3 "$WORK/floor.py" bench.floor "$2" "$3" "$SECONDS_RUN" "$dir/cpu" &
  local pusher=$!
  PIDS+=("$pusher")
  ip netns exec "$NS" python3 "$WORK/inlet.py" bench.floor $((SECONDS_RUN + 3)) "$dir/lat" &
  local inlet=$!
  PIDS+=("$inlet")
  wait "$pusher" "$inlet"
  cat "$dir/cpu"
}

# run LOAD CHANNELS RATE OUTLETS(0|1) -> prints "cpu_percent [p50 p99 n]"
run() {
  local dir=$WORK/$1-$4 channels=$2 rate=$3 outlets=$4
  mkdir -p "$dir/devices"
  cat > "$dir/neuroedge.toml" <<EOF
[daemon]
site_id = "bench"
node_id = "bench"
devices_dir = "devices"
[crypto]
key_file = "var/batch.key"
generate_if_missing = true
[status]
socket = "var/run/ne.sock"
[journal]
path = "var/journal.db"
EOF
  {
    printf 'id = "bench"\ndriver = "synthetic"\nenabled = true\n'
    printf '[connection]\nsample_rate = %s\nchannels = %s\npace = true\n' "$rate" "$channels"
    [ "$outlets" = 1 ] && printf '[lsl_outlet]\nstreams = ["filtered"]\n'
  } > "$dir/devices/bench.toml"
  ip netns exec "$NS" "$BIN" run --config "$dir/neuroedge.toml" 2> "$dir/daemon.log" &
  local pid=$!
  PIDS+=("$pid")
  local inlet=""
  if [ "$outlets" = 1 ]; then
    ip netns exec "$NS" python3 "$WORK/inlet.py" bench.filtered $((SECONDS_RUN + 3)) "$dir/lat" &
    inlet=$!
    PIDS+=("$inlet")
  fi
  sleep 3
  local t0 c0
  t0=$(date +%s.%N); c0=$(cpu_ns "$pid")
  sleep "$SECONDS_RUN"
  local t1 c1
  t1=$(date +%s.%N); c1=$(cpu_ns "$pid")
  [ -n "$inlet" ] && wait "$inlet"
  kill -TERM "$pid"; wait "$pid" || true
  local cpu; cpu=$(echo "($c1 - $c0) / 1000000000 / ($t1 - $t0) * 100" | bc -l)
  printf '%.3f %s\n' "$cpu" "$( [ -f "$dir/lat" ] && cat "$dir/lat" )"
}

printf '| load | p50 ms | p99 ms | samples | CPU with outlet %% | CPU without %% | ratio | liblsl floor %% | best ratio |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
for load in ${LOADS//,/ }; do
  case $load in
    A) ch=8; rate=250 ;;
    M) ch=64; rate=2000 ;;
    B) ch=384; rate=30000 ;;
    *) echo "unknown load $load" >&2; exit 2 ;;
  esac
  read -r cpu1 p50 p99 n <<< "$(run "$load" "$ch" "$rate" 1)"
  read -r cpu0 <<< "$(run "$load" "$ch" "$rate" 0)"
  read -r lsl <<< "$(floor "$load" "$ch" "$rate")"
  ratio=$(echo "$cpu1 / $cpu0" | bc -l)
  best=$(echo "($cpu0 + $lsl) / $cpu0" | bc -l)
  printf '| %s (%s ch x %s Hz) | %s | %s | %s | %s | %s | %.2f | %s | %.2f |\n' \
    "$load" "$ch" "$rate" "$p50" "$p99" "$n" "$cpu1" "$cpu0" "$ratio" "$lsl" "$best"
done
