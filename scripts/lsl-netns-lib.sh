# Sourced by the scripts that run LSL peers beside the daemon
# (bench_lsl_record.sh, bench_outlet_latency.sh, symbol-order.sh): a
# network namespace of their own whose loopback carries multicast, so
# LSL's resolver never reaches a real interface (as the tests do), a work
# directory, and one cleanup at exit for both and for every process in
# PIDS. Needs root. The caller sets ROOT (the checkout).

# lsl_work PREFIX: WORK=/tmp/PREFIX.XXXXXX; NS, PIDS; cleanup at exit.
lsl_work() {
  NS="$1-$$"
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  PIDS=()
  trap lsl_cleanup EXIT
}

# lsl_netns: create $NS with multicast on its loopback; point liblsl at
# the tests' config (multicast on loopback only).
lsl_netns() {
  ip netns add "$NS"
  ip netns exec "$NS" ip link set lo up
  ip netns exec "$NS" ip link set lo multicast on
  ip netns exec "$NS" ip route add 224.0.0.0/4 dev lo
  export LSLAPICFG=$ROOT/tests/peers/lsl_api.cfg
}

lsl_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$WORK"
}
