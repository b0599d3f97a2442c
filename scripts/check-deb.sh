#!/usr/bin/env bash
# The Debian package, checked: build it (scripts/build-deb.sh) from a
# binary, run lintian (no errors allowed), then in a fresh minimal Debian
# (scripts/chroot-lib.sh; no systemd running there, as in a container):
#
#   dpkg -i          -> user `neuroedge`, key 0600 owned by it, conffiles;
#                       `neuroedge check-config` passes as the user neuroedge
#   edit a conffile, dpkg -i again (upgrade path)
#                    -> the edit and the key are kept (key byte for byte)
#   dpkg -r          -> binary gone; /etc/neuroedge and the journal/key kept
#   dpkg -P          -> /etc/neuroedge, /var/lib/neuroedge and the user gone
#
#   scripts/check-deb.sh [--binary PATH]    (default target/release/neuroedge,
#                                            else target/debug/neuroedge)
# Prints the package's size. Needs root, debootstrap, dpkg-deb, lintian.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BINARY=
[ "${1:-}" = --binary ] && BINARY=$2
if [ -z "$BINARY" ]; then
    BINARY=${CARGO_TARGET_DIR:-$ROOT/target}/release/neuroedge
    [ -x "$BINARY" ] || BINARY=${CARGO_TARGET_DIR:-$ROOT/target}/debug/neuroedge
fi
[ "$(id -u)" -eq 0 ] || { echo "check-deb.sh: needs root" >&2; exit 2; }
source scripts/chroot-lib.sh
R=$(mktemp -d /tmp/neuroedge-deb.XXXXXX)
trap 'chroot_cleanup; rm -rf "$R"' EXIT
fail() { echo "check-deb.sh: $*" >&2; exit 1; }

T0=$SECONDS
DEB=$(scripts/build-deb.sh --binary "$BINARY" --out "$R/out")
echo "== built $(basename "$DEB"): $(du -h "$DEB" | cut -f1) ($(stat -c %s "$DEB") bytes), $(dpkg-deb -f "$DEB" Installed-Size) KiB installed"
dpkg-deb -c "$DEB" | awk '$1 !~ /^d/ {print "   " $1, $3, $6}'

if command -v lintian >/dev/null; then
    echo "== lintian"
    lintian --tag-display-limit 0 "$DEB" > "$R/lintian.txt" 2>&1 || true
    sed 's/^/   /' "$R/lintian.txt"
    if grep -q '^E:' "$R/lintian.txt"; then fail "lintian reports errors"; fi
else
    fail "lintian is missing (scripts/install-test-deps.sh installs it)"
fi

C=$R/root
chroot_fresh "$C"
cp "$DEB" "$C/tmp/neuroedge.deb"
in_c() { chroot "$C" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

echo "== dpkg -i"
in_c dpkg -i /tmp/neuroedge.deb > "$R/dpkg.log" 2>&1 || { cat "$R/dpkg.log" >&2; fail "dpkg -i failed"; }
in_c getent passwd neuroedge >/dev/null || fail "no user neuroedge"
# (owners as the chroot's own passwd names them)
[ "$(in_c stat -c '%U %a' /var/lib/neuroedge/batch.key)" = "neuroedge 600" ] \
    || fail "key not neuroedge 0600: $(in_c stat -c '%U %a' /var/lib/neuroedge/batch.key)"
[ "$(in_c stat -c '%U %a' /var/lib/neuroedge)" = "neuroedge 750" ] || fail "state folder not neuroedge 0750"
grep -qx /etc/neuroedge/neuroedge.toml "$C/var/lib/dpkg/info/neuroedge.conffiles" || fail "config not a conffile"
grep -qx /etc/neuroedge/devices/synthetic.toml "$C/var/lib/dpkg/info/neuroedge.conffiles" || fail "devices not conffiles"
[ -f "$C/usr/lib/systemd/system/neuroedge.service" ] || fail "no unit"
in_c runuser -u neuroedge -- neuroedge check-config --config /etc/neuroedge/neuroedge.toml \
    || fail "check-config as neuroedge failed"
echo "   user, key (0600), conffiles, unit; check-config passes as neuroedge"

echo "== upgrade (dpkg -i again) keeps an edited conffile and the key"
KEY_SUM=$(sha256sum < "$C/var/lib/neuroedge/batch.key")
sed -i 's/^enabled = true/enabled = false/' "$C/etc/neuroedge/devices/synthetic.toml"
echo "# local" >> "$C/etc/neuroedge/neuroedge.toml"
in_c dpkg -i --force-confold /tmp/neuroedge.deb > "$R/dpkg2.log" 2>&1 || { cat "$R/dpkg2.log" >&2; fail "reinstall failed"; }
[ "$(sha256sum < "$C/var/lib/neuroedge/batch.key")" = "$KEY_SUM" ] || fail "the key changed on upgrade"
grep -q '^enabled = false' "$C/etc/neuroedge/devices/synthetic.toml" || fail "conffile edit lost"
tail -1 "$C/etc/neuroedge/neuroedge.toml" | grep -qx '# local' || fail "config edit lost"
echo "   kept"

echo "== dpkg -r (remove keeps config and data)"
in_c dpkg -r neuroedge > "$R/dpkg3.log" 2>&1 || { cat "$R/dpkg3.log" >&2; fail "dpkg -r failed"; }
[ ! -e "$C/usr/bin/neuroedge" ] || fail "binary left after remove"
[ -f "$C/etc/neuroedge/neuroedge.toml" ] || fail "config gone after remove"
[ -f "$C/var/lib/neuroedge/batch.key" ] || fail "key gone after remove"
echo "   binary gone; /etc/neuroedge and /var/lib/neuroedge/batch.key kept"

echo "== dpkg -P (purge)"
in_c dpkg -P neuroedge > "$R/dpkg4.log" 2>&1 || { cat "$R/dpkg4.log" >&2; fail "dpkg -P failed"; }
[ ! -e "$C/etc/neuroedge" ] || fail "/etc/neuroedge left after purge"
[ ! -e "$C/var/lib/neuroedge" ] || fail "/var/lib/neuroedge left after purge"
if in_c getent passwd neuroedge >/dev/null; then fail "user left after purge"; fi
echo "   /etc/neuroedge, /var/lib/neuroedge and the user gone"
echo "check-deb.sh: ok in $((SECONDS - T0)) s; package $(stat -c %s "$DEB") bytes"
