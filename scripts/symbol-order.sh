#!/usr/bin/env bash
# Make (or check) link/x86_64-unknown-linux-gnu.order: the functions the
# release daemon runs, which build.rs hands to the linker so they sit
# together in the binary (docs/performance.md, "Idle").
#
#   scripts/symbol-order.sh [--bin PATH] [--seconds N] [--no-lsl] [--out FILE]
#   scripts/symbol-order.sh --check [--bin PATH]
#
# Making it: runs the daemon under valgrind's callgrind (each run N seconds,
# default 150, then SIGINT: start-up, the steady state, the minute's heap
# trim, the first WAL checkpoint at ~2 minutes, and the stop) on
#   1. config/neuroedge.toml (the synthetic device), asking `status` on the
#      way, and
#   2. the LSL device (devices/lsl-eeg.toml) recording a pylsl outlet of
#      8 ch x 250 Hz in a network namespace of its own (root and pylsl;
#      --no-lsl skips it),
# keeps every function of the binary that ran, most instructions first,
# and records the rustc commit and Cargo.lock's SHA-256 it was made for.
# Without --bin it first runs `cargo build --release`, so that the runs use
# the release build of this tree. Rebuild afterwards (cargo build
# --release): the binary the runs used
# must be the build the file is for, so run it after a toolchain or
# Cargo.lock change, or when --check finds much less than all of it.
#
# --check: how many of the file's functions the binary has, and how many
# 64-KiB pieces of its code they span (what the kernel maps when they run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN=target/release/neuroedge
SECS=150
LSL=1
OUT=link/x86_64-unknown-linux-gnu.order
CHECK=0
BIN_GIVEN=0
while [ $# -gt 0 ]; do
  case $1 in
    --bin) BIN=$2; BIN_GIVEN=1; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --no-lsl) LSL=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    --check) CHECK=1; shift ;;
    -h|--help) sed -n 2,25p "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$CHECK" = 0 ] && [ "$BIN_GIVEN" = 0 ]; then
  # The runs must use the release build of this tree: `cargo bench`
  # rebuilds target/release/neuroedge in the bench profile, and a file made
  # from that binary matched 1414 of 2455 functions of the release build.
  echo "== cargo build --release (the build the file is made for)" >&2
  cargo build --release
fi
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release, or --bin)" >&2; exit 2; }
BIN=$(realpath "$BIN")

if [ "$CHECK" = 1 ]; then
  python3 - "$BIN" "$OUT" <<'EOF'
import subprocess, sys
binary, order = sys.argv[1:]
names = [l.strip() for l in open(order) if l.strip() and not l.startswith("#")]
nm = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
funcs = {}
for line in nm.splitlines():
    p = line.split()
    if len(p) == 4 and p[2] in "tT":
        funcs[p[3]] = (int(p[0], 16), int(p[1], 16))
found = [funcs[n] for n in names if n in funcs]
# ThinLTO renames the local functions it shares between codegen units to
# name.llvm.<hash of the module>: the module's code and its debug info,
# which holds the build directory. A change to a module's code, or a
# checkout at another path, misses those and links them elsewhere.
base = lambda n: n.split(".llvm.")[0]
bases = {base(n) for n in funcs}
suffix_only = sum(1 for n in names if n not in funcs and base(n) in bases)
total = sum(s for _, s in funcs.values())
size = sum(s for _, s in found)
pieces = {a >> 16 for start, s in found for a in range(start, start + max(s, 1), 4096)}
print(f"symbol order: {len(found)} of {len(names)} listed functions are in {binary} "
      f"({size / 1e6:.2f} MB of {total / 1e6:.1f} MB of code, in {len(pieces)} pieces of 64 KiB = "
      f"{len(pieces) * 64 / 1024:.1f} MiB)")
if suffix_only:
    print(f"  {suffix_only} more differ only in their .llvm.<hash> suffix: their code changed "
          "since the file was made, or this build is at another path (they lie elsewhere: "
          "up to ~1 MB more resident code)")
EOF
  exit 0
fi

command -v valgrind >/dev/null || { echo "needs valgrind (apt install valgrind)" >&2; exit 2; }
. scripts/lsl-netns-lib.sh
lsl_work neuroedge-order

