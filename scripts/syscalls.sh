#!/usr/bin/env bash
# Syscalls per forwarded request: runs l4lb (1 worker) under `strace -c -f` in front of one
# echo backend, drives a fixed-length tcp-rr (request/response on persistent connections) and
# a tcp-stream load through it for each splice mode, and prints syscalls per transaction;
# then syscalls per proxied connection under tcp-crr for l4lb and (if installed) HAProxy. strace slows the proxy down; the counts per request are what matter, not the rate.
#
# Usage: scripts/syscalls.sh [--duration S] [--size BYTES]
# Needs strace (apt-get install strace) and a release build (make build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=3
SIZE=64
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    *) echo "syscalls: unknown argument: $1" >&2; exit 2 ;;
  esac
done
L4LB=${L4LB_BIN:-target/release/l4lb}
LOADGEN=${LOADGEN_BIN:-target/release/l4lb-loadgen}
command -v strace >/dev/null || { echo "syscalls: strace is not installed" >&2; exit 1; }
if [ ! -x "$L4LB" ] || [ ! -x "$LOADGEN" ]; then echo "syscalls: build first (make build)" >&2; exit 1; fi

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
TMP=$(mktemp -d)
WORK=$TMP
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BACKEND=127.0.0.1:24901
FRONT=127.0.0.1:24900
"$LOADGEN" serve --tcp "$BACKEND" --mode echo >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
sleep 0.3

# total syscalls from a `strace -c` summary
total_calls() { awk '/^100.00/ {print $4} /total$/ {print $(NF-2)}' "$1" | tail -1; }

# warm_up ADDR: until a proxy there answers a short tcp-rr (5 s at most). The warm-up
# connection is a negligible part of what is counted afterwards.
warm_up() {
  for _ in $(seq 1 50); do
    "$LOADGEN" tcp-rr --target "$1" --conns 1 --duration 0.1 --quiet >/dev/null 2>&1 && return 0
    sleep 0.1
  done
}

# stop_traced: stop the proxy running under strace as $spid (strace then writes its summary
# and exits), and wait for strace.
stop_traced() {
  local lpid
  lpid=$(pgrep -P "$spid" | head -1 || true)
  [ -n "$lpid" ] && kill -TERM "$lpid" 2>/dev/null
  wait "$spid" 2>/dev/null || true
}

# per CALLS N DIGITS: CALLS / N, or n/a.
per() { awk -v c="$1" -v t="$2" -v d="$3" 'BEGIN { if (t > 0) printf "%." d "f", c / t; else print "n/a" }'; }

printf '| splice | workload | transactions | syscalls | syscalls per transaction | top calls |\n'
printf '|---|---|---|---|---|---|\n'
for mode in never always auto; do
  for workload in tcp-rr tcp-stream; do
    cat >"$WORK/l4lb.toml" <<CONF
[runtime]
workers = 1
pin_cpus = false
splice = "$mode"
[[listener]]
name = "s"
bind = "$FRONT"
backends = [ { addr = "$BACKEND" } ]
CONF
    strace -c -f -o "$WORK/strace.txt" "$L4LB" --config "$WORK/l4lb.toml" 2>"$WORK/l4lb.log" &
    spid=$!
    PIDS+=("$spid")
    warm_up "$FRONT"
    if [ "$workload" = tcp-rr ]; then
      json=$("$LOADGEN" tcp-rr --target "$FRONT" --conns 8 --size "$SIZE" --duration "$DURATION" --json --quiet 2>/dev/null | tail -1)
    else
      json=$("$LOADGEN" tcp-stream --target "$FRONT" --direction both --conns 2 --size 65536 --duration "$DURATION" --json --quiet 2>/dev/null | tail -1)
    fi
    stop_traced
    tx=$(jget "$json" transactions 0)
    calls=$(total_calls "$WORK/strace.txt")
    top=$(awk 'NR>2 && $1 ~ /^[0-9.]+$/ && NF>=5 {print $NF"="$4}' "$WORK/strace.txt" | head -5 | tr '\n' ' ')
    printf '| %s | %s | %s | %s | %s | %s |\n' "$mode" "$workload" "$tx" "${calls:-0}" \
      "$(per "$calls" "$tx" 2)" "$top"
  done
done
echo
echo "tcp-rr: $SIZE-byte request and response per transaction; tcp-stream: one 64 KiB chunk per transaction, both directions."

# Connection setup: tcp-crr (connect, request, response, close) through l4lb and, when it is
# installed, HAProxy (1 thread, mode tcp), each traced the same way.
crr_calls() { # $1: label, $2: front address; the proxy runs under strace as $spid
  local json tx calls
  warm_up "$2"
  json=$("$LOADGEN" tcp-crr --target "$2" --conns 8 --duration "$DURATION" --json --quiet 2>/dev/null | tail -1)
  stop_traced
  tx=$(jget "$json" transactions 0)
  calls=$(total_calls "$WORK/strace.txt")
  printf '| %s | %s | %s | %s |\n' "$1" "$tx" "${calls:-0}" "$(per "$calls" "$tx" 1)"
}
echo
printf '| proxy (tcp-crr) | connections | syscalls | syscalls per connection |\n'
printf '|---|---|---|---|\n'
cat >"$WORK/l4lb.toml" <<CONF
[runtime]
workers = 1
pin_cpus = false
[[listener]]
name = "s"
bind = "$FRONT"
backends = [ { addr = "$BACKEND" } ]
CONF
strace -c -f -o "$WORK/strace.txt" "$L4LB" --config "$WORK/l4lb.toml" 2>"$WORK/l4lb.log" &
spid=$!
PIDS+=("$spid")
crr_calls l4lb "$FRONT"
if command -v haproxy >/dev/null 2>&1; then
  cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread 1
defaults
    mode tcp
    timeout connect 3s
    timeout client 300s
    timeout server 300s
frontend f
    bind $FRONT
    default_backend b
backend b
    option splice-auto
    server s1 $BACKEND
CONF
  strace -c -f -o "$WORK/strace.txt" haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  spid=$!
  PIDS+=("$spid")
  crr_calls haproxy "$FRONT"
fi
