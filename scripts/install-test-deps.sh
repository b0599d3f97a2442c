#!/usr/bin/env bash
# Install what the test suite needs that a fresh machine lacks. Idempotent.
set -euo pipefail

# Python peers of the tests: the batch decoder (cbor2, zstandard,
# cryptography) and the SciPy reference of the DSP checks (numpy, scipy).
PY=${NEUROEDGE_TEST_PYTHON:-python3}
need_py=()
for mod in cbor2 zstandard cryptography numpy scipy; do
  "$PY" -c "import $mod" 2>/dev/null || need_py+=("$mod")
done
if [ ${#need_py[@]} -gt 0 ]; then
  echo "installing Python packages: ${need_py[*]}"
  "$PY" -m pip install --quiet --disable-pip-version-check "${need_py[@]}"
fi

# mount (util-linux) for the full-disk test on a tmpfs.
if ! command -v mount >/dev/null; then
  apt-get update -qq && apt-get install -y -qq mount
fi
