#!/usr/bin/env bash
# The cost of recording one LSL stream: neuroedge (and LabRecorderCLI when
# given) side by side, by the method of docs/performance notes in
# /work/shared/design/labrecorder-comparison.md:
#
# - everything LSL in a network namespace of its own (loopback only,
#   multicast routed to lo; LSLAPICFG = tests/peers/lsl_api.cfg): nothing
#   reaches a real network;
# - a pylsl outlet named `bench`, float32, push_chunk every 10 ms: load A
#   8 ch x 250 Hz, load B 64 ch x 2 kHz; a fresh outlet per run, the
#   recorder started 3 s later and run alone for SECONDS (default 60);
# - neuroedge with devices/lsl-eeg.toml (name = "bench", the profile's
#   default filters and features), stopped by SIGTERM; LabRecorderCLI
#   `rec.xdf 'name="bench"'`, stopped by Enter on stdin;
# - CPU = the recorder's CPU time over its life until it is stopped, as %
#   of one core: read from a cgroup of its own (cgroup v2 `cpu.stat`, or
#   v1 `cpuacct.usage`), which counts every thread, those that have exited
#   too, in microseconds or better. Without a cgroup it falls back to
#   utime + stime of /proc/PID/stat, in clock ticks (1/100 s: one tick
#   moves load B's ratio by ~3 % over 60 s). Peak RSS = VmHWM; samples and
#   losses from neuroedge's status (samples_total, gaps, dropped_samples) /
#   the XDF (pyxdf).
# - neuroedge is given NEUROEDGE_LSL_LIB = the liblsl that pylsl bundles
#   (unless it is set already): the daemon would find the same library by
#   running python3 at the first LSL open, and that child process would be
#   in its cgroup. Set NEUROEDGE_LSL_LIB=.../liblsl.so.2 of the
#   LabRecorderCLI build to give both recorders the same liblsl (stop 41:
#   liblsl 1.17.7 and pylsl's 1.18.0b6 cost the same in neuroedge).
#
# Needs root (network namespace), python3 with pylsl (and pyxdf for
# LabRecorder). Usage:
#   scripts/bench_lsl_record.sh [--bin target/release/neuroedge] [--seconds 60]
#       [--loads A,B] [--labrecorder PATH/LabRecorderCLI] [--label TEXT]
#       [--features-step S] [--together] [--repeat N] [--threads]
# Prints one table row per (load, recorder). --features-step sets the
# device's [features] step_s (default 0.5): e.g. 60 for a floor run that
# records, filters and journals but computes features once a minute.
# --together runs both recorders at once on the same outlet (one after
# the other by default): the same seconds of a shared host for both, so
# their ratio does not move with the host's load between the two runs.
# It runs each load twice, neuroedge connecting first and then
# LabRecorderCLI first, and prints each order's ratios and their mean:
# at stop 40 the inlet that connected first paid more in liblsl's data
# receiver (~0.06 % of a core at B on a 2-core VM, whichever recorder it
# was), so one order alone favoured the recorder that connected second
# (stop 41's pairs at B did not show it consistently: 1.38 and 1.47 with
# neuroedge first, 1.54 and 1.39 with LabRecorderCLI first).
# --repeat N (with --together) runs the pair of orders N times and prints
# the mean of all 2N ratios and their range: the host's load moves single
# runs by more than the recorders differ (stop 40: LabRecorderCLI 0.47 to
# 0.71 % of a core at B).
# --threads adds each recorder's CPU per thread name, over its life, in
# ns (/proc/PID/task/*/schedstat); threads that have exited are in the
# total only, and shown as `exited` when the total is a cgroup's. liblsl's
# threads take the name of the thread that made them: `lsl-connect` in
# neuroedge (its data receiver and its clock-offset thread), and
# neuroedge's own are acq-*, dsp-*, journal, neuroedge-io.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN=target/release/neuroedge
SECONDS_RUN=60
LOADS=A,B
LABREC=""
LABEL=neuroedge
TOGETHER=0
REPEAT=1
THREADS=0
while [ $# -gt 0 ]; do
  case $1 in
    --bin) BIN=$2; shift 2 ;;
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    --loads) LOADS=$2; shift 2 ;;
    --labrecorder) LABREC=$2; shift 2 ;;
    --label) LABEL=$2; shift 2 ;;
    --features-step) FEATURES_STEP=$2; shift 2 ;;
    --together) TOGETHER=1; shift ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --threads) THREADS=1; shift ;;
    -h|--help) sed -n 2,57p "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespace)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no neuroedge binary at $BIN (cargo build --release, or --bin)" >&2; exit 2; }