# One daemon under callgrind for $SECS seconds: profile into $1.out.
profile() { # name, then the command prefix (e.g. ip netns exec NS)
  local name=$1; shift
  local d=$WORK/$name
  sed -e 's#^devices_dir = .*#devices_dir = "devices"#' -e 's#"\.\./var/#"var/#' \
    "$ROOT/config/neuroedge.toml" > "$d/neuroedge.toml"
  echo "== $name: the daemon under callgrind for $SECS s (start-up takes a while under valgrind)" >&2
  ( cd "$d" && exec "$@" valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/$name.out" \
      "$BIN" run --config neuroedge.toml ) >"$d/log" 2>&1 &
  local pid=$!
  local t=0
  while [ "$t" -lt "$SECS" ]; do
    sleep 10; t=$((t + 10))
    "$@" "$BIN" status --socket "$d/var/run/neuroedge.sock" >/dev/null 2>&1 || true
    echo "   $t s" >&2
  done
  kill -INT "$pid" 2>/dev/null || true
  # valgrind runs the stop ~50x slower than native
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ -s "$WORK/$name.out" ] || { echo "no profile from the $name run; its log:" >&2; tail -20 "$d/log" >&2; exit 1; }
}

mkdir -p "$WORK/default/devices"
cp "$ROOT"/devices/*.toml "$WORK/default/devices/"
profile default

if [ "$LSL" = 1 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "the LSL run needs root (network namespace); --no-lsl skips it" >&2; exit 2; }
  python3 -c 'import pylsl' 2>/dev/null || { echo "python3 lacks pylsl (pip install pylsl); --no-lsl skips it" >&2; exit 2; }
  lsl_netns
  mkdir -p "$WORK/lsl/devices"
  sed -e 's/^enabled = false/enabled = true/' -e 's/^# name = .*/name = "order"/' \
    "$ROOT/devices/lsl-eeg.toml" > "$WORK/lsl/devices/lsl-eeg.toml"
  ip netns exec "$NS" python3 - <<'EOF' &
import time
import pylsl
info = pylsl.StreamInfo("order", "EEG", 8, 250.0, "float32", "order-src")
outlet = pylsl.StreamOutlet(info)
t0, sent = pylsl.local_clock(), 0
while True:
    time.sleep(0.01)
    due = int((pylsl.local_clock() - t0) * 250)
    if due > sent:
        outlet.push_chunk([[float(c) for c in range(8)]] * (due - sent))
        sent = due
EOF
  PIDS+=($!)
  sleep 2
  profile lsl ip netns exec "$NS"
fi

python3 - "$BIN" "$OUT" "$WORK"/*.out <<'EOF'
import hashlib, re, subprocess, sys
binary, out, profiles = sys.argv[1], sys.argv[2], sys.argv[3:]
cost = {}
for path in profiles:
    names, current = {}, None
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            kind, ident, name = m.groups()
            if name:
                names[ident] = name
            fn = names.get(ident)
            cost.setdefault(fn, 0)
            if kind == "fn":
                current = fn
            continue
        if current and (line[:1].isdigit() or line[:1] in "+-*"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                cost[current] = cost.get(current, 0) + int(parts[1])
nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
funcs = {p[2] for p in (l.split() for l in nm.splitlines()) if len(p) == 3 and p[1] in "tT"}
ran = sorted((n for n in cost if n in funcs), key=lambda n: (-cost[n], n))
version = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
commit = next(l.split(": ", 1)[1] for l in version.splitlines() if l.startswith("commit-hash"))
release = next(l.split(": ", 1)[1] for l in version.splitlines() if l.startswith("release"))
lock = hashlib.sha256(open("Cargo.lock", "rb").read()).hexdigest()
with open(out, "w") as f:
    f.write("# The functions the release daemon ran (scripts/symbol-order.sh), most\n"
            "# instructions first; build.rs gives this file to the linker. Made for:\n"
            f"# rustc: {release}\n# rustc commit: {commit}\n# Cargo.lock sha256: {lock}\n")
    f.write("".join(n + "\n" for n in ran))
print(f"{out}: {len(ran)} functions", file=sys.stderr)
EOF
echo "now rebuild (cargo build --release) and compare: scripts/symbol-order.sh --check" >&2
