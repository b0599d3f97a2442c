#!/usr/bin/env bash
# Install neuroedge as a system service on Debian, Ubuntu or Raspberry Pi OS
# (x86-64 or aarch64). Idempotent: run it again to upgrade. See
# docs/operations.md.
#
#   sudo ./install.sh                    build, install, start the service
#   sudo ./install.sh --uninstall        remove binary and unit (keeps config and journal)
#   DESTDIR=/tmp/pkg ./install.sh        stage a package image (no users, no systemctl)
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: install.sh [options]

Builds neuroedge (cargo build --release --locked), installs the binary, the
config (/etc/neuroedge), the device catalogue (/etc/neuroedge/devices), the
batch key (/var/lib/neuroedge/batch.key), the system user `neuroedge` and the
systemd unit, then enables and starts the service.

Options:
  --prefix DIR     where the binary goes: DIR/bin/neuroedge (default /usr/local)
  --no-build       do not build; install target/release/neuroedge as it is
  --binary PATH    install this binary (implies --no-build)
  --no-systemd     do not install or enable the systemd unit (containers)
  --uninstall      stop and remove the service, the unit and the binary;
                   keeps /etc/neuroedge and /var/lib/neuroedge (journal, key)
  --purge          with --uninstall: also delete /etc/neuroedge,
                   /var/lib/neuroedge (the journal, unsent data, the key!)
                   and the user neuroedge
  -h, --help       this text

Environment:
  DESTDIR          stage everything under this folder (packaging): no user is
                   created, no key generated, systemctl is not called; the
                   script prints what a package's postinst has to do instead.
  CARGO_TARGET_DIR where cargo builds (default: target/ in this folder)
  CARGO_BUILD_JOBS parallel compile jobs (default: chosen from the RAM size)

Existing config and device files are never overwritten: a newer version is
written next to them as *.dist.
EOF
}

