#!/usr/bin/env bash
# Issue 14's figures in one go, on an otherwise idle machine, ending with
# one table of the goals (figure, target, met):
#   1. `neuroedge bench` at 384 and 1024 ch x 30 kHz (stages, end to end,
#      peak memory, stored bytes per channel-sample);
#   2. the real daemon, paced, at 384 and 1024 ch x 30 kHz, then the idle
#      default run (scripts/bench_highdensity.py: cores, drops, RSS, bytes
#      per channel-sample, time to stop, cores per thread);
#   3. with --lsl (root: a network namespace of its own), recording one LSL
#      stream at 8 ch x 250 Hz and 64 ch x 2 kHz (scripts/bench_lsl_record.sh;
#      add --labrecorder PATH for LabRecorderCLI beside it, built by
#      scripts/build-labrecorder.sh: both record the same outlet at once,
#      in each order of connecting, --repeat times, and the ratios' mean
#      is what goal 5 reads);
#   4. with --dsp, goal 6: the filter bank against SciPy and BrainFlow
#      (scripts/bench_dsp_compare.py; python3 with scipy and brainflow).
# Usage: scripts/bench_highdensity.sh [--bin PATH] [--seconds 30] [--lsl]
#            [--labrecorder PATH] [--repeat N] [--dsp]
# --seconds is each daemon run's (and each LSL recording's) length: goal 1
# asks for 5 minutes (--seconds 300); the table says what was run.
# Builds the release binary when --bin is not given. docs/performance.md
# explains the figures and what limits each.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""
SECS=30
LSL=0
DSP=0
REPEAT=1
LABREC=()
while [ $# -gt 0 ]; do
  case $1 in
    --bin) BIN=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --lsl) LSL=1; shift ;;
    --dsp) DSP=1; shift ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --labrecorder) LABREC=(--labrecorder "$2" --together --threads); shift 2 ;;
    -h|--help) sed -n 2,22p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then
  cargo build --release --locked >&2
  BIN=target/release/neuroedge
fi
OUT=$(mktemp -d /tmp/neuroedge-hd.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
for ch in 384 1024; do
  echo "== neuroedge bench --channels $ch --rate 30000"
  "$BIN" bench --channels "$ch" --rate 30000 --seconds 10 --json 2>/dev/null > "$OUT/bench-$ch.json"
  python3 - "$OUT/bench-$ch.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
st = ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in d["stages"].items())
print(f"stages (ch-samples/s): {st}")
print(f"end to end {d['end_to_end_ch_samples_per_s'] / 1e6:.1f} M ch-samples/s "
      f"({d['end_to_end_realtime_factor']:.2f}x real time), dropped {d['dropped_samples']}, "
      f"peak memory {d['peak_rss_bytes'] / 2**20:.0f} MiB, "
      f"{d['sealed_bytes_per_ch_sample']:.2f} bytes/ch-sample, journal pages {d['journal_page_kib']} KiB")
PY
done
echo "== the binary's function order (build.rs; regenerate with scripts/symbol-order.sh after a toolchain, Cargo.lock or large code change)"
scripts/symbol-order.sh --check --bin "$BIN" || true
echo "== the daemon, paced (scripts/bench_highdensity.py)"
python3 scripts/bench_highdensity.py --bin "$BIN" --seconds "$SECS" --idle-seconds 60 \
  --json-out "$OUT/daemon.json"
