#!/usr/bin/env bash
# Soak: mixed TCP and UDP load through l4lb for a given time, with a reload every interval
# (alternating between two backend sets) and a backend restart every third interval; prints
# one line per interval with l4lb's RSS, open descriptors, threads, reloads and the load's
# transactions and errors in that interval. Not part of `make test` (minutes to hours).
#
# Usage: scripts/soak.sh [DURATION_S [INTERVAL_S]]   (defaults: 300 s, 30 s)
# Binaries: L4LB_BIN and LOADGEN_BIN, else target/release/ (run `make build` first).
# Ports: SOAK_PORT_BASE (default 27400) .. +6 on 127.0.0.1; they must be free.
# Load: a few connections on one thread each (SOAK_CONNS, default 4), so that it can run beside
# other work, and SOAK_CRR_S (default 1) second(s) of connect-request-close per interval; run it
# under `nice` on a shared machine.
#
# Variants, to tell what memory grows with (docs/soak.md): SOAK_LOAD=0 (no load),
# SOAK_RELOADS=0 (no reload), SOAK_RESTARTS=0 (no backend restart); each defaults to 1.
# Memory columns: rss_kib (VmRSS), anon_kib (anonymous memory, /proc/PID/smaps_rollup) and
# heap_kib (resident part of the [heap] mapping: glibc's main arena; the worker threads'
# arenas are other anonymous mappings).
#
# Expected: RSS and descriptors flat after the first interval; TCP/UDP errors only in the
# intervals with a backend restart (connections open on the killed backend are reset); zero
# reload errors.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

DURATION=${1:-300}
INTERVAL=${2:-30}
L4LB=${L4LB_BIN:-target/release/l4lb}
LOADGEN=${LOADGEN_BIN:-target/release/l4lb-loadgen}
BASE=${SOAK_PORT_BASE:-27400}
CONNS=${SOAK_CONNS:-4}
# Seconds of connect-request-close load per interval (see run_load).
CRR_S=${SOAK_CRR_S:-1}
LOAD=${SOAK_LOAD:-1}
RELOADS=${SOAK_RELOADS:-1}
RESTARTS=${SOAK_RESTARTS:-1}
command -v curl >/dev/null 2>&1 || { echo "soak: needs curl (reads /metrics)" >&2; exit 2; }
for bin in "$L4LB" "$LOADGEN"; do
  [[ -x $bin ]] || { echo "soak: $bin not found (make build, or set L4LB_BIN/LOADGEN_BIN)" >&2; exit 2; }
done
for ((p = BASE; p <= BASE + 6; p++)); do
  if port_open 127.0.0.1 "$p"; then
    echo "soak: port $p is in use (set SOAK_PORT_BASE)" >&2
    exit 2
  fi
done

TMP=$(mktemp -d /tmp/l4lb-soak.XXXXXX)
trap lib_cleanup EXIT INT TERM

LB=$BASE
ADMIN=$((BASE + 1))
BACKENDS=($((BASE + 2)) $((BASE + 3)) $((BASE + 4)))
BACKEND_PIDS=()
LOAD_PIDS=()

# start_backend I: an echo backend (TCP and UDP) on BACKENDS[I].
start_backend() {
  local port=${BACKENDS[$1]}
  "$LOADGEN" serve --tcp "127.0.0.1:$port" --udp "127.0.0.1:$port" --mode echo --threads 1 \
    >"$TMP/backend-$1.log" 2>&1 &
  BACKEND_PIDS[$1]=$!
  PIDS+=("$!")
  wait_port "$port" "$!" || { echo "soak: backend $1 did not start" >&2; exit 1; }
}

# write_config SET: SET 0 uses all three backends, SET 1 the first two.
write_config() {
  local n=3 list="" i
  (($1 == 1)) && n=2
  for ((i = 0; i < n; i++)); do
    list+="{ addr = \"127.0.0.1:${BACKENDS[i]}\" }, "
  done
  cat >"$TMP/l4lb.toml.new" <<EOF
[runtime]
workers = 2
pin_cpus = false
drain_timeout_s = 5

[admin]
bind = "127.0.0.1:$ADMIN"

[[listener]]
name = "tcp"
protocol = "tcp"
bind = "127.0.0.1:$LB"
balance = "least_conn"
connect_timeout_ms = 1000
backends = [ $list]

[[listener]]
name = "udp"
protocol = "udp"
bind = "127.0.0.1:$LB"
balance = "round_robin"
idle_timeout_s = 5
backends = [ $list]
EOF
  mv "$TMP/l4lb.toml.new" "$TMP/l4lb.toml"
}

# metric NAME LABELS: one sample from /metrics (0 when absent).
metric() {
  local text
  text=$(curl -sf "http://127.0.0.1:$ADMIN/metrics" 2>/dev/null || true)
  awk -v want="$1{$2}" '$1 == want { print $2; found = 1 } END { if (!found) print 0 }' <<<"$text"
}

for i in 0 1 2; do start_backend "$i"; done
write_config 0
RUST_LOG=warn "$L4LB" --config "$TMP/l4lb.toml" >"$TMP/l4lb.log" 2>&1 &
LB_PID=$!
PIDS+=("$LB_PID")
wait_port "$LB" "$LB_PID" || { echo "soak: l4lb did not start" >&2; cat "$TMP/l4lb.log" >&2; exit 1; }

