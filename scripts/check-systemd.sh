#!/usr/bin/env bash
# Stage an install (install.sh into a temporary DESTDIR), then check the
# installed systemd unit:
#   - `systemd-analyze verify` prints nothing (no warning, no error);
#   - `systemd-analyze security --offline=true` rates its exposure at most
#     CHECK_SYSTEMD_MAX_EXPOSURE (default 2.0; 0 = locked down, 10 = unprotected).
# Exit 0 when both hold, 1 otherwise.
#
# The binary: $CHECK_SYSTEMD_BIN if set (CI passes target/debug/neuroedge from
# `cargo test`), else an existing target/release or target/debug build
# (under $CARGO_TARGET_DIR when set), else `cargo build --locked` (debug).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=${CHECK_SYSTEMD_MAX_EXPOSURE:-2.0}

if ! command -v systemd-analyze >/dev/null; then
    echo "== systemd-analyze missing: installing the systemd package"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "check-systemd: need systemd-analyze (Debian/Ubuntu: apt-get install systemd)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

target=${CARGO_TARGET_DIR:-target}
BIN=${CHECK_SYSTEMD_BIN:-}
if [ -z "$BIN" ]; then
    for candidate in "$target/release/neuroedge" "$target/debug/neuroedge"; do
        if [ -x "$candidate" ]; then BIN=$candidate; break; fi
    done
fi
if [ -z "$BIN" ]; then
    echo "== no neuroedge binary yet: cargo build --locked"
    cargo build --locked --bin neuroedge
    BIN=$target/debug/neuroedge
fi
[ -x "$BIN" ] || { echo "check-systemd: $BIN is not an executable" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

echo "== install.sh into a temporary DESTDIR (binary: $BIN)"
if ! DESTDIR="$STAGE/root" ./install.sh --binary "$BIN" >"$STAGE/install.log" 2>&1; then
    cat "$STAGE/install.log"
    echo "check-systemd: FAIL: install.sh failed" >&2
    exit 1
fi
UNIT=$STAGE/root/etc/systemd/system/neuroedge.service
[ -f "$UNIT" ] || { cat "$STAGE/install.log"; echo "check-systemd: FAIL: install.sh did not install $UNIT" >&2; exit 1; }
exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$UNIT")
[ -x "$STAGE/root$exec_start" ] || { echo "check-systemd: FAIL: ExecStart=$exec_start is not in the staged install" >&2; exit 1; }

status=0

echo "== systemd-analyze verify"
# verify resolves ExecStart on this machine: check a copy of the installed
# unit (same name, every other line unchanged) whose ExecStart points at
# the staged binary.
mkdir -p "$STAGE/verify"
sed "s|^ExecStart=$exec_start |ExecStart=$STAGE/root$exec_start |" "$UNIT" >"$STAGE/verify/neuroedge.service"
set +e
verify_out=$(cd "$STAGE/verify" && systemd-analyze verify "$STAGE/verify/neuroedge.service" 2>&1)
verify_rc=$?
set -e
if [ "$verify_rc" -ne 0 ] || [ -n "$verify_out" ]; then
    printf '%s\n' "$verify_out"
    echo "check-systemd: FAIL: systemd-analyze verify (exit $verify_rc) is not silent" >&2
    status=1
else
    echo "verify: clean"
fi

echo "== systemd-analyze security --offline=true"
set +e
security_out=$(cd "$STAGE" && systemd-analyze security --offline=true --no-pager "$UNIT" 2>&1)
set -e
exposure=$(printf '%s\n' "$security_out" | sed -n 's/.*Overall exposure level for neuroedge\.service: \([0-9][0-9.]*\).*/\1/p' | head -n1)
if [ -z "$exposure" ]; then
    printf '%s\n' "$security_out"
    echo "check-systemd: FAIL: no 'Overall exposure level' in the output" >&2
    exit 1
fi
printf '%s\n' "$security_out" | grep -E '^✗' || true
echo "exposure: $exposure (limit $MAX_EXPOSURE)"
if awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e > m) }'; then
    echo "check-systemd: FAIL: exposure $exposure is above $MAX_EXPOSURE" >&2
    status=1
fi

[ "$status" -eq 0 ] && echo "check-systemd: ok (exposure $exposure)"
exit "$status"