BIN=$(realpath "$BIN")
python3 -c 'import pylsl' 2>/dev/null || { echo "python3 lacks pylsl (pip install pylsl)" >&2; exit 2; }
case $REPEAT in ''|*[!0-9]*|0) echo "--repeat takes a count of 1 or more" >&2; exit 2 ;; esac
if [ -z "${NEUROEDGE_LSL_LIB:-}" ]; then
  # As the daemon finds it: pylsl's lib/liblsl.so, else another liblsl*.so*.
  NEUROEDGE_LSL_LIB=$(python3 -c '
import glob, importlib.util as u, os
d = os.path.join(u.find_spec("pylsl").submodule_search_locations[0], "lib")
libs = [os.path.join(d, "liblsl.so")] + sorted(glob.glob(os.path.join(d, "liblsl*.so*")))
print(next((p for p in libs if os.path.exists(p)), ""))')
  [ -n "$NEUROEDGE_LSL_LIB" ] || { echo "pylsl bundles no liblsl here: set NEUROEDGE_LSL_LIB" >&2; exit 2; }
fi
export NEUROEDGE_LSL_LIB
echo "neuroedge's liblsl: $NEUROEDGE_LSL_LIB"

. scripts/lsl-netns-lib.sh
lsl_work neuroedge-lslbench
lsl_netns
export WORK

# A cgroup per recorder run, for its CPU time (see the top). CG_DIRS are
# removed at exit, after the recorders.
CG_ROOT=""; CG_KIND=""
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then CG_ROOT=/sys/fs/cgroup; CG_KIND=v2
elif [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then CG_ROOT=/sys/fs/cgroup/unified; CG_KIND=v2
elif [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then CG_ROOT=/sys/fs/cgroup/cpuacct; CG_KIND=v1
fi
CG_DIRS=()
CG_N=0
trap 'lsl_cleanup; for d in "${CG_DIRS[@]}"; do rmdir "$d" 2>/dev/null || true; done' EXIT
# cg_new: a new cgroup's folder into CG (empty when there is none).
cg_new() {
  CG=""
  [ -n "$CG_ROOT" ] || return 0
  CG_N=$((CG_N + 1))
  local d="$CG_ROOT/${NS}-$CG_N"
  if mkdir "$d" 2>/dev/null; then CG=$d; CG_DIRS+=("$d"); fi
}
# cg_cpu DIR: the cgroup's CPU time so far, seconds.
cg_cpu() {
  case $CG_KIND in
    v2) awk '$1 == "usage_usec" {printf "%.6f", $2 / 1e6}' "$1/cpu.stat" ;;
    v1) awk '{printf "%.9f", $1 / 1e9}' "$1/cpuacct.usage" ;;
  esac
}
# launch CG COMMAND...: exec COMMAND in the cgroup CG (if any), so that
# every thread and process it starts is counted there. Run it with &.
launch() {
  local cg=$1; shift
  [ -z "$cg" ] || echo "$BASHPID" > "$cg/cgroup.procs"
  exec "$@"
}
# cpu_s PID CG: the recorder's CPU seconds so far (the cgroup's, else ticks).
cpu_s() {
  if [ -n "$2" ]; then cg_cpu "$2"; else awk -v hz="$HZ" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; fi
}

cat > "$WORK/outlet.py" <<'EOF'
import sys, time
import pylsl
channels, rate = int(sys.argv[1]), float(sys.argv[2])
info = pylsl.StreamInfo("bench", "EEG", channels, rate, "float32", "bench-src")
chans = info.desc().append_child("channels")
for c in range(channels):
    chans.append_child("channel").append_child_value("label", f"C{c + 1}")
outlet = pylsl.StreamOutlet(info)
t0 = pylsl.local_clock()
sent = 0
row = [float(c) for c in range(channels)]
while True:
    time.sleep(0.01)
    due = int((pylsl.local_clock() - t0) * rate)
    if due > sent:
        outlet.push_chunk([row] * (due - sent))
        sent = due
EOF

hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

printf '%-5s %-28s %10s %12s %10s %6s\n' load recorder "%core" "peakRSS_MB" samples lost

# neuroedge with the LSL device profile, recording the outlet `bench`.
start_neuroedge() {
  NE_DIR=$WORK/ne
  local d=$NE_DIR
  rm -rf "$d"; mkdir -p "$d/devices"
  cp "$ROOT/config/neuroedge.toml" "$d/neuroedge.toml"
  sed -i 's#^devices_dir = .*#devices_dir = "devices"#; s#"\.\./var/#"var/#' "$d/neuroedge.toml"
  sed -e 's/^enabled = false/enabled = true/' -e 's/^# name = .*/name = "bench"/' \
    "$ROOT/devices/lsl-eeg.toml" > "$d/devices/lsl-eeg.toml"
  if [ -n "${FEATURES_STEP:-}" ]; then
    sed -i "s/^step_s = .*/step_s = $FEATURES_STEP/" "$d/devices/lsl-eeg.toml"
  fi
  cg_new; NE_CG=$CG
  launch "$NE_CG" ip netns exec "$NS" "$BIN" run --config "$d/neuroedge.toml" 2>"$d/log" &
  NE_PID=$!
  PIDS+=("$NE_PID")
  NE_T0=$(date +%s.%N)
}

# Per thread name: CPU over the process's life so far, % of one core
# (schedstat's ns; ticks where the kernel keeps no schedstat), and with a
# cgroup's total, what threads that have exited used.
thread_cpu() { # pid seconds cgroup-or-empty
  local list total=""
  list=$(for t in /proc/"$1"/task/*; do
    if [ -r "$t/schedstat" ]; then
      printf '%s\t%s\n' "$(cat "$t/comm")" "$(awk '{printf "%.9f", $1 / 1e9}' "$t/schedstat")"
    else
      printf '%s\t%s\n' "$(cat "$t/comm")" "$(awk -v hz="$HZ" '{printf "%.2f", ($14 + $15) / hz}' "$t/stat")"
    fi
  done)
  # The total after the threads: what has exited, their difference, then
  # reads ≥ 0.
  [ -z "$3" ] || total=$(cg_cpu "$3")
  awk -F'\t' -v s="$2" -v total="$total" '{c[$1] += $2; all += $2}
    END {for (n in c) if (c[n] > 0) printf "  %s %.3f", n, c[n] / s * 100
         if (total != "") printf "  (exited) %.3f", (total - all) / s * 100; print ""}' <<<"$list"
}

finish_neuroedge() {
  local pid=$NE_PID d=$NE_DIR
  local cpu hwm t1 st threads=""
  t1=$(date +%s.%N)
  [ "$THREADS" = 0 ] || threads=$(thread_cpu "$pid" "$(python3 -c "print($t1 - $NE_T0)")" "$NE_CG")
  cpu=$(cpu_s "$pid" "$NE_CG"); hwm=$(hwm_kb "$pid")
  # Children's CPU (a python3 finding pylsl's liblsl, were
  # NEUROEDGE_LSL_LIB not set): in a cgroup's figure, so shown.
  local kids
  kids=$(awk -v hz="$HZ" '{printf "%.0f", ($16 + $17) * 1000 / hz}' "/proc/$pid/stat")
  st=$("$BIN" status --socket "$d/var/run/neuroedge.sock" --json 2>/dev/null || echo '{}')
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$cpu" "$NE_T0" "$t1" "$hwm" "$st" "$LABEL" "$LOAD" <<'EOF'
import json, sys
cpu_s, t0, t1, hwm, st, label, load = sys.argv[1:]
cpu = float(cpu_s) / (float(t1) - float(t0)) * 100
d = next((d for d in json.loads(st).get("devices", []) if d["id"] == "lsl-eeg"), {})
lost = (d.get("dropped_samples") or 0) + (d.get("gaps") or 0)
open(f"{__import__('os').environ['WORK']}/cpu_ne", "w").write(f"{cpu} {int(hwm) / 1024}")
print(f"{load:<5} {label:<28} {cpu:10.2f} {int(hwm) / 1024:12.1f} {d.get('samples_total', 0):>10} {lost:>6}"
      + ("" if d.get("state") == "streaming" else f"  (state {d.get('state')}: {d.get('last_error')})"))
EOF
  [ -z "$threads" ] || echo "      threads (% of a core):$threads"
  [ "$kids" = 0 ] || echo "      child processes: $kids ms of CPU${NE_CG:+ (in %core)}"
}

start_labrecorder() {
  LR_DIR=$WORK/lr
  local d=$LR_DIR
  rm -rf "$d"; mkdir -p "$d"
  local fifo=$d/stdin; mkfifo "$fifo"
  cg_new; LR_CG=$CG
  launch "$LR_CG" ip netns exec "$NS" "$LABREC" "$d/rec.xdf" 'name="bench"' <"$fifo" >"$d/log" 2>&1 &
  LR_PID=$!
  PIDS+=("$LR_PID")
  exec 9>"$fifo"
  LR_T0=$(date +%s.%N)
}

finish_labrecorder() {
  local pid=$LR_PID d=$LR_DIR
  local cpu hwm t1 threads=""
  t1=$(date +%s.%N)
  [ "$THREADS" = 0 ] || threads=$(thread_cpu "$pid" "$(python3 -c "print($t1 - $LR_T0)")" "$LR_CG")
  cpu=$(cpu_s "$pid" "$LR_CG"); hwm=$(hwm_kb "$pid")
  echo >&9; exec 9>&-
  wait "$pid" || true
  python3 - "$cpu" "$LR_T0" "$t1" "$hwm" "$d/rec.xdf" "$LOAD" <<'EOF'
import sys
cpu_s, t0, t1, hwm, xdf, load = sys.argv[1:]
cpu = float(cpu_s) / (float(t1) - float(t0)) * 100
try:
    import pyxdf
    streams, _ = pyxdf.load_xdf(xdf)
    n = sum(len(s["time_stamps"]) for s in streams if s["info"]["name"][0] == "bench")
except Exception as e:
    n = f"? ({e})"
open(f"{__import__('os').environ['WORK']}/cpu_lr", "w").write(f"{cpu} {int(hwm) / 1024}")
print(f"{load:<5} {'LabRecorderCLI':<28} {cpu:10.2f} {int(hwm) / 1024:12.1f} {n:>10} {'-':>6}")
EOF
  [ -z "$threads" ] || echo "      threads (% of a core):$threads"
}

start_outlet() {
  ip netns exec "$NS" python3 "$WORK/outlet.py" "$CH" "$RATE" &
  OUTLET=$!
  PIDS+=("$OUTLET")
  sleep 3
}

stop_outlet() {
  kill "$OUTLET" 2>/dev/null || true
  wait "$OUTLET" 2>/dev/null || true
}

for LOAD in ${LOADS//,/ }; do
  case $LOAD in
    A) CH=8; RATE=250 ;;
    B) CH=64; RATE=2000 ;;
    *) echo "unknown load $LOAD (A or B)" >&2; exit 2 ;;
  esac
  if [ "$TOGETHER" = 1 ] && [ -n "$LABREC" ]; then
    # Both recording the same outlet over the same seconds, once in each
    # order of connecting.
    ratios=()
    for first in $(for _ in $(seq "$REPEAT"); do echo neuroedge labrecorder; done); do
      start_outlet
      if [ "$first" = neuroedge ]; then
        start_neuroedge; sleep 1; start_labrecorder
      else
        start_labrecorder; sleep 1; start_neuroedge
      fi
      sleep "$SECONDS_RUN"
      finish_neuroedge
      finish_labrecorder
      stop_outlet
      r=$(python3 -c 'import sys; n, m = open(sys.argv[1]).read().split(); l, k = open(sys.argv[2]).read().split(); print(f"{float(n) / float(l):.2f} {float(m) / float(k):.2f}")' "$WORK/cpu_ne" "$WORK/cpu_lr")
      echo "$LOAD     ratios with $first connecting first: CPU ${r% *}, peak RSS ${r#* }"
      ratios+=("$r")
    done
    python3 - "$LOAD" "${ratios[@]}" <<'EOF'
import sys
load, runs = sys.argv[1], [tuple(map(float, x.split())) for x in sys.argv[2:]]
cpu, rss = [r[0] for r in runs], [r[1] for r in runs]
mean = lambda v: sum(v) / len(v)
what = "both orders" if len(runs) == 2 else f"{len(runs)} runs, both orders each"
print(f"{load}     ratios, mean of {what}: CPU {mean(cpu):.2f} (range {min(cpu):.2f}-{max(cpu):.2f}), "
      f"peak RSS {mean(rss):.2f} (range {min(rss):.2f}-{max(rss):.2f})")
EOF
    continue
  fi
  recorders=(neuroedge)
  [ -n "$LABREC" ] && recorders+=(labrecorder)
  for rec in "${recorders[@]}"; do
    start_outlet
    "start_$rec"
    sleep "$SECONDS_RUN"
    "finish_$rec"
    stop_outlet
  done
done
