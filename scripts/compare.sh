#!/usr/bin/env bash
# Side-by-side benchmark: the same workloads through
#   direct (no proxy) | l4lb | HAProxy (mode tcp) | nginx (stream)
# and one Markdown table: per workload and candidate the rate, p99 latency, rate relative to
# HAProxy, the proxy's CPU time (utime+stime of all its processes and threads) per GB moved
# and per 1,000 connections, and its RSS per idle connection while N connections are held.
#
# Fairness: every proxy gets the same worker count (l4lb workers = HAProxy nbthread = nginx
# worker_processes) and is pinned with taskset to the same CPUs; the load generator and the
# echo backends are pinned to the other CPUs. With fewer CPUs than 2 x workers they share
# CPUs, which the report says: on a 2-CPU host the default is 1 worker on CPU 0 and the
# generator plus backends on CPU 1.
# HAProxy: nbthread, `option splice-auto`. nginx: reuseport listeners. UDP: HAProxy has no
# UDP proxying (n/a); nginx and l4lb use their UDP listeners.
# Mixed load (workload "mix", its own table): 2 tcp-stream bulk connections (both directions)
# and, at the same time, tcp-crr --conns 8 (connect, 1-byte request, answer, close) through
# the same candidate; reported: the short connections' conn/s and p50/p90/p99 and the bulk
# Gbit/s. It shows whether a bulk transfer makes new connections wait (issue 16).
# Each cell is repeated (--repeat, default 3; every repeat restarts each candidate, in an order
# rotated per repeat) and the median is reported.
# Bounded: about 6 minutes by default, under 1.5 minutes with --quick.
#
# Usage: scripts/compare.sh [--quick] [--repeat N] [--workers N] [--cpus LIST]
#                           [--duration S] [--hold-conns N] [--candidates LIST]
#                           [--base-port P] [--no-install] [--workloads LIST]
#                           [--mix-duration S]
#   --quick          1 repeat, 1 s per cell, 1 s hold
#   --repeat N       runs per cell, the median is reported (default 3)
#   --workers N      proxy workers/threads/processes (default: half the CPUs, at least 1)
#   --cpus LIST      CPUs for the proxies, taskset syntax (default: the first N allowed CPUs)
#   --duration S     seconds per cell (default 3)
#   --hold-conns N   idle connections for the RSS measurement (default 9000)
#   --candidates L   comma list from direct,l4lb,haproxy,nginx (default: all)
#   --base-port P    ports used: P+1, P+2 backends; P+80/81 l4lb (P+90 its admin API); P+180 HAProxy;
#                    P+280/281 nginx (default 24000)
#   --no-install     do not apt-get install haproxy/nginx when missing (they are skipped)
#   --workloads L    comma list from tcp-rr,tcp-crr,tcp-stream,udp-rr,hold,mix (default: all)
#   --mix-duration S seconds of short connections in the mix (default 10; --quick: 2); the
#                    bulk streams start 1 s before and stop 1 s after
# Environment: BUILD_DIR (default target/release), L4LB_BIN, LOADGEN_BIN, NGINX_MODULES (the
# nginx config file(s) that load the stream module; default the Debian layout).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --tools [ARGS]: the same candidates measured with wrk, iperf3 and a UDP echo instead, with
# whole-machine CPU per unit of work: scripts/compare-tools.sh ARGS (see its --help).
if [[ ${1:-} == --tools ]]; then
  shift
  exec scripts/compare-tools.sh "$@"
fi

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

