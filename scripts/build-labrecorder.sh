#!/usr/bin/env bash
# Build LabRecorderCLI and the liblsl it links from their public sources,
# for a same-run comparison with neuroedge (scripts/bench_lsl_record.sh
# --labrecorder OUT/install/bin/LabRecorderCLI; docs/performance.md,
# "Recording LSL").
#
# Nothing is downloaded while building. SRC must hold three checkouts:
#
#   SRC/liblsl           https://github.com/sccn/liblsl                 v1.17.7 (64988c6a14b8)
#   SRC/App-LabRecorder  https://github.com/labstreaminglayer/App-LabRecorder  8419550553e4 (1.17.0)
#   SRC/pugixml          https://github.com/zeux/pugixml                v1.15 (liblsl's FetchContent dependency)
#
# e.g. `git clone https://github.com/sccn/liblsl SRC/liblsl && git -C SRC/liblsl
# checkout v1.17.7`, and so on. LabRecorder needs CMake >= 3.28 (Debian 12
# ships 3.25): `python3 -m venv V && V/bin/pip install cmake`, then pass
# --cmake V/bin/cmake. Needs a C++ compiler (build-essential). About a
# minute of build on two cores.
#
#   scripts/build-labrecorder.sh --src SRC [--out OUT] [--cmake CMAKE]
#
# OUT (default SRC) gets build-lsl/, lsl-install/ (liblsl), build-lr/ and
# install/bin/LabRecorderCLI (which finds its liblsl in install/lib).
set -euo pipefail

SRC=""
OUT=""
CMAKE=cmake
while [ $# -gt 0 ]; do
  case $1 in
    --src) SRC=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --cmake) CMAKE=$2; shift 2 ;;
    -h|--help) sed -n 2,24p "$0"; exit 0 ;;
    *) echo "build-labrecorder.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$SRC" ] || { echo "build-labrecorder.sh: --src SRC is required (see --help)" >&2; exit 2; }
SRC=$(realpath "$SRC")
OUT=$(realpath -m "${OUT:-$SRC}")
for d in liblsl App-LabRecorder pugixml; do
  [ -f "$SRC/$d/CMakeLists.txt" ] || {
    echo "build-labrecorder.sh: no $d checkout at $SRC/$d (see --help for where to get it)" >&2
    exit 2
  }
done
command -v "$CMAKE" >/dev/null || { echo "build-labrecorder.sh: no cmake at '$CMAKE' (--cmake)" >&2; exit 2; }
version=$("$CMAKE" --version | head -1 | awk '{print $3}')
if [ "$(printf '%s\n3.28\n' "$version" | sort -V | head -1)" != "3.28" ]; then
  echo "build-labrecorder.sh: LabRecorder needs CMake >= 3.28, '$CMAKE' is $version" >&2
  echo "  python3 -m venv V && V/bin/pip install cmake; then --cmake V/bin/cmake" >&2
  exit 2
fi
mkdir -p "$OUT"
start=$(date +%s)

echo "== liblsl ($(git -C "$SRC/liblsl" describe --tags 2>/dev/null || echo unknown)) -> $OUT/lsl-install"
"$CMAKE" -S "$SRC/liblsl" -B "$OUT/build-lsl" -DCMAKE_BUILD_TYPE=Release \
  -DLSL_UNITTESTS=OFF -DLSL_TOOLS=OFF \
  -DFETCHCONTENT_FULLY_DISCONNECTED=ON -DFETCHCONTENT_SOURCE_DIR_PUGIXML="$SRC/pugixml" \
  -DCMAKE_INSTALL_PREFIX="$OUT/lsl-install" > "$OUT/cfg-lsl.log"
"$CMAKE" --build "$OUT/build-lsl" -j"$(nproc)" > "$OUT/build-lsl.log"
"$CMAKE" --install "$OUT/build-lsl" > "$OUT/inst-lsl.log"

echo "== LabRecorderCLI ($(git -C "$SRC/App-LabRecorder" rev-parse --short HEAD 2>/dev/null || echo unknown)) -> $OUT/install"
"$CMAKE" -S "$SRC/App-LabRecorder" -B "$OUT/build-lr" -DCMAKE_BUILD_TYPE=Release \
  -DLABRECORDER_BUILD_GUI=OFF -DLSL_FETCH_IF_MISSING=OFF \
  -DLSL_INSTALL_ROOT="$OUT/lsl-install" -DCMAKE_INSTALL_PREFIX="$OUT/install" > "$OUT/cfg-lr.log"
"$CMAKE" --build "$OUT/build-lr" -j"$(nproc)" --target LabRecorderCLI > "$OUT/build-lr.log"
"$CMAKE" --install "$OUT/build-lr" > "$OUT/inst-lr.log"

BIN="$OUT/install/bin/LabRecorderCLI"
[ -x "$BIN" ] || BIN="$OUT/build-lr/LabRecorderCLI"
[ -x "$BIN" ] || { echo "build-labrecorder.sh: the build made no LabRecorderCLI (logs in $OUT)" >&2; exit 1; }
echo "== built in $(( $(date +%s) - start )) s: $BIN"
echo "   scripts/bench_lsl_record.sh --labrecorder $BIN"
