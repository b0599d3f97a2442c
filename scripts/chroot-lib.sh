# Sourced by scripts/check-fresh.sh and scripts/check-deb.sh: a minimal
# Debian of this machine's release (debootstrap --variant=minbase plus gcc,
# libc6-dev, ca-certificates: what a fresh machine with "Rust and a C
# compiler" has), made once and cached as a tarball, unpacked fresh for
# each check. Needs root and debootstrap (scripts/install-test-deps.sh).

CHROOT_CACHE=${NEUROEDGE_CHROOT_CACHE:-/var/cache/neuroedge-ci}
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
MIRROR=${NEUROEDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_TAR=$CHROOT_CACHE/$SUITE-minbase-gcc.tar
CHROOT_MOUNTS=()

# The cached base system (debootstrap on first use; ~2-4 minutes).
chroot_base() {
    if [ -s "$ROOTFS_TAR" ]; then return 0; fi
    command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; return 1; }
    mkdir -p "$CHROOT_CACHE"
    local tmp=$CHROOT_CACHE/build.$$
    rm -rf "$tmp"
    echo "== debootstrap $SUITE (minbase + gcc libc6-dev ca-certificates) from $MIRROR"
    local t0=$SECONDS
    debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
        "$SUITE" "$tmp" "$MIRROR" > "$CHROOT_CACHE/debootstrap.log" 2>&1 || {
        tail -20 "$CHROOT_CACHE/debootstrap.log" >&2; rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
    tar -C "$tmp" -cf "$ROOTFS_TAR.part" . && mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    rm -rf "$tmp"
    echo "   debootstrap took $((SECONDS - t0)) s ($(du -h "$ROOTFS_TAR" | cut -f1) cached in $ROOTFS_TAR)"
}

# Unpack a fresh copy of the base system at $1, with /proc, /dev, /sys
# and the host's DNS.
chroot_fresh() {
    local root=$1
    chroot_base
    rm -rf "$root"; mkdir -p "$root"
    tar -C "$root" -xf "$ROOTFS_TAR"
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    mount -t proc proc "$root/proc"; CHROOT_MOUNTS+=("$root/proc")
    mount --rbind /dev "$root/dev"; mount --make-rslave "$root/dev"; CHROOT_MOUNTS+=("$root/dev")
    mount --rbind /sys "$root/sys"; mount --make-rslave "$root/sys"; CHROOT_MOUNTS+=("$root/sys")
}

# Bind-mount host folder $1 at the same path inside chroot $2 (ro with $3=ro).
chroot_bind() {
    local src=$1 root=$2 mode=${3:-rw}
    mkdir -p "$root$src"
    mount --bind "$src" "$root$src"
    CHROOT_MOUNTS+=("$root$src")
    if [ "$mode" = ro ]; then mount -o remount,bind,ro "$root$src"; fi
}

# Undo every mount (newest first).
chroot_cleanup() {
    local i
    for ((i = ${#CHROOT_MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -R -l "${CHROOT_MOUNTS[$i]}" 2>/dev/null || true
    done
    CHROOT_MOUNTS=()
}