QUICK=0
REPEAT=""
WORKERS=""
CPUS=""
DURATION=""
HOLD_CONNS=9000
CANDIDATES="direct,l4lb,haproxy,nginx"
# nginx config that loads the stream module (Debian/Ubuntu layout unless overridden).
NGINX_MODULES=${NGINX_MODULES:-/etc/nginx/modules-enabled/*stream*.conf}
BASE_PORT=24000
INSTALL=1
RUN_WORKLOADS="tcp-rr,tcp-crr,tcp-stream,udp-rr,hold,mix"
MIX_DURATION=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --repeat) REPEAT=${2:?--repeat needs N}; shift 2 ;;
    --workers) WORKERS=${2:?--workers needs N}; shift 2 ;;
    --cpus) CPUS=${2:?--cpus needs a CPU list}; shift 2 ;;
    --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
    --hold-conns) HOLD_CONNS=${2:?--hold-conns needs N}; shift 2 ;;
    --candidates) CANDIDATES=${2:?--candidates needs a list}; shift 2 ;;
    --base-port) BASE_PORT=${2:?--base-port needs a port}; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --workloads) RUN_WORKLOADS=${2:?--workloads needs a list}; shift 2 ;;
    --mix-duration) MIX_DURATION=${2:?--mix-duration needs seconds}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
if ((QUICK)); then
  REPEAT=${REPEAT:-1}
  DURATION=${DURATION:-1}
  MIX_DURATION=${MIX_DURATION:-2}
  HOLD_S=1
else
  REPEAT=${REPEAT:-3}
  DURATION=${DURATION:-3}
  MIX_DURATION=${MIX_DURATION:-10}
  HOLD_S=2
fi
for n in "$REPEAT" "$HOLD_CONNS" "$BASE_PORT"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "compare: $n is not a positive integer" >&2; exit 2; }
done
[[ -z $WORKERS || $WORKERS =~ ^[1-9][0-9]*$ ]] || { echo "compare: bad --workers $WORKERS" >&2; exit 2; }
[[ $DURATION =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "compare: bad --duration $DURATION" >&2; exit 2; }
[[ $MIX_DURATION =~ ^[1-9][0-9]*$ ]] || { echo "compare: bad --mix-duration $MIX_DURATION (whole seconds)" >&2; exit 2; }
IFS=, read -ra RUN_WL <<<"$RUN_WORKLOADS"
for w in "${RUN_WL[@]}"; do
  case "$w" in tcp-rr | tcp-crr | tcp-stream | udp-rr | hold | mix) ;;
    *) echo "compare: unknown workload $w" >&2; exit 2 ;;
  esac
done
runs() { [[ ",$RUN_WORKLOADS," == *",$1,"* ]]; }

BUILD_DIR=${BUILD_DIR:-target/release}
L4LB_BIN=${L4LB_BIN:-$BUILD_DIR/l4lb}
LOADGEN_BIN=${LOADGEN_BIN:-$BUILD_DIR/l4lb-loadgen}
TEMPLATES=scripts/templates
if [[ ! -x "$LOADGEN_BIN" ]]; then
  echo "compare: $LOADGEN_BIN not found; build first: cargo build --release --bins" >&2
  exit 1
fi

log() { echo "compare: $*" >&2; }

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# ---------------------------------------------------------------------------- CPUs and limits
HAVE_TASKSET=0
command -v taskset >/dev/null 2>&1 && HAVE_TASKSET=1
read -ra ALL_CPUS <<<"$(allowed_cpus)"
NCPU=${#ALL_CPUS[@]}
WORKERS=${WORKERS:-$((NCPU / 2 > 0 ? NCPU / 2 : 1))}
if [[ -n $CPUS ]]; then
  read -ra PROXY_CPUS <<<"$(expand_cpus "$CPUS")"
else
  PROXY_CPUS=("${ALL_CPUS[@]:0:WORKERS}")
fi
CLIENT_CPUS=()
for c in "${ALL_CPUS[@]}"; do
  [[ " ${PROXY_CPUS[*]} " == *" $c "* ]] || CLIENT_CPUS+=("$c")
done
SHARED=0
if ((${#CLIENT_CPUS[@]} == 0)); then
  CLIENT_CPUS=("${ALL_CPUS[@]}")
  SHARED=1
fi
PROXY_SET=$(IFS=,; echo "${PROXY_CPUS[*]}")
CLIENT_SET=$(IFS=,; echo "${CLIENT_CPUS[*]}")
CLIENT_THREADS=${#CLIENT_CPUS[@]}

# Command prefixes that pin to the proxy / client CPUs (empty without taskset). Arrays, not
# a function: a backgrounded function runs in a subshell, and $! would then be the subshell's
# PID instead of the program's, so stopping it by PID would leak the program.
PROXY_PIN=()
CLIENT_PIN=()
if ((HAVE_TASKSET)); then
  PROXY_PIN=(taskset -c "$PROXY_SET")
  CLIENT_PIN=(taskset -c "$CLIENT_SET")
fi

# Each held connection costs a descriptor in the generator, two in the proxy, one in a backend.
want_fds=$((2 * HOLD_CONNS + 2000))
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $want_fds ]]; then
  ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
if ((NOFILE < 2 * HOLD_CONNS + 200)); then
  log "open-files limit $NOFILE is too low for --hold-conns $HOLD_CONNS through a proxy; lowering it"
  HOLD_CONNS=$(((NOFILE - 200) / 2))
fi

# HAProxy needs 2 descriptors per connection plus 2 per splice pipe, all within the limit.
HAPROXY_MAXPIPES=512
HAPROXY_MAXCONN=$((HOLD_CONNS + 200))
if ((2 * HAPROXY_MAXCONN + 2 * HAPROXY_MAXPIPES + 200 > NOFILE)); then
  HAPROXY_MAXCONN=$(((NOFILE - 2 * HAPROXY_MAXPIPES - 200) / 2))
fi

# -------------------------------------------------------------------------- processes
TMP=$(mktemp -d "${TMPDIR:-/tmp}/l4lb-compare.XXXXXX")
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------- candidates
B1=$((BASE_PORT + 1))
B2=$((BASE_PORT + 2))
L4LB_TCP=$((BASE_PORT + 80))
L4LB_UDP=$((BASE_PORT + 81))
L4LB_ADMIN=$((BASE_PORT + 90))
HAPROXY_TCP=$((BASE_PORT + 180))
NGINX_TCP=$((BASE_PORT + 280))
NGINX_UDP=$((BASE_PORT + 281))
for p in $B1 $B2 $L4LB_TCP $L4LB_ADMIN $HAPROXY_TCP $NGINX_TCP; do
  if port_open 127.0.0.1 "$p"; then
    log "port $p is in use; pick other ports with --base-port"
    exit 1
  fi
done

IFS=, read -ra WANT <<<"$CANDIDATES"
for c in "${WANT[@]}"; do
  case "$c" in direct | l4lb | haproxy | nginx) ;; *) log "unknown candidate $c"; exit 2 ;; esac
done
wants() { [[ ",$CANDIDATES," == *",$1,"* ]]; }

declare -A SKIP=()
if wants l4lb && [[ ! -x "$L4LB_BIN" ]]; then
  SKIP[l4lb]="$L4LB_BIN not built"
fi
missing=()
wants haproxy && ! command -v haproxy >/dev/null 2>&1 && missing+=(haproxy)
if wants nginx; then
  command -v nginx >/dev/null 2>&1 || missing+=(nginx)
  # The stream module: built in, or the Debian/Ubuntu dynamic module package.
  if ! nginx -V 2>&1 | grep -q -- '--with-stream' ||
    { nginx -V 2>&1 | grep -q -- '--with-stream=dynamic' &&
      ! compgen -G "$NGINX_MODULES" >/dev/null; }; then
    missing+=(libnginx-mod-stream)
  fi
fi
if ((${#missing[@]} > 0)); then
  if ((INSTALL)) && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    log "installing ${missing[*]} with apt-get"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${missing[@]}"; } >"$TMP/apt.log" 2>&1; then
      log "apt-get failed (see below); the missing candidates are skipped"
      tail -n 5 "$TMP/apt.log" >&2
    fi
  else
    log "missing ${missing[*]} and cannot install (--no-install, no apt-get or not root)"
  fi
fi
wants haproxy && ! command -v haproxy >/dev/null 2>&1 && SKIP[haproxy]="haproxy not installed"
wants nginx && ! command -v nginx >/dev/null 2>&1 && SKIP[nginx]="nginx not installed"

# render TEMPLATE OUT KEY=VALUE...: replace every @KEY@ in TEMPLATE.
render() {
  local tmpl=$1 dest=$2 content kv
  shift 2
  content=$(<"$tmpl")
  for kv in "$@"; do
    content=${content//@${kv%%=*}@/${kv#*=}}
  done
  printf '%s\n' "$content" >"$dest"
}

CAND_PID=""
TCP_T=""
UDP_T=""
RSS_BASE=0

# start_candidate NAME: starts it pinned to the proxy CPUs; sets CAND_PID, TCP_T and UDP_T.
start_candidate() {
  local name=$1 servers
  CAND_PID=""
  case "$name" in
    direct)
      TCP_T=127.0.0.1:$B1
      UDP_T=127.0.0.1:$B1
      return 0
      ;;
    l4lb)
      TCP_T=127.0.0.1:$L4LB_TCP
      UDP_T=127.0.0.1:$L4LB_UDP
      render "$TEMPLATES/l4lb.toml.tmpl" "$TMP/l4lb.toml" \
        "WORKERS=$WORKERS" "LISTEN_TCP=$TCP_T" "LISTEN_UDP=$UDP_T" "ADMIN=127.0.0.1:$L4LB_ADMIN" \
        "L4LB_TCP_BACKENDS=  { addr = \"127.0.0.1:$B1\" },
  { addr = \"127.0.0.1:$B2\" }," \
        "L4LB_UDP_BACKENDS=  { addr = \"127.0.0.1:$B1\" },
  { addr = \"127.0.0.1:$B2\" },"
      RUST_LOG=warn "${PROXY_PIN[@]}" "$L4LB_BIN" --config "$TMP/l4lb.toml" >"$TMP/l4lb.log" 2>&1 &
      CAND_PID=$!
      PIDS+=("$CAND_PID")
      if ! wait_port "${TCP_T##*:}" "$CAND_PID" && grep -qi udp "$TMP/l4lb.log"; then
        # A build without UDP support: measure TCP, report udp-rr as n/a.
        log "l4lb rejects the UDP listener ($(head -n 1 "$TMP/l4lb.log")); retrying TCP only"
        stop_pid "$CAND_PID"
        sed -i '/^# --- udp listener/,$d' "$TMP/l4lb.toml"
        UDP_T=""
        RUST_LOG=warn "${PROXY_PIN[@]}" "$L4LB_BIN" --config "$TMP/l4lb.toml" >"$TMP/l4lb.log" 2>&1 &
        CAND_PID=$!
      fi
      ;;
    haproxy)
      TCP_T=127.0.0.1:$HAPROXY_TCP
      UDP_T=""
      servers="    server b1 127.0.0.1:$B1
    server b2 127.0.0.1:$B2"
      render "$TEMPLATES/haproxy.cfg.tmpl" "$TMP/haproxy.cfg" \
        "WORKERS=$WORKERS" "MAXCONN=$HAPROXY_MAXCONN" "MAXPIPES=$HAPROXY_MAXPIPES" "TMP=$TMP" \
        "LISTEN_TCP=$TCP_T" "HAPROXY_SERVERS=$servers"
      "${PROXY_PIN[@]}" haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
      CAND_PID=$!
      ;;
    nginx)
      TCP_T=127.0.0.1:$NGINX_TCP
      UDP_T=127.0.0.1:$NGINX_UDP
      render "$TEMPLATES/nginx.conf.tmpl" "$TMP/nginx.conf" \
        "WORKERS=$WORKERS" "NOFILE=$NOFILE" "TMP=$TMP" \
        "NGINX_MODULES=$NGINX_MODULES" "NGINX_USER=$(id -un)" \
        "WORKER_CONNECTIONS=$((2 * HOLD_CONNS + 1000))" \
        "LISTEN_TCP=$TCP_T" "LISTEN_UDP=$UDP_T" \
        "NGINX_TCP_SERVERS=        server 127.0.0.1:$B1;
        server 127.0.0.1:$B2;" \
        "NGINX_UDP_SERVERS=        server 127.0.0.1:$B1;
        server 127.0.0.1:$B2;"
      "${PROXY_PIN[@]}" nginx -e "$TMP/nginx-startup.log" -c "$TMP/nginx.conf" >"$TMP/nginx.log" 2>&1 &
      CAND_PID=$!
      ;;
  esac
  PIDS+=("$CAND_PID")
  if ! wait_port "${TCP_T##*:}" "$CAND_PID"; then
    log "$name did not start; its output:"
    cat "$TMP/$name.log" "$TMP/nginx-error.log" "$TMP/nginx-startup.log" 2>/dev/null | tail -n 20 >&2
    stop_pid "$CAND_PID"
    return 1
  fi
}

# ------------------------------------------------------------------------- measurements
declare -A RATE=() P99=() CPU_GB=() CPU_KC=() RSS_CONN=() UNIT=() ERRS=() NOTE=()
declare -A MIX_RATE=() MIX_P50=() MIX_P90=() MIX_P99=() MIX_GBIT=() MIX_ERRS=() MIX_NOTE=()
MIX_LOOP=()

# cell CANDIDATE WORKLOAD: one run; appends its numbers to the cell's lists.
cell() {
  local cand=$1 wl=$2 key="$1|$2" args json c0 c1 cpu_s bytes tx
  case "$wl" in
    tcp-rr) args=(tcp-rr --target "$TCP_T" --conns 32 --size 64) ;;
    tcp-crr) args=(tcp-crr --target "$TCP_T" --conns 32 --size 64) ;;
    tcp-stream) args=(tcp-stream --target "$TCP_T" --conns 4 --direction both) ;;
    udp-rr)
      if [[ -z $UDP_T ]]; then
        NOTE[$key]="n/a"
        return 0
      fi
      args=(udp-rr --target "$UDP_T" --conns 32 --size 64 --timeout-ms 500)
      ;;
  esac
  c0=$(cpu_ticks "$CAND_PID")
  json=$("${CLIENT_PIN[@]}" "$LOADGEN_BIN" "${args[@]}" --duration "$DURATION" \
    --threads "$CLIENT_THREADS" --json --quiet 2>/dev/null | tail -n 1) || true
  c1=$(cpu_ticks "$CAND_PID")
  if [[ $json != "{"* ]]; then
    NOTE[$key]="failed"
    return 0
  fi
  cpu_s=$(awk -v d=$((c1 - c0)) -v t="$CLK_TCK" 'BEGIN { print d / t }')
  bytes=$(jget "$json" bytes)
  tx=$(jget "$json" transactions)
  if [[ $wl == tcp-stream ]]; then
    RATE[$key]+=" $(jget "$json" gbit_s)"
    UNIT[$key]="Gbit/s"
  else
    RATE[$key]+=" $(jget "$json" rate)"
    UNIT[$key]=$(jget "$json" rate_unit)
  fi
  P99[$key]+=" $(jget "$json" p99)"
  ERRS[$key]+=" $(jget "$json" total)"
  if [[ -n $CAND_PID ]]; then
    if [[ $wl == tcp-crr ]]; then
      if ((tx > 0)); then
        CPU_KC[$key]+=" $(awk -v c="$cpu_s" -v n="$tx" 'BEGIN { print c * 1e6 / n }')"
      fi
    elif ((bytes > 0)); then
      CPU_GB[$key]+=" $(awk -v c="$cpu_s" -v b="$bytes" 'BEGIN { print c * 1e9 / b }')"
    fi
  fi
}

# hold_cell CANDIDATE: HOLD_CONNS idle connections; RSS sampled while they are held and
# compared with RSS_BASE, the candidate's RSS right after it started (allocators keep freed
# memory, so a baseline taken after earlier runs would hide the connections' cost).
hold_cell() {
  local cand=$1 key="$1|hold" rss0=$RSS_BASE rss1 c0 c1 lpid n json opened
  c0=$(cpu_ticks "$CAND_PID")
  "${CLIENT_PIN[@]}" "$LOADGEN_BIN" hold --target "$TCP_T" --conns "$HOLD_CONNS" \
    --hold "$HOLD_S" --timeout-ms 5000 --open-timeout 20 --threads "$CLIENT_THREADS" \
    --json >"$TMP/hold.json" 2>"$TMP/hold.err" &
  lpid=$!
  PIDS+=("$lpid")
  for ((n = 0; n < 300; n++)); do
    grep -q '^opened ' "$TMP/hold.err" 2>/dev/null && break
    kill -0 "$lpid" 2>/dev/null || break
    sleep 0.1
  done
  sleep 0.3
  rss1=$(rss_kb "$CAND_PID")
  c1=$(cpu_ticks "$CAND_PID")
  for ((n = 0; n < 600; n++)); do
    kill -0 "$lpid" 2>/dev/null || break
    sleep 0.1
  done
  stop_pid "$lpid"
  json=$(tail -n 1 "$TMP/hold.json" 2>/dev/null || true)
  if [[ $json != "{"* ]]; then
    NOTE[$key]="failed"
    return 0
  fi
  opened=$(jget "$json" opened)
  RATE[$key]+=" $(jget "$json" rate)"
  P99[$key]+=" $(jget "$json" p99)"
  UNIT[$key]="conn/s"
  ERRS[$key]+=" $(jget "$json" total)"
  NOTE[$key]="verified $(jget "$json" verified)/$HOLD_CONNS"
  if [[ -n $CAND_PID ]] && ((opened > 0)); then
    RSS_CONN[$key]+=" $(awk -v a="$rss0" -v b="$rss1" -v n="$opened" 'BEGIN { print (b - a) * 1024 / n }')"
    CPU_KC[$key]+=" $(awk -v d=$((c1 - c0)) -v t="$CLK_TCK" -v n="$opened" 'BEGIN { print d / t * 1e6 / n }')"
  fi
}

# loop_figures: l4lb's loop counters from /metrics on one line: iterations, the iteration
# time sum in seconds, poll events, bytes moved, then the cumulative bucket counts; empty when
# the build has no l4lb_worker_loop_seconds.
loop_figures() {
  { curl -s --max-time 5 "http://127.0.0.1:$L4LB_ADMIN/metrics" 2>/dev/null || true; } | awk '
    /^l4lb_worker_loop_seconds_count / { n = $2 }
    /^l4lb_worker_loop_seconds_sum / { s = $2 }
    /^l4lb_worker_poll_events_total / { e = $2 }
    /^l4lb_backend_bytes_total\{listener="tcp"/ { b += $2 }
    /^l4lb_worker_loop_seconds_bucket/ { k++; c[k] = $2; split($0, q, "\""); le[k] = q[2] }
    END {
      if (n == "") exit
      printf "%s %s %s %s", n, s, e, b
      for (i = 1; i <= k; i++) printf " %s=%s", le[i], c[i]
      print ""
    }'
}

# loop_delta BEFORE AFTER: what the loop did between two loop_figures lines: iterations,
# mean µs, events per epoll_wait, KiB moved per iteration, share of iterations over 1 ms
# and over 10 ms, and the bucket bound under which 99% of the iterations ran.
loop_delta() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    na = split(a, x, " "); nb = split(b, y, " ")
    if (na < 5 || nb != na) exit
    n = y[1] - x[1]; if (n <= 0) exit
    for (i = 5; i <= nb; i++) {
      split(x[i], p, "="); split(y[i], q, "=")
      le[i] = q[1]; d[i] = q[2] - p[2]
      if (le[i] == "0.001") over1 = n - d[i]
      if (le[i] == "0.01") over10 = n - d[i]
      if (p99 == "" && d[i] >= 0.99 * n) p99 = le[i]
    }
    printf "%d iterations, mean %.0f µs, %.2f events/wait, %.0f KiB/iteration, %.2f%% over 1 ms, %.3f%% over 10 ms, p99 <= %s s\n",
      n, (y[2] - x[2]) * 1e6 / n, (y[3] - x[3]) / n, (y[4] - x[4]) / 1024 / n,
      100 * over1 / n, 100 * over10 / n, p99
  }'
}

# mix_cell CANDIDATE: 2 bulk streams and, while they run, 8 connect-per-request clients.
mix_cell() {
  local cand=$1 spid crr stream loop0="" loop1=""
  [[ $cand == l4lb ]] && loop0=$(loop_figures || true)
  "${CLIENT_PIN[@]}" "$LOADGEN_BIN" tcp-stream --target "$TCP_T" --conns 2 --direction both \
    --duration "$((MIX_DURATION + 2))" --threads "$CLIENT_THREADS" --json --quiet \
    >"$TMP/mix-stream.json" 2>/dev/null &
  spid=$!
  PIDS+=("$spid")
  sleep 1
  crr=$("${CLIENT_PIN[@]}" "$LOADGEN_BIN" tcp-crr --target "$TCP_T" --conns 8 --size 1 \
    --duration "$MIX_DURATION" --threads "$CLIENT_THREADS" --json --quiet 2>/dev/null |
    tail -n 1) || true
  wait "$spid" 2>/dev/null || true
  if [[ -n $loop0 ]]; then
    # The byte counters are reported from each connection's timer, about once a second.
    sleep 0.5
    loop1=$(loop_figures || true)
    MIX_LOOP+=("$(loop_delta "$loop0" "$loop1" || true)")
  fi
  stream=$(tail -n 1 "$TMP/mix-stream.json" 2>/dev/null || true)
  if [[ $crr != "{"* || $stream != "{"* ]]; then
    MIX_NOTE[$cand]="failed"
    return 0
  fi
  MIX_RATE[$cand]+=" $(jget "$crr" rate)"
  MIX_P50[$cand]+=" $(jget "$crr" p50)"
  MIX_P90[$cand]+=" $(jget "$crr" p90)"
  MIX_P99[$cand]+=" $(jget "$crr" p99)"
  MIX_ERRS[$cand]+=" $(($(jget "$crr" total 0) + $(jget "$stream" total 0)))"
  MIX_GBIT[$cand]+=" $(jget "$stream" gbit_s)"
}

# --------------------------------------------------------------------------------- run
log "proxy CPUs: $PROXY_SET ($WORKERS workers); generator and backends: $CLIENT_SET$( ((SHARED)) && echo ' (shared: not enough CPUs to separate)')"
"${CLIENT_PIN[@]}" "$LOADGEN_BIN" serve --mode echo --threads "$CLIENT_THREADS" \
  --tcp "127.0.0.1:$B1" --tcp "127.0.0.1:$B2" --udp "127.0.0.1:$B1" --udp "127.0.0.1:$B2" \
  >"$TMP/backends.log" 2>&1 &
BACKENDS_PID=$!
PIDS+=("$BACKENDS_PID")
if ! wait_port "$B1" "$BACKENDS_PID" || ! wait_port "$B2" "$BACKENDS_PID"; then
  log "echo backends did not start:"
  cat "$TMP/backends.log" >&2
  exit 1
fi

WORKLOADS=()
for wl in tcp-rr tcp-crr tcp-stream udp-rr; do
  runs "$wl" && WORKLOADS+=("$wl")
done
STARTED=$(date +%s)
# Repeats go round the candidates (each repeat starts every candidate afresh, in an order
# rotated by one per repeat), so that a slow minute of this shared machine lands on all of
# them rather than on whichever candidate ran then.
NWANT=${#WANT[@]}
for ((r = 1; r <= REPEAT; r++)); do
  for ((k = 0; k < NWANT; k++)); do
    cand=${WANT[(k + r - 1) % NWANT]}
    if [[ -n ${SKIP[$cand]:-} ]]; then
      ((r > 1)) || log "skipping $cand: ${SKIP[$cand]}"
      continue
    fi
    log "$cand: starting (run $r/$REPEAT)"
    if ! start_candidate "$cand"; then
      SKIP[$cand]="did not start"
      continue
    fi
    sleep 0.2
    RSS_BASE=$(rss_kb "$CAND_PID")
    for wl in "${WORKLOADS[@]}"; do
      log "$cand: $wl (run $r/$REPEAT)"
      cell "$cand" "$wl"
    done
    if runs mix; then
      log "$cand: mix, 2 bulk streams + tcp-crr --conns 8 (run $r/$REPEAT)"
      mix_cell "$cand"
    fi
    if runs hold; then
      log "$cand: hold $HOLD_CONNS (run $r/$REPEAT)"
      hold_cell "$cand"
    fi
    stop_pid "$CAND_PID"
    CAND_PID=""
  done
done

# --------------------------------------------------------------------------------- report
# fmt VALUE FORMAT: VALUE formatted, or "-" when empty.
fmt() {
  if [[ -n $1 ]]; then
    # shellcheck disable=SC2059 # the format is the caller's constant
    printf "$2" "$1"
  else
    printf -- '-'
  fi
}

echo
echo "## l4lb vs HAProxy vs nginx ($(uname -r), $NCPU CPUs)"
echo
echo "Proxy CPUs: $PROXY_SET, $WORKERS worker(s) each. Generator + echo backends: $CLIENT_SET.$( ((SHARED)) && echo ' Shared CPUs: the generator competes with the proxy.')"
echo "Median of $REPEAT run(s), ${DURATION} s each; hold: $HOLD_CONNS connections held ${HOLD_S} s."
echo "tcp-stream: 4 connections through echo backends, Gbit/s sent plus received by the client."
echo "CPU: utime+stime of the proxy's processes (threads included). /GB: per GB the client sent"
echo "plus received. /1k conn: CPU ms per 1,000 connections (crr: one per transaction; hold: opening)."
echo "RSS/conn: proxy RSS while the connections are held minus its RSS just after start, per"
echo "connection (user-space memory only; kernel socket buffers are not in RSS)."
echo
echo "| workload | candidate | rate | p99 µs | vs HAProxy | CPU s/GB | CPU ms/1k conn | RSS/conn | errors |"
echo "|---|---|---|---|---|---|---|---|---|"
REPORT_WL=("${WORKLOADS[@]}")
runs hold && REPORT_WL+=(hold)
for wl in "${REPORT_WL[@]}"; do
  hp=$(median "${RATE["haproxy|$wl"]:-}")
  for cand in "${WANT[@]}"; do
    key="$cand|$wl"
    label=$wl
    [[ $wl == hold ]] && label="hold $HOLD_CONNS"
    if [[ -n ${SKIP[$cand]:-} ]]; then
      echo "| $label | $cand | skipped: ${SKIP[$cand]} | | | | | | |"
      continue
    fi
    rate=$(median "${RATE[$key]:-}")
    if [[ -z $rate ]]; then
      echo "| $label | $cand | ${NOTE[$key]:-n/a} | | | | | | |"
      continue
    fi
    p99=$(median "${P99[$key]:-}")
    ratio="n/a"
    if [[ -n $hp ]]; then
      ratio=$(awk -v a="$rate" -v b="$hp" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')
    fi
    cpu_gb=$(median "${CPU_GB[$key]:-}")
    cpu_kc=$(median "${CPU_KC[$key]:-}")
    rss=$(median "${RSS_CONN[$key]:-}")
    errs=$(median "${ERRS[$key]:-}")
    note=${NOTE[$key]:-}
    rate_fmt='%.0f'
    [[ ${UNIT[$key]:-} == Gbit/s ]] && rate_fmt='%.2f'
    # shellcheck disable=SC2059 # rate_fmt is one of two constants
    printf '| %s | %s | %s %s%s | %s | %s | %s | %s | %s | %s |\n' \
      "$label" "$cand" "$(printf "$rate_fmt" "$rate")" "${UNIT[$key]:-}" "${note:+ ($note)}" \
      "$(fmt "$p99" '%.0f')" "$ratio" "$(fmt "$cpu_gb" '%.2f')" "$(fmt "$cpu_kc" '%.1f')" \
      "$(fmt "$rss" '%.0f B')" "$(fmt "$errs" '%.0f')"
  done
done
if runs mix; then
  echo
  echo "### Mixed load: 2 bulk streams + connect-per-request"
  echo
  echo "2 tcp-stream connections (both directions, echo) run $((MIX_DURATION + 2)) s; 1 s in, tcp-crr"
  echo "--conns 8 --size 1 runs ${MIX_DURATION} s through the same candidate. Median of $REPEAT run(s)."
  echo "Latency: one connect + 1-byte request + answer + close, µs. vs HAProxy: conn/s ratio,"
  echo "p99 ratio (lower is better), Gbit/s ratio."
  echo
  echo "| candidate | conn/s | p50 µs | p90 µs | p99 µs | bulk Gbit/s | vs HAProxy (conn/s, p99, Gbit/s) | errors |"
  echo "|---|---|---|---|---|---|---|---|"
  hr=$(median "${MIX_RATE[haproxy]:-}")
  hp99=$(median "${MIX_P99[haproxy]:-}")
  hg=$(median "${MIX_GBIT[haproxy]:-}")
  for cand in "${WANT[@]}"; do
    if [[ -n ${SKIP[$cand]:-} ]]; then
      echo "| $cand | skipped: ${SKIP[$cand]} | | | | | | |"
      continue
    fi
    rate=$(median "${MIX_RATE[$cand]:-}")
    if [[ -z $rate ]]; then
      echo "| $cand | ${MIX_NOTE[$cand]:-n/a} | | | | | | |"
      continue
    fi
    p99=$(median "${MIX_P99[$cand]:-}")
    gbit=$(median "${MIX_GBIT[$cand]:-}")
    ratio="n/a"
    if [[ -n $hr && -n $hp99 && -n $hg ]]; then
      ratio=$(awk -v r="$rate" -v hr="$hr" -v p="$p99" -v hp="$hp99" -v g="$gbit" -v hg="$hg" \
        'BEGIN { printf "%.2fx, %.2fx, %.2fx", (hr > 0 ? r / hr : 0), (hp > 0 ? p / hp : 0), (hg > 0 ? g / hg : 0) }')
    fi
    printf '| %s | %.0f | %.0f | %.0f | %.0f | %.2f | %s | %s |\n' "$cand" "$rate" \
      "$(median "${MIX_P50[$cand]}")" "$(median "${MIX_P90[$cand]}")" "$p99" "$gbit" "$ratio" \
      "$(median "${MIX_ERRS[$cand]}")"
    echo "runs, $cand: conn/s${MIX_RATE[$cand]}; p99${MIX_P99[$cand]}; Gbit/s${MIX_GBIT[$cand]}" >>"$TMP/mix-runs.txt"
  done
  echo
  sed 's/^/- /' "$TMP/mix-runs.txt" 2>/dev/null || true
  for l in "${MIX_LOOP[@]}"; do
    [[ -n $l ]] && echo "- l4lb worker loop during the mix (l4lb_worker_loop_seconds): $l"
  done
fi
echo
log "done in $(($(date +%s) - STARTED)) s"