# smaps_kib PID FIELD: FIELD (e.g. Anonymous) of /proc/PID/smaps_rollup, KiB.
smaps_kib() {
  awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print 0 }' \
    "/proc/$1/smaps_rollup" 2>/dev/null || echo 0
}

# heap_kib PID: resident KiB of the [heap] mapping (the main arena).
heap_kib() {
  awk '/ \[heap\]$/ { h = 1; next } /^[0-9a-f]+-[0-9a-f]+ / { h = 0 } h && $1 == "Rss:" { t += $2 }
       END { print t + 0 }' "/proc/$1/smaps" 2>/dev/null || echo 0
}

# One load run per kind per interval, each with its own JSON summary: request/response on
# persistent TCP connections and UDP sessions for the whole interval, and a short burst of
# connect-request-close (each closed connection leaves a port in TIME_WAIT for 60 s, on the
# client and on l4lb's backend side: a longer run of it would take every ephemeral port of a
# shared machine).
run_load() {
  local tag=$1
  LOAD_PIDS=()
  ((LOAD)) || return 0
  "$LOADGEN" tcp-rr --target "127.0.0.1:$LB" --conns "$CONNS" --threads 1 --duration "$INTERVAL" \
    --quiet --json >"$TMP/tcp-$tag.json" 2>/dev/null &
  local tcp=$!
  "$LOADGEN" udp-rr --target "127.0.0.1:$LB" --conns "$CONNS" --threads 1 --duration "$INTERVAL" \
    --quiet --json >"$TMP/udp-$tag.json" 2>/dev/null &
  local udp=$!
  "$LOADGEN" tcp-crr --target "127.0.0.1:$LB" --conns 1 --threads 1 --duration "$CRR_S" \
    --quiet --json >"$TMP/crr-$tag.json" 2>/dev/null &
  local crr=$!
  LOAD_PIDS=("$tcp" "$udp" "$crr")
  PIDS+=("$tcp" "$udp" "$crr")
}

echo "soak: $DURATION s in intervals of $INTERVAL s; load: $( ((LOAD)) && echo "tcp-rr, udp-rr, $CRR_S s of tcp-crr" || echo none);" \
  "reloads: $( ((RELOADS)) && echo "one per interval (backend sets alternate)" || echo none);" \
  "backend restarts: $( ((RESTARTS)) && echo "every $((3 * INTERVAL)) s" || echo none)"
echo "soak: l4lb $L4LB (pid $LB_PID), $(nproc) CPUs, $(uname -r), started $(date -u +%FT%TZ)"
printf '%6s %8s %8s %8s %4s %7s %9s %10s %8s %8s %7s %8s %8s %8s\n' \
  elapsed_s rss_kib anon_kib heap_kib fds threads reload_ok reload_err tcp_txn tcp_errs \
  crr_txn crr_errs udp_txn udp_errs
start=$(date +%s)
round=0
half=$((INTERVAL / 2))
while (($(date +%s) - start < DURATION)); do
  run_load "$round"
  # Change the world halfway through the interval, under the load: reload, and every third
  # round restart a backend.
  sleep "$half"
  note=""
  if ((RELOADS)); then
    write_config $(((round + 1) % 2))
    kill -HUP "$LB_PID"
  fi
  if ((RESTARTS && round % 3 == 2)); then
    stop_pid "${BACKEND_PIDS[2]}"
    start_backend 2
    note="  (backend 3 restarted)"
  fi
  sleep $((INTERVAL - half + 1))
  ((${#LOAD_PIDS[@]} == 0)) || wait "${LOAD_PIDS[@]}" 2>/dev/null || true
  kill -0 "$LB_PID" 2>/dev/null || { echo "soak: l4lb died" >&2; cat "$TMP/l4lb.log" >&2; exit 1; }
  tcp=$(tail -n 1 "$TMP/tcp-$round.json" 2>/dev/null || true)
  crr=$(tail -n 1 "$TMP/crr-$round.json" 2>/dev/null || true)
  udp=$(tail -n 1 "$TMP/udp-$round.json" 2>/dev/null || true)
  printf '%6d %8d %8d %8d %4d %7d %9s %10s %8s %8s %7s %8s %8s %8s%s\n' \
    $(($(date +%s) - start)) "$(rss_kb "$LB_PID")" "$(smaps_kib "$LB_PID" Anonymous)" \
    "$(heap_kib "$LB_PID")" "$(find "/proc/$LB_PID/fd" -mindepth 1 | wc -l)" \
    "$(find "/proc/$LB_PID/task" -mindepth 1 -maxdepth 1 | wc -l)" \
    "$(metric l4lb_config_reloads_total 'result="ok"')" \
    "$(metric l4lb_config_reloads_total 'result="error"')" \
    "$(jget "$tcp" transactions '?')" "$(jget "$tcp" total '?')" \
    "$(jget "$crr" transactions '?')" "$(jget "$crr" total '?')" \
    "$(jget "$udp" transactions '?')" "$(jget "$udp" total '?')" "$note"
  round=$((round + 1))
done
echo "soak: done after $round intervals; l4lb warnings and errors logged: $(grep -cE ' (WARN|ERROR) ' "$TMP/l4lb.log" || true)"
grep -E ' (WARN|ERROR) ' "$TMP/l4lb.log" | head -n 5 | sed 's/^/soak:   /' || true
