#!/usr/bin/env bash
# The uplink's TLS is rustls with the ring provider only (contract §7,
# issue 13): no aws-lc-rs, OpenSSL or native-tls may enter the dependency
# tree of the daemon, whatever a new dependency's default features pull.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree --locked --edges normal,build --prefix none)
bad=$(grep -E '^(aws-lc-rs|aws-lc-sys|aws-lc-fips-sys|openssl|openssl-sys|native-tls|security-framework|schannel) v' <<<"$tree" | sort -u || true)
if [ -n "$bad" ]; then
  echo "check-tls-deps: forbidden TLS crates in the dependency tree:" >&2
  echo "$bad" >&2
  echo "(see which dependency pulls one: cargo tree -i <crate>)" >&2
  exit 1
fi
grep -qE '^ring v' <<<"$tree" || { echo "check-tls-deps: ring is not in the tree?" >&2; exit 1; }
grep -qE '^rustls v' <<<"$tree" || { echo "check-tls-deps: rustls is not in the tree?" >&2; exit 1; }
echo "check-tls-deps: rustls on ring only ($(grep -cE ' v[0-9]' <<<"$tree" | tr -d ' ') dependency lines checked)"
