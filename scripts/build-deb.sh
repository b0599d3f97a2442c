#!/usr/bin/env bash
# Build neuroedge_<version>_<arch>.deb with dpkg-deb over install.sh's
# DESTDIR staging (the same files install.sh installs, under /usr):
#
#   /usr/bin/neuroedge, /usr/lib/systemd/system/neuroedge.service,
#   /etc/neuroedge/neuroedge.toml and /etc/neuroedge/devices/*.toml
#   (conffiles: dpkg keeps local edits and asks on upgrade),
#   /usr/share/doc/neuroedge/{copyright,changelog.gz}.
#
# Maintainer scripts (written below): postinst creates the user and the
# batch key (never overwriting one), enables and starts the unit when
# systemd runs, and on upgrade restarts the service only after
# `neuroedge check-config` passes with the new binary; prerm stops the
# service on removal (not on upgrade); postrm purge deletes the journal,
# the key, /etc/neuroedge and the user (remove keeps them).
#
#   scripts/build-deb.sh [--binary PATH] [--arch ARCH] [--out DIR]
#
# --binary defaults to target/release/neuroedge (built elsewhere is fine:
# portable binaries, see docs/operations.md); --arch defaults to dpkg's.
# DEB_MAINTAINER sets the Maintainer field. Needs dpkg-deb, strip (and
# fakeroot when not root). Prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BINARY=${CARGO_TARGET_DIR:-$ROOT/target}/release/neuroedge
ARCH=$(dpkg --print-architecture)
OUT=$ROOT/target/deb
while [ $# -gt 0 ]; do
  case $1 in
    --binary) BINARY=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n 2,22p "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$BINARY" ] || { echo "build-deb.sh: no binary at $BINARY (cargo build --release --locked, or --binary)" >&2; exit 2; }
# Who the package names as its maintainer (Debian wants a real address).
MAINTAINER=${DEB_MAINTAINER:-neuroedge maintainers <maintainers@neuroedge.example.org>}
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$VERSION" ] || { echo "build-deb.sh: no version in Cargo.toml" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PKG=$WORK/pkg
# install.sh stages the files (and checks the staged config with the binary).
DESTDIR=$PKG ./install.sh --prefix /usr --binary "$BINARY" > "$WORK/install.log" 2>&1 || {
  cat "$WORK/install.log" >&2; exit 1; }

# Debian's places: packaged units under /usr/lib/systemd/system (the
# admin's /etc/systemd/system stays theirs); the state folder is made by
# postinst with its owner, not shipped.
install -d "$PKG/usr/lib/systemd/system"
mv "$PKG/etc/systemd/system/neuroedge.service" "$PKG/usr/lib/systemd/system/"
rmdir -p "$PKG/etc/systemd/system" 2>/dev/null || true
rm -rf "$PKG/var"
# Debug info stays out of the package (it is 3/4 of the binary).
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$PKG/usr/bin/neuroedge"

DOC=$PKG/usr/share/doc/neuroedge
install -d -m 0755 "$DOC"
cat > "$DOC/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: neuroedge
Source: the neuroedge repository

Files: *
Copyright: 2025-2026 the neuroedge authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
{
  echo "neuroedge ($VERSION) unstable; urgency=medium"
  echo
  echo "  * Release $VERSION (see the repository's history)."
  echo
  echo " -- $MAINTAINER  $(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")"
} | gzip -9n > "$DOC/changelog.gz"

install -d -m 0755 "$PKG/DEBIAN"
( cd "$PKG" && find etc -type f | sort | sed 's|^|/|' ) > "$PKG/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
cat > "$PKG/DEBIAN/control" <<EOF
Package: neuroedge
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $SIZE
Depends: libc6 (>= 2.34), libgcc-s1, passwd
Suggests: python3-pip
Section: science
Priority: optional
Homepage: https://github.com/neuroedge/neuroedge
Description: acquisition daemon for EEG / brain-computer-interface hardware
 neuroedge reads EEG devices (synthetic, OpenBCI Cyton, ASCII serial, any
 BrainFlow board, any Lab Streaming Layer stream), filters them, seals
 one-second batches with AES-256-GCM into a local SQLite journal and uploads
 them over HTTPS; status socket, Prometheus metrics, systemd service.
 .
 BrainFlow and LSL devices load their vendor libraries at run time
 (pip install brainflow / pylsl for the user neuroedge).
EOF

cat > "$PKG/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
NE=/usr/bin/neuroedge
STATE=/var/lib/neuroedge
KEY=$STATE/batch.key
CONFIG=/etc/neuroedge/neuroedge.toml
if [ "$1" = configure ]; then
    if ! getent passwd neuroedge >/dev/null; then
        useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "neuroedge EEG acquisition daemon" neuroedge
    fi
    for g in dialout plugdev; do
        if getent group "$g" >/dev/null; then usermod -a -G "$g" neuroedge; fi
    done
    install -d -m 0750 -o neuroedge -g neuroedge "$STATE"
    # Each machine its own key, made once and never replaced: batches
    # sealed with it cannot be read without it.
    if [ ! -e "$KEY" ]; then
        "$NE" keygen --out "$KEY"
        echo "neuroedge: made the batch key $KEY: back it up" >&2
    fi
    chown neuroedge:neuroedge "$KEY"
    chmod 0600 "$KEY"
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        # The new binary must accept the config (as the service's user)
        # before the service is (re)started with it.
        if runuser -u neuroedge -- "$NE" check-config --config "$CONFIG" >/dev/null 2>&1; then
            systemctl enable neuroedge.service || true
            if [ -n "$2" ]; then
                systemctl try-restart neuroedge.service || true
            fi
            systemctl start neuroedge.service || true
        else
            echo "neuroedge: 'neuroedge check-config' fails with the new version:" >&2
            runuser -u neuroedge -- "$NE" check-config --config "$CONFIG" >&2 || true
            echo "neuroedge: the service was not (re)started; fix the config, then: systemctl restart neuroedge" >&2
        fi
    fi
fi
exit 0
EOF

cat > "$PKG/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
# On upgrade the running service is left alone: the new postinst restarts
# it once the new binary has checked the config.
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now neuroedge.service || true
fi
exit 0
EOF

cat > "$PKG/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
# Remove keeps the config, the journal and the key; purge deletes them
# (the journal may hold batches not yet uploaded) and the user.
if [ "$1" = purge ]; then
    rm -rf /var/lib/neuroedge /run/neuroedge /etc/neuroedge
    if getent passwd neuroedge >/dev/null; then
        userdel neuroedge || true
    fi
    if getent group neuroedge >/dev/null; then
        groupdel neuroedge || true
    fi
fi
exit 0
EOF
chmod 0755 "$PKG/DEBIAN/postinst" "$PKG/DEBIAN/prerm" "$PKG/DEBIAN/postrm"

mkdir -p "$OUT"
DEB=$OUT/neuroedge_${VERSION}_${ARCH}.deb
FAKEROOT=""
[ "$(id -u)" -eq 0 ] || FAKEROOT=fakeroot
$FAKEROOT dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >/dev/null
echo "$DEB"
