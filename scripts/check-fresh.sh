#!/usr/bin/env bash
# Fresh-machine check: in a minimal Debian of this machine's release
# (debootstrap minbase + gcc + libc6-dev; no pkg-config, libudev, cmake,
# Python), with only this machine's Rust toolchain bind-mounted read-only,
# build neuroedge, run the daemon on its defaults for a few seconds and
# check that `neuroedge status` shows it streaming.
#
#   scripts/check-fresh.sh            the README's command as written:
#                                     `cargo run --release -- run --config
#                                     config/neuroedge.toml` on a copy of the
#                                     checkout (HEAD), from nothing (15-20 min
#                                     on 2 cores); crates come from the host's
#                                     cargo registry (bind-mounted), not the net
#   scripts/check-fresh.sh --ci       lean, for .ci/run: the checkout and its
#                                     target/ bind-mounted at their own path
#                                     (`cargo build` of CI's debug profile is
#                                     fresh but for the crates that compile C
#                                     or assembly, which are cleaned first:
#                                     SQLite, zstd, ring), then the daemon
#
# Prints the time of each phase. Needs root and debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=full
[ "${1:-}" = --ci ] && MODE=ci
[ "$(id -u)" -eq 0 ] || { echo "check-fresh.sh: needs root (chroot, mounts)" >&2; exit 2; }
source scripts/chroot-lib.sh

SYSROOT=$(rustc --print sysroot)
CARGO_HOME_HOST=${CARGO_HOME:-$HOME/.cargo}
R=$(mktemp -d /tmp/neuroedge-fresh.XXXXXX)
DAEMON_PID=
cleanup() {
    if [ -n "$DAEMON_PID" ]; then kill -TERM "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; fi
    chroot_cleanup
    rm -rf "$R"
}
trap cleanup EXIT

T0=$SECONDS
chroot_base
T_BASE=$((SECONDS - T0))
t=$SECONDS
chroot_fresh "$R/root"
echo "== fresh system unpacked in $((SECONDS - t)) s: $(chroot "$R/root" gcc --version | head -1)"
for tool in pkg-config cmake python3; do
    if chroot "$R/root" sh -c "command -v $tool" >/dev/null 2>&1; then
        echo "check-fresh.sh: $tool is in the fresh system; it should not be" >&2; exit 1
    fi
done
[ ! -e "$R/root/usr/include/libudev.h" ] || { echo "libudev headers in the fresh system" >&2; exit 1; }
# The toolchain, read-only, at its own path; the host's crate registry.
chroot_bind "$SYSROOT" "$R/root" ro
mkdir -p "$R/root/root/.cargo/registry"
if [ -d "$CARGO_HOME_HOST/registry" ]; then
    mount --bind "$CARGO_HOME_HOST/registry" "$R/root/root/.cargo/registry"
    CHROOT_MOUNTS+=("$R/root/root/.cargo/registry")
fi
ENV=(env -i HOME=/root PATH="$SYSROOT/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" CARGO_HOME=/root/.cargo
     RUSTUP_TOOLCHAIN= CARGO_TERM_COLOR=never LANG=C.UTF-8)

if [ "$MODE" = full ]; then
    SRC=/src
    mkdir -p "$R/root$SRC"
    git archive HEAD | tar -x -C "$R/root$SRC"
    BUILD=(cargo build --release --locked --bin neuroedge)
    BIN=$SRC/target/release/neuroedge
else
    SRC=$ROOT
    chroot_bind "$ROOT" "$R/root"
    # Fresh compiles of the crates with native code (their build scripts
    # run the fresh system's gcc); the rest is CI's own build.
    "${ENV[@]}" chroot "$R/root" sh -c "cd $SRC && cargo clean -p libsqlite3-sys -p zstd-sys -p ring --quiet" || true
    BUILD=(cargo build --locked --bin neuroedge)
    BIN=$SRC/target/debug/neuroedge
fi

t=$SECONDS
echo "== ${BUILD[*]} (in the fresh system, $MODE mode)"
"${ENV[@]}" chroot "$R/root" sh -c "cd $SRC && ${BUILD[*]}" > "$R/build.log" 2>&1 || {
    tail -40 "$R/build.log" >&2; echo "check-fresh.sh: the build failed in the fresh system" >&2; exit 1; }
T_BUILD=$((SECONDS - t))
echo "   built in $T_BUILD s"

# The README's command runs the daemon on config/neuroedge.toml.
t=$SECONDS
VAR=$(mktemp -d "$R/root/tmp/var.XXXXXX"); VAR=${VAR#"$R/root"}
sed -e "s#\.\./var/#$VAR/#" -e "s#^devices_dir = .*#devices_dir = \"$SRC/devices\"#" \
    "$ROOT/config/neuroedge.toml" > "$R/root$VAR/neuroedge.toml"
if [ "$MODE" = full ]; then
    RUNCMD="cd $SRC && exec cargo run --release --locked -- run --config $VAR/neuroedge.toml"
else
    RUNCMD="exec $BIN run --config $VAR/neuroedge.toml"
fi
"${ENV[@]}" chroot "$R/root" sh -c "$RUNCMD" > "$R/daemon.log" 2>&1 &
DAEMON_PID=$!
ok=0
for _ in $(seq 1 60); do
    sleep 0.5
    if st=$("${ENV[@]}" chroot "$R/root" "$BIN" status --socket "$VAR/run/neuroedge.sock" --json 2>/dev/null); then
        # Parsed on the host (the fresh system has no Python): the
        # default synthetic device streams and has samples (the example
        # devices of devices/ are disabled and stay at 0).
        if echo "$st" | python3 -c 'import json,sys; d=json.load(sys.stdin)["devices"]; sys.exit(0 if any(x["state"]=="streaming" and x["samples_total"]>0 for x in d) else 1)'; then
            ok=1; break
        fi
    fi
done
sleep 2
"${ENV[@]}" chroot "$R/root" "$BIN" status --socket "$VAR/run/neuroedge.sock" || true
kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true; DAEMON_PID=
if [ "$ok" != 1 ]; then
    tail -30 "$R/daemon.log" >&2
    echo "check-fresh.sh: the daemon did not stream in the fresh system" >&2
    exit 1
fi
grep -q "stopped cleanly" "$R/daemon.log" || { tail -20 "$R/daemon.log" >&2; echo "check-fresh.sh: no clean stop" >&2; exit 1; }
echo "== fresh system: streaming, stopped cleanly (run phase $((SECONDS - t)) s)"
echo "check-fresh.sh: ok ($MODE mode): base system $T_BASE s (0 when cached), build $T_BUILD s, total $((SECONDS - T0)) s"
