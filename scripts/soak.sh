#!/usr/bin/env bash
# Soak test (not in CI): 30 min of the real daemon with 4 devices, a flaky
# HTTPS backend, reloads and 20 status clients; then the books are checked.
# Arguments go to scripts/soak.py (--bin, --minutes, --json); see its --help.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${NEUROEDGE_TEST_PYTHON:-python3}" scripts/soak.py "$@"
