#!/usr/bin/env bash
# Time to apply a reload: starts l4lb on a generated config (LISTENERS listeners x BACKENDS
# backends, source_ip_hash so every change rebuilds a 65,537-slot Maglev table), changes one
# backend's weight and sends SIGHUP RELOADS times, and prints the apply time l4lb logs for
# each (`reloaded FILE in ...`). Loopback only; the backends need not exist.
#
# Usage: scripts/reload-cost.sh [--listeners N] [--backends N] [--reloads N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LISTENERS=4
BACKENDS=50
RELOADS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --listeners) LISTENERS=$2; shift 2 ;;
    --backends) BACKENDS=$2; shift 2 ;;
    --reloads) RELOADS=$2; shift 2 ;;
    *) echo "reload-cost: unknown argument: $1" >&2; exit 2 ;;
  esac
done
L4LB=${L4LB_BIN:-target/release/l4lb}
[ -x "$L4LB" ] || { echo "reload-cost: build first (make build)" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
TMP=$(mktemp -d)
WORK=$TMP
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

render() { # $1: weight of the first backend
  printf '[runtime]\nworkers = 2\npin_cpus = false\n'
  for ((l = 0; l < LISTENERS; l++)); do
    printf '[[listener]]\nname = "l%d"\nbind = "127.0.0.1:%d"\nbalance = "source_ip_hash"\nbackends = [\n' \
      "$l" $((29100 + l))
    for ((b = 0; b < BACKENDS; b++)); do
      w=$((1 + b % 3))
      ((l == 0 && b == 0)) && w=$1
      printf '  { addr = "127.0.0.1:%d", weight = %d },\n' $((30000 + l * 1000 + b)) "$w"
    done
    printf ']\n'
  done
}
render 1 >"$WORK/l4lb.toml"
"$L4LB" --config "$WORK/l4lb.toml" 2>"$WORK/l4lb.log" &
LB=$!
PIDS+=("$LB")
sleep 0.5
for ((i = 2; i < RELOADS + 2; i++)); do
  render "$i" >"$WORK/l4lb.toml"
  kill -HUP "$LB"
  sleep 0.3
done
echo "$LISTENERS listeners x $BACKENDS backends, $RELOADS reloads (one weight changed each):"
grep -o 'reloaded .*' "$WORK/l4lb.log" | sed 's|^reloaded [^ ]* |  applied |'
