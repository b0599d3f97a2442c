#!/usr/bin/env bash
# Issue 14's figures in one go, on an otherwise idle machine:
#   1. `neuroedge bench` at 384 and 1024 ch x 30 kHz (stages, end to end,
#      peak memory, stored bytes per channel-sample);
#   2. the real daemon, paced, at 384 and 1024 ch x 30 kHz, then the idle
#      default run (scripts/bench_highdensity.py: cores, drops, RSS, bytes
#      per channel-sample, time to stop, cores per thread);
#   3. with --lsl (root: a network namespace of its own), recording one LSL
#      stream at 8 ch x 250 Hz and 64 ch x 2 kHz (scripts/bench_lsl_record.sh;
#      add --labrecorder PATH for LabRecorderCLI beside it, built by
#      scripts/build-labrecorder.sh: both record the same outlet at once,
#      in each order of connecting, and the ratios' mean is printed).
# Usage: scripts/bench_highdensity.sh [--bin PATH] [--seconds 30] [--lsl]
#            [--labrecorder PATH]
# Builds the release binary when --bin is not given. docs/performance.md
# explains the figures and what limits each.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""
SECS=30
LSL=0
LABREC=()
while [ $# -gt 0 ]; do
  case $1 in
    --bin) BIN=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --lsl) LSL=1; shift ;;
    --labrecorder) LABREC=(--labrecorder "$2" --together --threads); shift 2 ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then
  cargo build --release --locked >&2
  BIN=target/release/neuroedge
fi
for ch in 384 1024; do
  echo "== neuroedge bench --channels $ch --rate 30000"
  "$BIN" bench --channels "$ch" --rate 30000 --seconds 10 2>/dev/null
done
echo "== the binary's function order (build.rs; regenerate with scripts/symbol-order.sh after a toolchain, Cargo.lock or large code change)"
scripts/symbol-order.sh --check --bin "$BIN" || true
echo "== the daemon, paced (scripts/bench_highdensity.py)"
python3 scripts/bench_highdensity.py --bin "$BIN" --seconds "$SECS" --idle-seconds 60
if [ "$LSL" = 1 ]; then
  echo "== recording one LSL stream (scripts/bench_lsl_record.sh)"
  scripts/bench_lsl_record.sh --bin "$BIN" --seconds "$SECS" "${LABREC[@]}"
fi
