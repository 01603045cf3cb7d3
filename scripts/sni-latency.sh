#!/usr/bin/env bash
# What TLS SNI routing costs a connection: l4lb with two listeners in front of the same echo
# backend, one plain and one with a [[listener.route]] (its only backend behind the route),
# loaded in turn with `l4lb-loadgen tcp-crr --tls-hello NAME`: each transaction connects,
# sends a ClientHello naming the route (the first flight of a TLS client, ~110 bytes), reads
# it back from the echo backend, and closes. The plain listener forwards the same bytes
# without looking at them, so the difference is the routing: waiting for the whole hello,
# parsing it, matching the route, and connecting only then. Prints the medians over ROUNDS
# alternating runs of the connection rate and the p50/p99 latency (connect to last byte).
# Loopback only, ports from 29300 up; processes stopped by PID on exit.
#
# Usage: scripts/sni-latency.sh [--rounds N] [--duration SECS] [--conns N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=5
DURATION=3
CONNS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    *) echo "sni-latency: unknown argument: $1" >&2; exit 2 ;;
  esac
done
L4LB=${L4LB_BIN:-target/release/l4lb}
LOADGEN=${LOADGEN_BIN:-target/release/l4lb-loadgen}
for b in "$L4LB" "$LOADGEN"; do
  [ -x "$b" ] || { echo "sni-latency: build first (make build): $b" >&2; exit 1; }
done
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
TMP=$(mktemp -d)
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
BACKEND=29300
PLAIN=29301
ROUTED=29302
NAME=bench.example

"$LOADGEN" serve --tcp "127.0.0.1:$BACKEND" --mode echo --threads 1 >"$TMP/serve.log" 2>&1 &
PIDS+=("$!")
wait_port "$BACKEND" "$!" || { echo "sni-latency: backend did not start" >&2; exit 1; }
cat >"$TMP/l4lb.toml" <<TOML
[runtime]
workers = 1
pin_cpus = false
[[listener]]
name = "plain"
bind = "127.0.0.1:$PLAIN"
backends = [ { addr = "127.0.0.1:$BACKEND" } ]
[[listener]]
name = "routed"
bind = "127.0.0.1:$ROUTED"
backends = []
[[listener.route]]
sni = ["$NAME"]
backends = [ { addr = "127.0.0.1:$BACKEND" } ]
TOML
"$L4LB" --config "$TMP/l4lb.toml" 2>"$TMP/l4lb.log" &
LB=$!
PIDS+=("$LB")
wait_port "$ROUTED" "$LB" || { echo "sni-latency: l4lb did not start" >&2; cat "$TMP/l4lb.log" >&2; exit 1; }

run() { # $1: port -> "rate p50 p99"
  local out
  out=$("$LOADGEN" tcp-crr --target "127.0.0.1:$1" --tls-hello "$NAME" --conns "$CONNS" \
    --threads 1 --duration "$DURATION" --json --quiet 2>/dev/null | tail -1)
  printf '%s %s %s\n' "$(jget "$out" rate)" "$(jget "$out" p50)" "$(jget "$out" p99)"
}

declare -A rate p50 p99
for ((i = 0; i < ROUNDS; i++)); do
  for which in plain routed; do
    port=$PLAIN
    [ "$which" = routed ] && port=$ROUTED
    read -r r a b < <(run "$port")
    rate[$which]+="$r "
    p50[$which]+="$a "
    p99[$which]+="$b "
  done
done
echo "tcp-crr --tls-hello, $CONNS connection(s), $ROUNDS x ${DURATION}s per listener, 1 worker:"
printf '  %-7s %10s %10s %10s\n' listener conn/s p50_us p99_us
for which in plain routed; do
  printf '  %-7s %10s %10s %10s\n' "$which" "$(median "${rate[$which]}")" \
    "$(median "${p50[$which]}")" "$(median "${p99[$which]}")"
done
