#!/usr/bin/env bash
# Stand-in for l4lb as compare-tools' l4lb-b candidate: l4lb serves the config's TCP listeners
# and udp-uring-probe its one UDP listener (same address, same backends), so that the UDP echo
# row compares the probe with l4lb in the same run:
#   cargo build --release --manifest-path tools/udp-uring-probe/Cargo.toml
#   L4LB_B_BIN=tools/udp-uring-probe/as-candidate.sh PROBE_MODE=ring \
#     scripts/compare.sh --tools --workloads udp-echo --candidates direct,l4lb,l4lb-b,nginx
# Environment: PROBE_MODE (ring, ring-recv, epoll-listener; default ring), PROBE_L4LB_BIN,
# PROBE_BIN. Called as `as-candidate.sh --config FILE`, like l4lb.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
L4LB_BIN=${PROBE_L4LB_BIN:-$root/target/release/l4lb}
PROBE_BIN=${PROBE_BIN:-$root/tools/udp-uring-probe/target/release/udp-uring-probe}
[[ ${1:-} == --config && -n ${2:-} ]] || { echo "usage: $0 --config FILE" >&2; exit 2; }
cfg=$2
# Split the config at its [[listener]] tables: the UDP one goes to the probe, the rest to l4lb.
# A table's bind and backend addresses are collected whatever the order of its keys, and the
# table is classified when it ends.
udp=$(awk '
  function flush() {
    if (!inl) return
    if (udp) { ubind = bind; ubes = bes } else printf "%s", block > tcp
  }
  /^\[\[listener\]\]/ { flush(); inl = 1; block = $0 "\n"; udp = 0; bind = ""; bes = ""; next }
  inl { block = block $0 "\n"; if ($0 ~ /protocol = "udp"/) udp = 1
        if (match($0, /bind = "[^"]*"/)) bind = substr($0, RSTART + 8, RLENGTH - 9)
        if (match($0, /addr = "[^"]*"/)) bes = bes " " substr($0, RSTART + 8, RLENGTH - 9)
        next }
  { printf "%s\n", $0 > tcp }
  END { flush(); if (ubind != "") print ubind ubes }
' tcp="$cfg.tcp" "$cfg")
[[ -n $udp ]] || { echo "$0: no UDP listener in $cfg" >&2; exit 2; }
"$L4LB_BIN" --config "$cfg.tcp" &
# shellcheck disable=SC2086 # $udp is the listen address and the backends, one word each
"$PROBE_BIN" --mode "${PROBE_MODE:-ring}" $udp &
trap 'kill $(jobs -p) 2>/dev/null' TERM INT
wait
