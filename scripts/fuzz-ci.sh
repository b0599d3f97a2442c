#!/usr/bin/env bash
# Run every fuzz target briefly on its committed corpus (CI), or longer
# (`--seconds N`, e.g. 900 locally). Needs the nightly toolchain and
# cargo-fuzz; installs cargo-fuzz if missing. New inputs that add coverage
# land in fuzz/corpus/<target>/ (commit the interesting ones); a crash stops
# the run with the input under fuzz/artifacts/<target>/ (make it a
# regression test, then fix). See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=25
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly); not fuzzing" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi
logs=$(mktemp -d /tmp/neuroedge-fuzz.XXXXXX)
cd fuzz
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
if ! cargo +nightly fuzz build -O >"$logs/build.log" 2>&1; then
  tail -n 30 "$logs/build.log" >&2
  echo "fuzz: build failed" >&2
  exit 1
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${seconds}s"
  # -max_len bounds inputs (configs and envelopes are the largest seeds);
  # -rss_limit_mb catches unbounded allocation.
  log="$logs/$t.log"
  status=0
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb" "$log" | tail -n 3 || true
  if [ "$status" -ne 0 ]; then
    grep -E "^==[0-9]+==|SUMMARY|panicked|Test unit written" "$log" | head -n 20 >&2 || true
    echo "fuzz: $t FAILED (exit $status); the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash (logs in $logs)"
