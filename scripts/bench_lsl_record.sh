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
# - CPU = utime + stime (/proc/PID/stat) over the recorder's life, as % of
#   one core; peak RSS = VmHWM; samples and losses from neuroedge's status
#   (samples_total, gaps, dropped_samples) / the XDF (pyxdf). neuroedge's
#   child processes (the python3 that locates pylsl's liblsl at the first
#   LSL open; none when NEUROEDGE_LSL_LIB names the library) are not in
#   its figure: their CPU is printed on a line of its own.
#
# Needs root (network namespace), python3 with pylsl (and pyxdf for
# LabRecorder). Usage:
#   scripts/bench_lsl_record.sh [--bin target/release/neuroedge] [--seconds 60]
#       [--loads A,B] [--labrecorder PATH/LabRecorderCLI] [--label TEXT]
#       [--features-step S] [--together] [--threads]
# Prints one table row per (load, recorder). --features-step sets the
# device's [features] step_s (default 0.5): e.g. 60 for a floor run that
# records, filters and journals but computes features once a minute.
# --together runs both recorders at once on the same outlet (one after
# the other by default): the same seconds of a shared host for both, so
# their ratio does not move with the host's load between the two runs.
# It runs each load twice, neuroedge connecting first and then
# LabRecorderCLI first, and prints each order's ratios and their mean:
# the inlet that connects first pays more in liblsl's data receiver
# (~0.06 % of a core at B on a 2-core VM, whichever recorder it is), so
# one order alone favours the recorder that connects second.
# --threads adds each recorder's CPU per thread name, over its life
# (threads that have exited are in the total only; liblsl's threads are
# `lsl-connect`; neuroedge's own acq-*, dsp-*, journal, neuroedge-io).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN=target/release/neuroedge
SECONDS_RUN=60
LOADS=A,B
LABREC=""
LABEL=neuroedge
TOGETHER=0
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
    --threads) THREADS=1; shift ;;
    -h|--help) sed -n 2,40p "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespace)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "no neuroedge binary at $BIN (cargo build --release, or --bin)" >&2; exit 2; }
BIN=$(realpath "$BIN")
python3 -c 'import pylsl' 2>/dev/null || { echo "python3 lacks pylsl (pip install pylsl)" >&2; exit 2; }

. scripts/lsl-netns-lib.sh
lsl_work neuroedge-lslbench
lsl_netns
export WORK

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

# utime + stime (clock ticks) of PID.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
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
  ip netns exec "$NS" "$BIN" run --config "$d/neuroedge.toml" 2>"$d/log" &
  NE_PID=$!
  NE_T0=$(date +%s.%N)
}

# Per thread name: CPU over the process's life so far, % of one core.
thread_cpu() { # pid seconds
  for t in /proc/"$1"/task/*; do
    printf '%s\t%s\n' "$(cat "$t/comm")" "$(awk '{print $14 + $15}' "$t/stat")"
  done | awk -F'\t' -v hz="$HZ" -v s="$2" '{c[$1] += $2}
    END {for (n in c) if (c[n] > 0) printf "  %s %.3f", n, c[n] / hz / s * 100; print ""}'
}

finish_neuroedge() {
  local pid=$NE_PID d=$NE_DIR
  local tk hwm t1 st threads=""
  tk=$(ticks "$pid"); hwm=$(hwm_kb "$pid"); t1=$(date +%s.%N)
  # Children's CPU (the python3 that finds pylsl's liblsl at the first
  # LSL open), not in the process's own figure: told apart.
  local kids
  kids=$(awk -v hz="$HZ" '{printf "%.0f", ($16 + $17) * 1000 / hz}' "/proc/$pid/stat")
  if [ "$THREADS" = 1 ]; then
    threads=$(thread_cpu "$pid" "$(python3 -c "print($t1 - $NE_T0)")")
  fi
  st=$("$BIN" status --socket "$d/var/run/neuroedge.sock" --json 2>/dev/null || echo '{}')
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$tk" "$HZ" "$NE_T0" "$t1" "$hwm" "$st" "$LABEL" "$LOAD" <<'EOF'
import json, sys
tk, hz, t0, t1, hwm, st, label, load = sys.argv[1:]
cpu = float(tk) / float(hz) / (float(t1) - float(t0)) * 100
d = next((d for d in json.loads(st).get("devices", []) if d["id"] == "lsl-eeg"), {})
lost = (d.get("dropped_samples") or 0) + (d.get("gaps") or 0)
open(f"{__import__('os').environ['WORK']}/cpu_ne", "w").write(f"{cpu} {int(hwm) / 1024}")
print(f"{load:<5} {label:<28} {cpu:10.2f} {int(hwm) / 1024:12.1f} {d.get('samples_total', 0):>10} {lost:>6}"
      + ("" if d.get("state") == "streaming" else f"  (state {d.get('state')}: {d.get('last_error')})"))
EOF
  [ -z "$threads" ] || echo "      threads (% of a core):$threads"
  [ "$kids" = 0 ] || echo "      child processes (not in %core): $kids ms of CPU (python3 finding pylsl's liblsl; none with NEUROEDGE_LSL_LIB)"
}

start_labrecorder() {
  LR_DIR=$WORK/lr
  local d=$LR_DIR
  rm -rf "$d"; mkdir -p "$d"
  local fifo=$d/stdin; mkfifo "$fifo"
  ip netns exec "$NS" "$LABREC" "$d/rec.xdf" 'name="bench"' <"$fifo" >"$d/log" 2>&1 &
  LR_PID=$!
  exec 9>"$fifo"
  LR_T0=$(date +%s.%N)
}

finish_labrecorder() {
  local pid=$LR_PID d=$LR_DIR
  local tk hwm t1 threads=""
  tk=$(ticks "$pid"); hwm=$(hwm_kb "$pid"); t1=$(date +%s.%N)
  if [ "$THREADS" = 1 ]; then
    threads=$(thread_cpu "$pid" "$(python3 -c "print($t1 - $LR_T0)")")
  fi
  echo >&9; exec 9>&-
  wait "$pid" || true
  python3 - "$tk" "$HZ" "$LR_T0" "$t1" "$hwm" "$d/rec.xdf" "$LOAD" <<'EOF'
import sys
tk, hz, t0, t1, hwm, xdf, load = sys.argv[1:]
cpu = float(tk) / float(hz) / (float(t1) - float(t0)) * 100
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
    for first in neuroedge labrecorder; do
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
load, a, b = sys.argv[1:]
(c1, m1), (c2, m2) = (map(float, x.split()) for x in (a, b))
print(f"{load}     ratios, mean of both orders: CPU {(c1 + c2) / 2:.2f}, peak RSS {(m1 + m2) / 2:.2f}")
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