if [ "$LSL" = 1 ]; then
  echo "== recording one LSL stream (scripts/bench_lsl_record.sh)"
  rep=()
  [ ${#LABREC[@]} -eq 0 ] || rep=(--repeat "$REPEAT")
  scripts/bench_lsl_record.sh --bin "$BIN" --seconds "$SECS" "${LABREC[@]}" "${rep[@]}" \
    2>&1 | grep -v 'api_config.cpp\|common.cpp' | tee "$OUT/lsl.txt"
fi
if [ "$DSP" = 1 ]; then
  echo "== the filter bank against SciPy and BrainFlow (scripts/bench_dsp_compare.py)"
  python3 scripts/bench_dsp_compare.py --bin "$BIN" --rounds 5 2>/dev/null | tee "$OUT/dsp.txt"
fi
echo "== issue 14's goals"
python3 - "$OUT" "$SECS" <<'PY'
import json, os, re, sys
out, secs = sys.argv[1], float(sys.argv[2])
rows = []
def row(goal, what, value, target, ok):
    rows.append((goal, what, value, target, "yes" if ok else "NO"))
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
b384, b1024, daemon = load("bench-384.json"), load("bench-1024.json"), load("daemon.json") or []
rig = {r["rig"]: r for r in daemon}
r1024, r384 = rig.get("1024 ch x 30000 Hz"), rig.get("384 ch x 30000 Hz")
idle = next((r for r in daemon if r["rig"].endswith("(idle)")), None)
if r1024:
    row(1, f"1024 ch x 30 kHz daemon, {secs:g} s (goal: 5 min): cores", f"{r1024['cores']:.3f}", "<= 1.6", r1024["cores"] <= 1.6)
    row(1, "  dropped samples", str(r1024["dropped"]), "0", r1024["dropped"] == 0)
if b1024:
    f = b1024["end_to_end_realtime_factor"]
    row(1, "neuroedge bench 1024 ch end to end, x real time", f"{f:.2f}", ">= 1.5", f >= 1.5)
if r384:
    row(2, f"384 ch x 30 kHz daemon, {secs:g} s: cores", f"{r384['cores']:.3f}", "<= 0.6", r384["cores"] <= 0.6)
    mb = r384["hwm_mib"] * 2**20 / 1e6
    row(2, "  RSS high-water, MB", f"{mb:.0f}", "<= 250", mb <= 250)
    row(2, "  dropped samples", str(r384["dropped"]), "0", r384["dropped"] == 0)
if b384:
    m = b384["peak_rss_bytes"] / 2**20
    row(2, "neuroedge bench 384 ch peak memory, MiB", f"{m:.0f}", "<= 512", m <= 512)
if r384 and r384["bytes_per_ch_sample"]:
    v = r384["bytes_per_ch_sample"]
    row(3, "384 ch x 30 kHz daemon: journal bytes per channel-sample", f"{v:.2f}", "<= 3.5", v <= 3.5)
if idle:
    pct, mb = idle["cores"] * 100, idle["rss_mib"] * 2**20 / 1e6
    row(4, "idle default run: % of a core", f"{pct:.2f}", "<= 0.3", pct <= 0.3)
    row(4, "  RSS, MB", f"{mb:.1f}", "<= 12", mb <= 12)
lsl = os.path.join(out, "lsl.txt")
if os.path.exists(lsl):
    text = open(lsl).read()
    for load, what in (("A", "8 ch x 250 Hz"), ("B", "64 ch x 2 kHz")):
        m = re.search(rf"^{load}\s+ratios, mean of [^:]*: CPU ([0-9.]+) \(range ([0-9.]+)-([0-9.]+)\), "
                      rf"peak RSS ([0-9.]+)", text, re.M)
        if m:
            cpu, lo, hi, rss = (float(x) for x in m.groups())
            row(5, f"LSL {what}: CPU / LabRecorderCLI's (range)", f"{cpu:.2f} ({lo:.2f}-{hi:.2f})", "<= 1.5", cpu <= 1.5)
            row(5, "  peak RSS / LabRecorderCLI's", f"{rss:.2f}", "<= 2", rss <= 2)
        else:
            row(5, f"LSL {what}: no LabRecorderCLI ratio (--labrecorder PATH)", "-", "-", False)
dsp = os.path.join(out, "dsp.txt")
if os.path.exists(dsp):
    t = open(dsp).read()
    try:
        d = json.loads(t[t.index("{"):])
        row(6, "filter bank / SciPy sosfilt", f"{d['ratio_vs_scipy']:.2f}", ">= 6", d["ratio_vs_scipy"] >= 6)
        if "ratio_vs_brainflow" in d:
            row(6, "filter bank / BrainFlow", f"{d['ratio_vs_brainflow']:.2f}", ">= 6", d["ratio_vs_brainflow"] >= 6)
    except ValueError:
        row(6, "bench_dsp_compare.py gave no figures", "-", "-", False)
w = max(len(r[1]) for r in rows) if rows else 10
print(f"{'GOAL':<5} {'FIGURE':<{w}}  {'MEASURED':>18}  {'TARGET':>7}  MET")
for g, what, v, t, ok in rows:
    print(f"{g:<5} {what:<{w}}  {v:>18}  {t:>7}  {ok}")
PY
