#!/usr/bin/env bash
# Load-test a running balancer: tcp-rr, tcp-crr, tcp-stream (both directions), udp-rr and
# hold (9,000 idle connections, then one echo each), printed as one Markdown table.
#
# The backends behind TARGET are yours to run; they must be ECHO backends, e.g.
#   l4lb-loadgen serve --mode echo --tcp 127.0.0.1:9001 --udp 127.0.0.1:9001
# (tcp-stream counts both directions through the echo; hold verifies with an echo).
#
# Usage: scripts/loadtest.sh TARGET [--udp-target ADDR] [--duration S] [--conns N]
#                            [--hold-conns N] [--sources RANGE]
#   TARGET          TCP address of the balancer, e.g. 127.0.0.1:8080
#   --udp-target    UDP address of the balancer (udp-rr is skipped without it)
#   --duration      seconds per workload (default 5)
#   --conns         concurrent connections for rr/crr/udp (default 32; stream: 4)
#   --hold-conns    idle connections for hold (default 9000; ulimit -n is raised if possible)
#   --sources       client source IPs, e.g. 127.0.0.1-127.0.0.64 (passed to every run)
# Environment: BUILD_DIR (default target/release) or LOADGEN_BIN.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

TARGET=""
UDP_TARGET=""
DURATION=5
CONNS=32
HOLD_CONNS=9000
SOURCES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --udp-target) UDP_TARGET=${2:?--udp-target needs ADDR}; shift 2 ;;
    --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
    --conns) CONNS=${2:?--conns needs N}; shift 2 ;;
    --hold-conns) HOLD_CONNS=${2:?--hold-conns needs N}; shift 2 ;;
    --sources) SOURCES=(--sources "${2:?--sources needs a range}"); shift 2 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "loadtest: unknown option $1 (try --help)" >&2; exit 2 ;;
    *)
      if [[ -n "$TARGET" ]]; then
        echo "loadtest: one TARGET only (got $TARGET and $1)" >&2
        exit 2
      fi
      TARGET=$1
      shift
      ;;
  esac
done
if [[ -z "$TARGET" ]]; then
  usage >&2
  exit 2
fi

BUILD_DIR=${BUILD_DIR:-target/release}
LOADGEN_BIN=${LOADGEN_BIN:-$BUILD_DIR/l4lb-loadgen}
if [[ ! -x "$LOADGEN_BIN" ]]; then
  echo "loadtest: $LOADGEN_BIN not found; build first: cargo build --release --bins" >&2
  exit 1
fi

# hold needs one descriptor per connection: raise the soft limit as far as allowed.
want=$((HOLD_CONNS + 1000))
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $want ]]; then
  ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

LOG=$(mktemp "${TMPDIR:-/tmp}/l4lb-loadtest.XXXXXX")
trap 'rm -f "$LOG"' EXIT

ROWS=()
# run NAME ARGS...: one workload; appends a table row (a failed run still reports its errors).
run() {
  local name=$1 json rate unit gbit p50 p99 errs
  shift
  echo "== $name: l4lb-loadgen $*" >&2
  json=$("$LOADGEN_BIN" "$@" "${SOURCES[@]}" --json --quiet 2>"$LOG" | tail -n 1) || true
  if [[ $json != "{"* ]]; then
    echo "   failed:" >&2
    tail -n 5 "$LOG" >&2
    ROWS+=("| $name | failed | | | | |")
    return
  fi
  grep -E '^errors ' "$LOG" | sed 's/^/   /' >&2 || true
  rate=$(jget "$json" rate n/a)
  unit=$(jget "$json" rate_unit n/a)
  gbit=$(jget "$json" gbit_s n/a)
  p50=$(jget "$json" p50 n/a)
  p99=$(jget "$json" p99 n/a)
  errs=$(jget "$json" total n/a)
  if [[ $name == hold* ]]; then
    name="$name (verified $(jget "$json" verified n/a)/$(jget "$json" conns n/a), opened in $(printf '%.2f' "$(jget "$json" open_s n/a)") s)"
  fi
  ROWS+=("| $name | $(printf '%.0f' "$rate") $unit | $(printf '%.3f' "$gbit") Gbit/s | $p50 µs | $p99 µs | $errs |")
}

common=(--target "$TARGET" --duration "$DURATION")
run "tcp-rr" tcp-rr "${common[@]}" --conns "$CONNS" --size 64
run "tcp-crr" tcp-crr "${common[@]}" --conns "$CONNS" --size 64
run "tcp-stream" tcp-stream "${common[@]}" --conns 4 --direction both
if [[ -n "$UDP_TARGET" ]]; then
  run "udp-rr" udp-rr --target "$UDP_TARGET" --duration "$DURATION" --conns "$CONNS" --size 64
else
  ROWS+=("| udp-rr | skipped (no --udp-target) | | | | |")
fi
run "hold $HOLD_CONNS" hold --target "$TARGET" --conns "$HOLD_CONNS" --hold "$DURATION" \
  --timeout-ms 5000

echo
echo "Load test of $TARGET${UDP_TARGET:+ (udp $UDP_TARGET)}, ${DURATION} s per workload; latency is per transaction (hold: per connect)."
echo
echo "| workload | rate | throughput | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
