#!/usr/bin/env bash
# The `make demo` script: three HTTP demo backends, l4lb in front of them (conf/demo.toml), a
# short connect-request-close load through it, then the distribution over the backends and the
# latency summary. Stops everything it started, by PID, on exit or interrupt. Bounded: < 1 min.
#
# Usage: scripts/demo.sh [--debug]
#   --debug            use target/debug instead of target/release
# Environment:
#   BUILD_DIR          where the binaries are (default target/release)
#   L4LB_BIN, LOADGEN_BIN   explicit binaries (override BUILD_DIR)
#   DEMO_CONFIG        config to run (default conf/demo.toml: listener 127.0.0.1:8080,
#                      backends 127.0.0.1:9001-9003, admin 127.0.0.1:9090)
#   DEMO_DURATION      seconds of load (default 5; e.g. 120 to watch the dashboard)
#   DEMO_CONNS         concurrent connections (default 16)
#   DEMO_PORT_BASE     run on other ports: the listener on BASE, the backends on BASE+1..+3,
#                      the admin API on BASE+4 (the config's ports are rewritten in a copy)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD_DIR=${BUILD_DIR:-target/release}
for arg in "$@"; do
  case "$arg" in
    --debug) BUILD_DIR=target/debug ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "demo: unknown argument: $arg (try --help)" >&2
      exit 2
      ;;
  esac
done
L4LB_BIN=${L4LB_BIN:-$BUILD_DIR/l4lb}
LOADGEN_BIN=${LOADGEN_BIN:-$BUILD_DIR/l4lb-loadgen}
CONFIG=${DEMO_CONFIG:-conf/demo.toml}
DURATION=${DEMO_DURATION:-5}
CONNS=${DEMO_CONNS:-16}
FRONT_HOST=127.0.0.1
BASE=${DEMO_PORT_BASE:-}
if [[ -n "$BASE" && ! "$BASE" =~ ^[0-9]+$ ]]; then
  echo "demo: DEMO_PORT_BASE must be a port number, not $BASE" >&2
  exit 2
fi
if [[ -n "$BASE" ]]; then
  FRONT_PORT=$BASE
  BACKENDS=("127.0.0.1:$((BASE + 1))" "127.0.0.1:$((BASE + 2))" "127.0.0.1:$((BASE + 3))")
  ADMIN=127.0.0.1:$((BASE + 4))
else
  FRONT_PORT=8080
  BACKENDS=(127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003)
  ADMIN=127.0.0.1:9090
fi

for bin in "$L4LB_BIN" "$LOADGEN_BIN"; do
  if [[ ! -x "$bin" ]]; then
    echo "demo: $bin not found; build first: cargo build --release --bins (or make build)" >&2
    exit 1
  fi
done
if [[ ! -r "$CONFIG" ]]; then
  echo "demo: config $CONFIG not readable" >&2
  exit 1
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/l4lb-demo.XXXXXX")
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n "$BASE" ]]; then
  sed -e "s/127\.0\.0\.1:8080/$FRONT_HOST:$FRONT_PORT/" \
    -e "s/127\.0\.0\.1:9001/${BACKENDS[0]}/" -e "s/127\.0\.0\.1:9002/${BACKENDS[1]}/" \
    -e "s/127\.0\.0\.1:9003/${BACKENDS[2]}/" -e "s/127\.0\.0\.1:9090/$ADMIN/" \
    "$CONFIG" >"$TMP/demo.toml"
  CONFIG=$TMP/demo.toml
fi

for addr in "$FRONT_HOST:$FRONT_PORT" "${BACKENDS[@]}"; do
  if port_open "${addr%:*}" "${addr##*:}"; then
    echo "demo: $addr is already in use; stop what listens there first" >&2
    exit 1
  fi
done

echo "== starting 3 demo backends (l4lb-loadgen serve --mode http)"
serve_args=()
for b in "${BACKENDS[@]}"; do
  serve_args+=(--tcp "$b")
done
"$LOADGEN_BIN" serve --mode http --threads 1 "${serve_args[@]}" >"$TMP/backends.log" 2>&1 &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
for b in "${BACKENDS[@]}"; do
  if ! wait_port "${b##*:}" "$SERVE_PID" 50 "${b%:*}"; then
    echo "demo: backend $b did not start:" >&2
    cat "$TMP/backends.log" >&2
    exit 1
  fi
done
sed 's/^/   /' "$TMP/backends.log"

echo "== starting l4lb --config $CONFIG"
RUST_LOG=${RUST_LOG:-info} "$L4LB_BIN" --config "$CONFIG" >"$TMP/l4lb.log" 2>&1 &
L4LB_PID=$!
PIDS+=("$L4LB_PID")
if ! wait_port "$FRONT_PORT" "$L4LB_PID" 100 "$FRONT_HOST"; then
  echo "demo: l4lb did not accept on $FRONT_HOST:$FRONT_PORT within 10 s; its log:" >&2
  cat "$TMP/l4lb.log" >&2
  exit 1
fi
sed 's/^/   /' "$TMP/l4lb.log"
echo "== dashboard: http://$ADMIN/ (live while the load runs; DEMO_DURATION=120 to watch longer)"

if command -v curl >/dev/null 2>&1; then
  echo "== three requests by hand: curl -s http://$FRONT_HOST:$FRONT_PORT/"
  for _ in 1 2 3; do
    printf '   '
    curl -s --max-time 2 "http://$FRONT_HOST:$FRONT_PORT/" || echo "(curl failed)"
  done
fi

echo "== load: l4lb-loadgen tcp-crr --http --target $FRONT_HOST:$FRONT_PORT --conns $CONNS --duration $DURATION"
load_rc=0
"$LOADGEN_BIN" tcp-crr --http --target "$FRONT_HOST:$FRONT_PORT" \
  --conns "$CONNS" --duration "$DURATION" --connect-timeout-ms 2000 --timeout-ms 2000 ||
  load_rc=$?

if command -v curl >/dev/null 2>&1; then
  echo "== l4lb admin view: GET http://$ADMIN/status"
  printf '   '
  curl -s --max-time 2 "http://$ADMIN/status" || printf '(admin not reachable)'
  echo
fi

echo "== connections each backend accepted (counted by the backends)"
stop_pid "$SERVE_PID"
grep '^served ' "$TMP/backends.log" | sed 's/^/   /' || echo "   (no counts: backends did not exit cleanly)"

echo "== stopping l4lb"
stop_pid "$L4LB_PID"
if [[ $load_rc -ne 0 ]]; then
  echo "demo: the load run failed (exit $load_rc); l4lb log:" >&2
  cat "$TMP/l4lb.log" >&2
  exit 1
fi
echo "demo: done"
