#!/usr/bin/env bash
# Scaling across cores: runs scripts/compare.sh once per worker count (each candidate gets N
# workers pinned to the first N CPUs; the load generator and backends get the rest) and
# prints the tables one after the other, plus a summary of l4lb's rate per worker count.
# Needs at least 2 x the largest worker count in CPUs to be meaningful.
#
# Usage: scripts/scaling.sh [--workers "1 2 4 8"] [compare.sh options, e.g. --quick]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

COUNTS="1 2 4 8"
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) COUNTS=$2; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
NCPU=$(nproc)
echo "# Scaling: $(uname -r), $NCPU CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
for n in $COUNTS; do
  if ((2 * n > NCPU)); then
    echo "skipping $n workers: needs $((2 * n)) CPUs, this host has $NCPU" >&2
    continue
  fi
  echo
  echo "### $n worker(s)"
  bash scripts/compare.sh --workers "$n" "${ARGS[@]}"
done
