#!/usr/bin/env bash
# Install what the build and the test suite need that a fresh machine
# lacks. Idempotent; quiet when everything is there.
set -euo pipefail

# Build prerequisites (Debian): only a C compiler (SQLite, zstd and ring
# compile C code; liblsl and BrainFlow are loaded at run time, serial ports
# need no libudev). For the tests: util-linux `mount` for the full-disk
# test on a tmpfs, iproute2 `ip` for the LSL tests' network namespace,
# systemd for `systemd-analyze` (unit checks), sqlite3 for a test's look at
# the audit table, faketime (libfaketime) to step the daemon's wall clock
# in the clock-step test, debootstrap for the fresh-machine and package
# checks' chroot (scripts/check-fresh.sh, scripts/check-deb.sh), lintian
# for the package (about 1 min and 60 MB of packages on a fresh machine),
# tmux to drive `neuroedge scope` in a real terminal (under 1 MB, a second),
# strace to inject I/O faults into the journal's syscalls (tests/it/faults.rs).
need_apt=()
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
command -v mount >/dev/null || need_apt+=(mount)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || need_apt+=(faketime)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v lintian >/dev/null || need_apt+=(lintian)
command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
command -v tmux >/dev/null || need_apt+=(tmux)
command -v strace >/dev/null || need_apt+=(strace)
command -v fincore >/dev/null || need_apt+=(util-linux-extra)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Python peers of the tests: the batch decoder (cbor2, zstandard,
# cryptography), the SciPy reference of the DSP checks (numpy, scipy), the
# Prometheus text parser (prometheus-client), BrainFlow's library with its
# synthetic board (brainflow) and a real LSL outlet (pylsl, which bundles
# liblsl, which the daemon loads in the LSL tests too); the readers the export
# tests check our files with: pyxdf (XDF),
# pyedflib (EDF+/BDF+, edflib), mne and mne-bids, and the BIDS validator
# (bids-validator-deno: the maintained schema validator, shipped on PyPI as
# JavaScript run by the `deno` wheel; about 100 MB on disk, 10 s to
# install, runs offline; the legacy npm `bids-validator` 1.x pulls ~700 MB of unused
# dependencies and takes minutes); for the S3 sink, moto's S3 server
# (moto[server]: a local S3 API) and boto3 (the backend's reader).
PY=${NEUROEDGE_TEST_PYTHON:-python3}
need_py=()
for spec in cbor2:cbor2 zstandard:zstandard cryptography:cryptography numpy:numpy \
            scipy:scipy prometheus_client:prometheus-client brainflow:brainflow pylsl:pylsl \
            pyxdf:pyxdf pyedflib:pyedflib mne:mne mne_bids:mne-bids \
            bids_validator_deno:bids-validator-deno boto3:boto3 moto.server:moto[server]; do
  mod=${spec%%:*}
  pkg=${spec#*:}
  "$PY" -c "import $mod" 2>/dev/null || need_py+=("$pkg")
done
if [ ${#need_py[@]} -gt 0 ]; then
  echo "installing Python packages: ${need_py[*]}"
  "$PY" -m pip install --quiet --disable-pip-version-check "${need_py[@]}"
fi