PREFIX=/usr/local
BUILD=1
BINARY=
SYSTEMD=1
UNINSTALL=0
PURGE=0
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a folder" >&2; exit 2; }
                  PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#--prefix=} ;;
        --no-build) BUILD=0 ;;
        --binary) [ $# -ge 2 ] || { echo "install.sh: --binary needs a path" >&2; exit 2; }
                  BINARY=$2; BUILD=0; shift ;;
        --binary=*) BINARY=${1#--binary=}; BUILD=0 ;;
        --no-systemd) SYSTEMD=0 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$PREFIX" in
    /*) PREFIX=${PREFIX%/}; [ -n "$PREFIX" ] || PREFIX=/ ;;
    *) echo "install.sh: --prefix must be an absolute path, not $PREFIX" >&2; exit 2 ;;
esac
if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
    echo "install.sh: --purge only goes with --uninstall" >&2
    exit 2
fi

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
USER_NAME=neuroedge
BIN_DIR=${PREFIX%/}/bin
BIN_PATH=$BIN_DIR/neuroedge
ETC=/etc/neuroedge
STATE=/var/lib/neuroedge
RUNDIR=/run/neuroedge
UNIT_DIR=/etc/systemd/system
UNIT=$UNIT_DIR/neuroedge.service
# Groups that give access to serial adapters and raw USB devices.
DEVICE_GROUPS=(dialout plugdev)

step_no=0
step() { step_no=$((step_no + 1)); printf '\n==> [%d] %s\n' "$step_no" "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '    WARNING: %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# With DESTDIR set we only stage files: commands that would change this
# machine are collected here and printed at the end (a package's postinst).
POSTINST=()
postinst() { POSTINST+=("$*"); }

systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo $0 $*), or set DESTDIR to stage a package image"
fi

# ---------------------------------------------------------------- uninstall
if [ "$UNINSTALL" = 1 ]; then
    step "stopping and removing the service"
    if [ "$SYSTEMD" = 1 ] && systemd_running; then
        systemctl disable --now neuroedge.service 2>/dev/null || true
        info "service stopped and disabled"
    elif [ -n "$DESTDIR" ]; then
        postinst "systemctl disable --now neuroedge.service   # (prerm)"
    fi
    if [ -e "$DESTDIR$UNIT" ]; then
        rm -f "$DESTDIR$UNIT"
        info "removed $DESTDIR$UNIT"
        if systemd_running; then systemctl daemon-reload; fi
    fi
    step "removing the binary"
    if [ -e "$DESTDIR$BIN_PATH" ]; then
        rm -f "$DESTDIR$BIN_PATH"
        info "removed $DESTDIR$BIN_PATH"
    else
        info "$DESTDIR$BIN_PATH is not there"
    fi
    if [ "$PURGE" = 1 ]; then
        step "purging config, journal, key and the user $USER_NAME"
        rm -rf "$DESTDIR$ETC" "$DESTDIR$STATE" "$DESTDIR$RUNDIR"
        info "removed $DESTDIR$ETC $DESTDIR$STATE"
        if [ -z "$DESTDIR" ] && getent passwd "$USER_NAME" >/dev/null; then
            userdel "$USER_NAME" 2>/dev/null || warn "could not remove the user $USER_NAME"
            if getent group "$USER_NAME" >/dev/null; then groupdel "$USER_NAME" 2>/dev/null || true; fi
            info "removed the user $USER_NAME"
        elif [ -n "$DESTDIR" ]; then
            postinst "userdel $USER_NAME   # (postrm purge)"
        fi
    else
        info "kept $ETC (config, devices) and $STATE (journal, batch key);"
        info "remove them with: $0 --uninstall --purge"
    fi
    if [ ${#POSTINST[@]} -gt 0 ]; then
        printf '\nDESTDIR is set: a package would run on the target:\n'
        printf '    %s\n' "${POSTINST[@]}"
    fi
    printf '\nneuroedge uninstalled.\n'
    exit 0
fi

for f in systemd/neuroedge.service config/neuroedge.toml; do
    [ -f "$SRC/$f" ] || die "$SRC/$f is missing: run install.sh from a complete neuroedge checkout"
done

# Commands that build run as the owner of the checkout when we are root
# (sudo ./install.sh), so target/ and ~/.cargo stay theirs.
BUILDER=$(stat -c %U "$SRC")
as_builder() {
    if [ "$(id -u)" -eq 0 ] && [ "$BUILDER" != root ] && [ "$BUILDER" != UNKNOWN ] && command -v runuser >/dev/null; then
        runuser -u "$BUILDER" -- env "PATH=$PATH" "$@"
    else
        "$@"
    fi
}

# ------------------------------------------------------------------- build
if [ "$BUILD" = 1 ]; then
    step "checking build prerequisites"
    # A C compiler for the crates that build C code (SQLite, zstd, ring);
    # curl for rustup. Nothing else: liblsl and BrainFlow load at run time.
    APT_PKGS=(gcc libc6-dev curl ca-certificates)
    if command -v dpkg-query >/dev/null; then
        missing=()
        for p in "${APT_PKGS[@]}"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
        done
        if [ ${#missing[@]} -gt 0 ]; then
            if [ "$(id -u)" -eq 0 ]; then
                info "installing with apt-get: ${missing[*]}"
                DEBIAN_FRONTEND=noninteractive apt-get update -qq
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
            else
                warn "missing packages (not root, not installing): ${missing[*]}"
            fi
        else
            info "present: ${APT_PKGS[*]}"
        fi
    else
        warn "not a Debian-like system: make sure a C compiler (cc) and the C library headers are installed"
    fi

    BUILDER_HOME=$(getent passwd "$BUILDER" | cut -d: -f6 || true)
    [ -n "$BUILDER_HOME" ] || BUILDER_HOME=${HOME:-/root}
    # The builder's own toolchain first (sudo's PATH does not have it).
    if [ -x "$BUILDER_HOME/.cargo/bin/cargo" ]; then
        PATH=$BUILDER_HOME/.cargo/bin:$PATH
    fi
    if ! command -v cargo >/dev/null; then
        info "cargo not found: installing the Rust toolchain with rustup for $BUILDER"
        info "(curl https://sh.rustup.rs | sh -s -- -y --profile minimal; it goes to $BUILDER_HOME/.cargo)"
        as_builder sh -c "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --no-modify-path"
        PATH=$BUILDER_HOME/.cargo/bin:$PATH
    fi
    # Cargo.toml's rust-version.
    need_minor=$(sed -n 's/^rust-version *= *"1\.\([0-9]*\).*/\1/p' "$SRC/Cargo.toml")
    have_minor=$(as_builder rustc --version | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p')
    if [ -n "$need_minor" ] && [ -n "$have_minor" ] && [ "$have_minor" -lt "$need_minor" ]; then
        if command -v rustup >/dev/null; then
            info "rustc 1.$have_minor is older than the 1.$need_minor neuroedge needs: rustup update stable"
            as_builder rustup update stable
        else
            die "rustc 1.$have_minor is older than the 1.$need_minor neuroedge needs; install a newer Rust (https://rustup.rs)"
        fi
    fi
    info "$(as_builder cargo --version)"

    step "building (cargo build --release --locked)"
    if [ -z "${CARGO_BUILD_JOBS:-}" ] && [ -r /proc/meminfo ]; then
        # About 1 GiB per compile job: a 1-2 GiB Raspberry Pi otherwise runs
        # out of memory on the larger crates.
        mem_mib=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
        if [ "$mem_mib" -lt 2500 ]; then export CARGO_BUILD_JOBS=1
        elif [ "$mem_mib" -lt 5000 ]; then export CARGO_BUILD_JOBS=2
        fi
        if [ -n "${CARGO_BUILD_JOBS:-}" ]; then
            info "$mem_mib MiB of RAM: building with $CARGO_BUILD_JOBS job(s) (set CARGO_BUILD_JOBS to change)"
        fi
    fi
    info "this takes a while the first time (minutes on a PC, up to an hour on a Raspberry Pi)"
    (cd "$SRC" && as_builder cargo build --release --locked)
fi

if [ -z "$BINARY" ]; then
    BINARY=${CARGO_TARGET_DIR:-$SRC/target}/release/neuroedge
fi
[ -x "$BINARY" ] || die "$BINARY does not exist: build it first (cargo build --release --locked) or drop --no-build"
"$BINARY" version >/dev/null || die "$BINARY does not run on this machine"

# --------------------------------------------------------------- install
step "installing the binary to $DESTDIR$BIN_PATH"
install -d -m 0755 "$DESTDIR$BIN_DIR"
# install(1) replaces the file (new inode), so a running daemon is unaffected
# until it restarts.
install -m 0755 "$BINARY" "$DESTDIR$BIN_PATH"
info "$("$DESTDIR$BIN_PATH" version)"
NE=$DESTDIR$BIN_PATH

step "system user $USER_NAME"
if [ -n "$DESTDIR" ]; then
    info "DESTDIR set: not creating users (see the postinst list at the end)"
    postinst "useradd --system --user-group --home-dir $STATE --no-create-home --shell /usr/sbin/nologin $USER_NAME   # unless it exists"
    postinst "usermod -a -G $(IFS=,; echo "${DEVICE_GROUPS[*]}") $USER_NAME   # serial and USB devices"
else
    if getent passwd "$USER_NAME" >/dev/null; then
        info "user $USER_NAME exists"
    else
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell "$nologin" --comment "neuroedge EEG acquisition daemon" "$USER_NAME"
        info "created the system user $USER_NAME (no login shell, home $STATE)"
    fi
    for g in "${DEVICE_GROUPS[@]}"; do
        if getent group "$g" >/dev/null; then
            if id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx "$g"; then
                info "$USER_NAME is in group $g"
            else
                usermod -a -G "$g" "$USER_NAME"
                info "added $USER_NAME to group $g"
            fi
        fi
    done
fi

# Install $2 as $1 unless a (possibly edited) file is already there: then
# the new version goes next to it as $1.dist.
install_config_file() {
    local dest=$1 src=$2 mode=$3
    if [ ! -e "$dest" ]; then
        install -m "$mode" "$src" "$dest"
        info "installed $dest"
    elif cmp -s "$src" "$dest"; then
        info "$dest is up to date"
        rm -f "$dest.dist"
    elif [ -e "$dest.dist" ] && cmp -s "$src" "$dest.dist"; then
        info "kept your $dest (the new version is in $dest.dist)"
    else
        install -m "$mode" "$src" "$dest.dist"
        info "kept your $dest; the new version is $dest.dist: compare and merge by hand"
    fi
}

step "configuration in $DESTDIR$ETC"
install -d -m 0755 "$DESTDIR$ETC" "$DESTDIR$ETC/devices"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# The checkout's config, moved to the installed layout. Each replacement
# must hit exactly one line; a mismatch means config/neuroedge.toml changed
# shape and this script needs updating.
adapt() {
    local key=$1 from=$2 to=$3 file=$4
    local n
    n=$(grep -c "^$key = \"$from\"\$" "$file" || true)
    [ "$n" = 1 ] || die "config/neuroedge.toml: expected one line '$key = \"$from\"' (found $n): update install.sh"
    sed -i "s|^$key = \"$from\"\$|$key = \"$to\"|" "$file"
}
cp "$SRC/config/neuroedge.toml" "$TMP/neuroedge.toml"
adapt devices_dir ../devices "$ETC/devices" "$TMP/neuroedge.toml"
adapt path ../var/journal.db "$STATE/journal.db" "$TMP/neuroedge.toml"
adapt key_file ../var/batch.key "$STATE/batch.key" "$TMP/neuroedge.toml"
adapt socket ../var/run/neuroedge.sock "$RUNDIR/neuroedge.sock" "$TMP/neuroedge.toml"
# install.sh makes the key; a key that disappears later must stop the
# daemon rather than be replaced silently (old batches need the old key).
n=$(grep -c '^generate_if_missing = true$' "$TMP/neuroedge.toml" || true)
[ "$n" = 1 ] || die "config/neuroedge.toml: expected one line 'generate_if_missing = true': update install.sh"
sed -i 's|^generate_if_missing = true$|generate_if_missing = false|' "$TMP/neuroedge.toml"
sed -i '1a #\n# Installed by install.sh: journal and key in /var/lib/neuroedge, socket in\n# /run/neuroedge, device files in /etc/neuroedge/devices.' "$TMP/neuroedge.toml"
install_config_file "$DESTDIR$ETC/neuroedge.toml" "$TMP/neuroedge.toml" 0644
shopt -s nullglob
for f in "$SRC"/devices/*.toml; do
    install_config_file "$DESTDIR$ETC/devices/$(basename "$f")" "$f" 0644
done
shopt -u nullglob

step "state folder $DESTDIR$STATE and batch key"
install -d -m 0750 "$DESTDIR$STATE"
KEY=$STATE/batch.key
if [ -n "$DESTDIR" ]; then
    # A key in a package image would be shared by every machine that
    # installs it: each machine makes its own.
    info "DESTDIR set: not generating a batch key (each machine needs its own)"
    postinst "chown $USER_NAME:$USER_NAME $STATE && chmod 0750 $STATE"
    postinst "[ -e $KEY ] || $BIN_PATH keygen --out $KEY"
    postinst "chown $USER_NAME:$USER_NAME $KEY && chmod 0600 $KEY"
else
    chown "$USER_NAME:$USER_NAME" "$STATE"
    chmod 0750 "$STATE"
    if [ -e "$KEY" ]; then
        info "$KEY exists (kept)"
    else
        "$NE" keygen --out "$KEY"
        info "back the key up somewhere safe: batches cannot be read without it"
    fi
    chown "$USER_NAME:$USER_NAME" "$KEY"
    chmod 0600 "$KEY"
fi

# ----------------------------------------------------------------- check
step "checking the installed configuration"
# The service does not see this shell's NEUROEDGE_* overrides; neither
# does the check (an unknown one would be an error).
while read -r v; do unset "$v"; done < <(compgen -e | grep '^NEUROEDGE_' || true)
if [ -z "$DESTDIR" ]; then
    # As the daemon's user: proves it can read the config, devices and
    # key. Before the service is (re)started: a config the new binary
    # refuses must not take the running service down.
    check_cmd=("$NE" check-config --config "$ETC/neuroedge.toml")
    if command -v runuser >/dev/null; then
        check_cmd=(runuser -u "$USER_NAME" -- "${check_cmd[@]}")
    fi
    if ! "${check_cmd[@]}"; then
        die "check-config fails with the new binary: the service was not (re)started (a running one keeps the previous version until restarted); fix $ETC, then run install.sh again or systemctl restart neuroedge"
    fi
else
    # The config's absolute paths point at the target machine; check the
    # staged files by pointing the path keys into DESTDIR.
    NEUROEDGE_DAEMON_DEVICES_DIR="$DESTDIR$ETC/devices" \
    NEUROEDGE_CRYPTO_KEY_FILE="$TMP/absent.key" \
    NEUROEDGE_CRYPTO_GENERATE_IF_MISSING=true \
        "$NE" check-config --config "$DESTDIR$ETC/neuroedge.toml"
    info "(checked with devices_dir pointed into DESTDIR; the key is made on the target)"
fi


# --------------------------------------------------------------- systemd
# Without systemd's RuntimeDirectory= the socket's folder is ours to make.
make_rundir() {
    install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$RUNDIR"
    info "created $RUNDIR for the status socket (it is gone after a reboot: recreate it"
    info "before starting, e.g. in a container's entrypoint)"
    info "run the daemon as: runuser -u $USER_NAME -- $BIN_PATH run --config $ETC/neuroedge.toml"
}

if [ "$SYSTEMD" = 1 ]; then
    step "systemd unit $DESTDIR$UNIT"
    install -d -m 0755 "$DESTDIR$UNIT_DIR"
    n=$(grep -c '^ExecStart=/usr/local/bin/neuroedge ' "$SRC/systemd/neuroedge.service" || true)
    [ "$n" = 1 ] || die "systemd/neuroedge.service: expected one 'ExecStart=/usr/local/bin/neuroedge' line: update install.sh"
    sed "s|^ExecStart=/usr/local/bin/neuroedge |ExecStart=$BIN_PATH |" \
        "$SRC/systemd/neuroedge.service" > "$TMP/neuroedge.service"
    # The unit is ours (local changes belong in drop-ins): always replaced.
    install -m 0644 "$TMP/neuroedge.service" "$DESTDIR$UNIT"
    info "ExecStart=$BIN_PATH run --config $ETC/neuroedge.toml"
    if systemd_running; then
        was_active=0
        systemctl is-active --quiet neuroedge.service && was_active=1
        systemctl daemon-reload
        systemctl enable --now neuroedge.service
        if [ "$was_active" = 1 ]; then
            systemctl restart neuroedge.service
            info "restarted neuroedge (upgrade)"
        fi
        info "enabled and started: $(systemctl is-active neuroedge.service || true)"
    elif [ -n "$DESTDIR" ]; then
        postinst "systemctl daemon-reload && systemctl enable --now neuroedge.service"
    else
        info "systemd is not running here (/run/systemd/system is missing): not enabling the unit"
        make_rundir
    fi
else
    step "no systemd unit (--no-systemd)"
    if [ -z "$DESTDIR" ]; then
        make_rundir
    else
        postinst "install -d -m 0750 -o $USER_NAME -g $USER_NAME $RUNDIR   # at every boot (no systemd RuntimeDirectory=)"
    fi
fi

case "$(uname -m)" in
    aarch64|arm64|armv7l|armv6l)
        printf '\nARM: BrainFlow devices need a libBoardController.so built for ARM (the PyPI\n'
        printf 'wheel only ships x86-64); see docs/operations.md, "Raspberry Pi".\n' ;;
esac

if [ ${#POSTINST[@]} -gt 0 ]; then
    printf '\nDESTDIR is set: staged under %s. On the target, a package postinst would run:\n' "$DESTDIR"
    printf '    %s\n' "${POSTINST[@]}"
fi
printf '\nneuroedge installed. Status: sudo %s status (or add yourself to the group %s)\n' "$BIN_PATH" "$USER_NAME"
printf 'Devices: edit %s/devices/*.toml (enabled = true), then: systemctl reload neuroedge\n' "$ETC"
printf 'Logs: journalctl -u neuroedge -f\n'
