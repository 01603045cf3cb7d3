#!/usr/bin/env bash
# l4lb against HAProxy and nginx measured with the tools operators use: wrk (keep-alive and
# `Connection: close`) against nginx HTTP backends, iperf3 -P1 and -P4, a UDP echo (32 flows
# of 64-byte datagrams, l4lb-loadgen udp-rr) and N idle connections (RSS per connection).
#
# Candidates: direct (no proxy) | l4lb | haproxy (mode tcp, no splice) | haproxy-splice
# (`option splice-auto`) | nginx (stream, reuseport); l4lb-b is a second l4lb (L4LB_B_BIN,
# L4LB_B_WORKERS) for A/B runs of two builds or settings.
# Placement, the same for every candidate: the proxy pinned to --proxy-cpus (default CPU 1)
# with --workers workers/threads/processes (default 2); wrk, iperf3, the UDP client and every
# backend pinned to --client-cpus (default CPU 0).
# Each repeat measures one workload at a time on every candidate back to back (each started
# for its cell), in an order rotated by one per repeat; cells are the median of the repeats.
#
# Cost, per unit of work (request, connection, GB): the proxy's own CPU (utime+stime of its
# processes and threads) and the whole machine's CPU (all cores from /proc/stat: user, nice,
# system, irq and softirq; not idle, iowait or steal). "added" is the machine's CPU per unit
# through the candidate minus the same for direct in the same repeat: the work a proxy adds
# anywhere on the machine (in its own process, in the kernel on its behalf, and the extra
# wake-ups and segments it causes the client and the backends), median over the repeats.
# "Ceiling": each candidate's request/response rate and p99 over direct's in the same repeat.
# Where the clients' CPU is saturated, direct is as fast as a proxy on another CPU can let it
# go, so that ratio is how close a candidate comes to the best any proxy could do.
# "Busy": the client CPUs' and the proxy CPUs' busy share while the tool ran; a CPU busy
# throughout is what set that cell's rate (both, for a proxy that is as slow as the clients).
#
# --counters adds, per unit of work: TCP segments in/out, data segments sent, pure ACKs,
# delayed ACKs (nstat), the client's, the backends' and the proxy's context switches
# (voluntary + involuntary), the proxy's syscalls and epoll_waits (perf stat), and after the
# runs one strace sample per candidate of the proxy's read/write sizes under wrk keep-alive;
# in iperf3 cells, 3 `ss -tmi` samples of the sockets sending to the iperf3 server
# (congestion control, pacing rate, unsent bytes, time limited by the receiver's window).
# Counters are machine-wide: run it on an otherwise quiet machine.
#
# vCPU placement: a VM's host may place the proxy's CPU and the clients' CPU on neighbouring
# cores or far apart, and move them while the script runs; far apart, every proxied workload
# loses 6-19% (docs/benchmarks.md: a cache line's round trip took 42-60 ns near on the
# development VM, 346-403 ns far) while direct, on one CPU, loses 0-4%. So every cell (but
# hold) samples the round trip of a cache line between the first proxy CPU and the first
# client CPU (`l4lb-loadgen core-rtt`, at SCHED_FIFO, 1-2 ms every 0.5 s), and a cell with more
# than one sample above 3x the smallest round trip seen in the run ran far apart: it is
# measured again, up to --placement-tries times in all (the last try counts whatever its
# placement). Before each try it waits, probing once a second for up to --placement-wait
# seconds, for the CPUs to be near: the far placement can last minutes. Every try goes to
# --raw with its median round trip and placement. At the end, a kept cell whose median sample
# is above 3x the run's smallest round trip counts as far too (a run that starts far apart
# takes the far round trip for the smallest until it first sees the CPUs near).
#
# Usage: scripts/compare-tools.sh [--quick] [--repeat N] [--duration S] [--workers N]
#            [--proxy-cpus LIST] [--client-cpus LIST] [--candidates LIST]
#            [--workloads LIST] [--hold-conns N] [--base-port P] [--counters] [--raw FILE]
#            [--placement-tries N] [--placement-wait S]
#   --quick           1 repeat of 1 s per cell, 2,000 idle connections
#   --repeat N        repeats, the median is reported (default 3)
#   --duration S      seconds per cell (default 4)
#   --workers N       proxy workers/threads/processes (default 2)
#   --proxy-cpus L    CPUs of the proxy, taskset syntax (default 1)
#   --client-cpus L   CPUs of the clients and backends (default 0)
#   --candidates L    comma list from direct,l4lb,l4lb-b,haproxy,haproxy-splice,nginx
#                     (default direct,l4lb,haproxy,haproxy-splice,nginx; direct is always run
#                     first in each repeat when "added" is wanted)
#   --workloads L     comma list from wrk-ka,wrk-close,iperf-p1,iperf-p4,udp-echo,hold
#                     (default all)
#   --hold-conns N    idle connections for the RSS row (default 9500)
#   --base-port P     ports P+1..P+5 backends, P+10.. candidates (default 25000)
#   --counters        segment, ACK, wake-up and syscall counters (see above)
#   --raw FILE        also write every run's numbers, one line each, to FILE
#   --profile DIR     perf record -a -g of every cell into DIR/CAND-WORKLOAD-RUN.data
#   --placement-tries N  tries per cell until one runs with the CPUs near (default 3; 1:
#                     sample the placement but never measure again)
#   --placement-wait S   before each try, wait up to S s for the CPUs to be near (default 30;
#                     0: never wait)
# Environment: BUILD_DIR (default target/release), L4LB_BIN, LOADGEN_BIN, L4LB_B_BIN,
# L4LB_B_WORKERS, L4LB_TCP_EXTRA and L4LB_B_TCP_EXTRA (lines added to each TCP listener of
# l4lb / l4lb-b, e.g. 'backend_congestion_control = "cubic"'), L4LB_PIN_CPUS and
# L4LB_B_PIN_CPUS (`runtime.pin_cpus` of l4lb / l4lb-b, default true: the workers pinned to
# one CPU share one thread; false gives each worker a thread of its own), NGINX_MODULES
# (config that loads nginx's stream module).
# Needs wrk, iperf3, nginx (with the stream module), haproxy; a missing one skips its rows.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

QUICK=0
REPEAT=""
DURATION=""
WORKERS=2
PROXY_CPUS_ARG=1
CLIENT_CPUS_ARG=0
CANDIDATES="direct,l4lb,haproxy,haproxy-splice,nginx"
WORKLOADS_ARG="wrk-ka,wrk-close,iperf-p1,iperf-p4,udp-echo,hold"
HOLD_CONNS=""
BASE_PORT=25000
COUNTERS=0
RAW=""
PROFILE=""
PLACEMENT_TRIES=3
PLACEMENT_WAIT=30
NGINX_MODULES=${NGINX_MODULES:-/etc/nginx/modules-enabled/*stream*.conf}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --repeat) REPEAT=${2:?--repeat needs N}; shift 2 ;;
    --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
    --workers) WORKERS=${2:?--workers needs N}; shift 2 ;;
    --proxy-cpus) PROXY_CPUS_ARG=${2:?--proxy-cpus needs a list}; shift 2 ;;
    --client-cpus) CLIENT_CPUS_ARG=${2:?--client-cpus needs a list}; shift 2 ;;
    --candidates) CANDIDATES=${2:?--candidates needs a list}; shift 2 ;;
    --workloads) WORKLOADS_ARG=${2:?--workloads needs a list}; shift 2 ;;
    --hold-conns) HOLD_CONNS=${2:?--hold-conns needs N}; shift 2 ;;
    --base-port) BASE_PORT=${2:?--base-port needs a port}; shift 2 ;;
    --counters) COUNTERS=1; shift ;;
    --raw) RAW=${2:?--raw needs a file}; shift 2 ;;
    --profile) PROFILE=${2:?--profile needs a directory}; shift 2 ;;
    --placement-tries) PLACEMENT_TRIES=${2:?--placement-tries needs N}; shift 2 ;;
    --placement-wait) PLACEMENT_WAIT=${2:?--placement-wait needs seconds}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare-tools: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
if ((QUICK)); then
  REPEAT=${REPEAT:-1}
  DURATION=${DURATION:-1}
  HOLD_CONNS=${HOLD_CONNS:-2000}
else
  REPEAT=${REPEAT:-3}
  DURATION=${DURATION:-4}
  HOLD_CONNS=${HOLD_CONNS:-9500}
fi
for n in "$REPEAT" "$HOLD_CONNS" "$BASE_PORT" "$WORKERS" "$PLACEMENT_TRIES"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "compare-tools: $n is not a positive integer" >&2; exit 2; }
done
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || { echo "compare-tools: --duration takes whole seconds" >&2; exit 2; }
[[ $PLACEMENT_WAIT =~ ^[0-9]+$ ]] || { echo "compare-tools: --placement-wait takes whole seconds" >&2; exit 2; }

BUILD_DIR=${BUILD_DIR:-target/release}
L4LB_BIN=${L4LB_BIN:-$BUILD_DIR/l4lb}
L4LB_B_BIN=${L4LB_B_BIN:-$L4LB_BIN}
L4LB_B_WORKERS=${L4LB_B_WORKERS:-$WORKERS}
L4LB_TCP_EXTRA=${L4LB_TCP_EXTRA:-}
L4LB_B_TCP_EXTRA=${L4LB_B_TCP_EXTRA:-}
L4LB_PIN_CPUS=${L4LB_PIN_CPUS:-true}
L4LB_B_PIN_CPUS=${L4LB_B_PIN_CPUS:-true}
for pin in "$L4LB_PIN_CPUS" "$L4LB_B_PIN_CPUS"; do
  [[ $pin == true || $pin == false ]] || { echo "compare-tools: L4LB_PIN_CPUS and L4LB_B_PIN_CPUS take true or false" >&2; exit 2; }
done
LOADGEN_BIN=${LOADGEN_BIN:-$BUILD_DIR/l4lb-loadgen}
TEMPLATES=scripts/templates
if [[ ! -x "$LOADGEN_BIN" ]]; then
  echo "compare-tools: $LOADGEN_BIN not found; build first: cargo build --release --bins" >&2
  exit 1
fi

log() { echo "compare-tools: $*" >&2; }

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

IFS=, read -ra WANT <<<"$CANDIDATES"
for c in "${WANT[@]}"; do
  case "$c" in direct | l4lb | l4lb-b | haproxy | haproxy-splice | nginx) ;;
    *) log "unknown candidate $c"; exit 2 ;;
  esac
done
IFS=, read -ra WORKLOADS <<<"$WORKLOADS_ARG"
for w in "${WORKLOADS[@]}"; do
  case "$w" in wrk-ka | wrk-close | iperf-p1 | iperf-p4 | udp-echo | hold) ;;
    *) log "unknown workload $w"; exit 2 ;;
  esac
done
wants_wl() { [[ ",$WORKLOADS_ARG," == *",$1,"* ]]; }

# ---------------------------------------------------------------------------- placement
PROXY_SET=$PROXY_CPUS_ARG
CLIENT_SET=$CLIENT_CPUS_ARG
read -ra ALL_CPUS <<<"$(allowed_cpus)"
NCPU=${#ALL_CPUS[@]}
PROXY_PIN=()
CLIENT_PIN=()
if command -v taskset >/dev/null 2>&1 && ((NCPU >= 2)); then
  PROXY_PIN=(taskset -c "$PROXY_SET")
  CLIENT_PIN=(taskset -c "$CLIENT_SET")
else
  PROXY_SET="(unpinned)"
  CLIENT_SET="(unpinned)"
fi

want_fds=$((2 * HOLD_CONNS + 2000))
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $want_fds ]]; then
  ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
if ((NOFILE < 2 * HOLD_CONNS + 400)); then
  HOLD_CONNS=$(((NOFILE - 400) / 2))
  log "open-files limit $NOFILE: holding $HOLD_CONNS connections"
fi
# HAProxy wants 2 descriptors per connection and 2 per splice pipe within the limit.
HAPROXY_MAXCONN=$((HOLD_CONNS + 100))
HAPROXY_MAXPIPES=$(((NOFILE - 200 - 2 * HAPROXY_MAXCONN) / 2))
((HAPROXY_MAXPIPES > 512)) && HAPROXY_MAXPIPES=512
((HAPROXY_MAXPIPES < 16)) && HAPROXY_MAXPIPES=16

TMP=$(mktemp -d "${TMPDIR:-/tmp}/l4lb-compare-tools.XXXXXX")
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------- ports
HTTP1=$((BASE_PORT + 1))
HTTP2=$((BASE_PORT + 2))
IPERF_B=$((BASE_PORT + 3))
ECHO1=$((BASE_PORT + 4))
ECHO2=$((BASE_PORT + 5))
# Candidate k listens on BASE+10k+0 (HTTP), +1 (iperf3), +2 (TCP echo), +2/udp (UDP echo).
cand_base() {
  case "$1" in
    l4lb) echo $((BASE_PORT + 10)) ;;
    l4lb-b) echo $((BASE_PORT + 20)) ;;
    haproxy) echo $((BASE_PORT + 30)) ;;
    haproxy-splice) echo $((BASE_PORT + 40)) ;;
    nginx) echo $((BASE_PORT + 50)) ;;
  esac
}
for p in $HTTP1 $HTTP2 $IPERF_B $ECHO1 $ECHO2 $((BASE_PORT + 10)) $((BASE_PORT + 20)) \
  $((BASE_PORT + 30)) $((BASE_PORT + 40)) $((BASE_PORT + 50)); do
  if port_open 127.0.0.1 "$p"; then
    log "port $p is in use; pick other ports with --base-port"
    exit 1
  fi
done

# ------------------------------------------------------------------------------- tools
declare -A SKIP=()
have() { command -v "$1" >/dev/null 2>&1; }
for c in "${WANT[@]}"; do
  case "$c" in
    l4lb) [[ -x $L4LB_BIN ]] || SKIP[$c]="$L4LB_BIN not built" ;;
    l4lb-b) [[ -x $L4LB_B_BIN ]] || SKIP[$c]="$L4LB_B_BIN not built" ;;
    haproxy | haproxy-splice) have haproxy || SKIP[$c]="haproxy not installed" ;;
    nginx)
      if ! have nginx; then
        SKIP[$c]="nginx not installed"
      elif nginx -V 2>&1 | grep -q -- '--with-stream=dynamic' && ! compgen -G "$NGINX_MODULES" >/dev/null; then
        SKIP[$c]="nginx stream module not installed"
      fi
      ;;
  esac
done
declare -A WL_SKIP=()
for w in wrk-ka wrk-close; do
  have wrk || WL_SKIP[$w]="wrk not installed"
  have nginx || WL_SKIP[$w]="nginx (HTTP backend) not installed"
done
for w in iperf-p1 iperf-p4; do have iperf3 || WL_SKIP[$w]="iperf3 not installed"; done
# Scheduler and IPI events, machine-wide, counted in --counters mode: wake-ups, wake-ups of
# a polling idle CPU that need no IPI, and IPIs sent (what a wake-up across cores costs).
# Per process (client, backends, proxy): context switches (wake-ups), syscalls, epoll_waits.
PROC_EVENTS="context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait"
SCHED_EVENTS="sched:sched_wakeup,sched:sched_wake_idle_without_ipi,ipi:ipi_send_cpu,irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry"
CLIENT_CPU_LIST=$(expand_cpus "$CLIENT_CPUS_ARG")
PROXY_CPU_LIST=$(expand_cpus "$PROXY_CPUS_ARG")
# The placement probe (see the top): RTT_CMD stays empty where it cannot tell anything (no
# pinning, or the proxy and the clients share their first CPU).
RTT_CMD=()
RTT_MIN=""
RTT_PID=""
REDONE=0
FAR_KEPT=0
WAITED=0
read -r RTT_P _ <<<"$PROXY_CPU_LIST"
read -r RTT_C _ <<<"$CLIENT_CPU_LIST"
if ((${#PROXY_PIN[@]})) && [[ $RTT_P != "$RTT_C" ]]; then
  RTT_CMD=("$LOADGEN_BIN" core-rtt --cpus "$RTT_P,$RTT_C" --rounds 2700)
  have chrt && chrt -f 50 true 2>/dev/null && RTT_CMD=(chrt -f 50 "${RTT_CMD[@]}")
  for ((n = 0; n < 5; n++)); do
    rtt_v=$("${RTT_CMD[@]}" 2>/dev/null) || { RTT_CMD=(); break; }
    RTT_MIN=$(awk -v a="$rtt_v" -v b="${RTT_MIN:-$rtt_v}" 'BEGIN { print (a < b ? a : b) }')
  done
  if ((${#RTT_CMD[@]} == 0)); then
    log "core-rtt did not run on CPUs $RTT_P,$RTT_C: cells are not checked for placement"
    RTT_MIN=""
  fi
fi
if [[ -n $PROFILE ]]; then
  have perf || { log "--profile needs perf"; exit 1; }
  mkdir -p "$PROFILE"
fi
if ((COUNTERS)); then
  for t in nstat perf strace; do
    have "$t" || { log "--counters needs $t"; exit 1; }
  done
fi

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

# ------------------------------------------------------------------------------ backends
BACKEND_NGINX_PID=""
IPERF_PID=""
ECHO_PID=""
start_backends() {
  if wants_wl wrk-ka || wants_wl wrk-close; then
    if have nginx; then
      render "$TEMPLATES/tools-backend-nginx.conf.tmpl" "$TMP/backend-nginx.conf" \
        "NGINX_USER=$(id -un)" "NOFILE=$NOFILE" "TMP=$TMP" \
        "WORKER_CONNECTIONS=$((HOLD_CONNS + 1000))" "PORT1=$HTTP1" "PORT2=$HTTP2"
      "${CLIENT_PIN[@]}" nginx -e "$TMP/backend-nginx-startup.log" -c "$TMP/backend-nginx.conf" \
        >"$TMP/backend-nginx.log" 2>&1 &
      BACKEND_NGINX_PID=$!
      PIDS+=("$BACKEND_NGINX_PID")
      if ! wait_port "$HTTP1" "$BACKEND_NGINX_PID" || ! wait_port "$HTTP2" "$BACKEND_NGINX_PID"; then
        log "nginx HTTP backends did not start"
        cat "$TMP"/backend-nginx*.log >&2
        exit 1
      fi
    fi
  fi
  if (wants_wl iperf-p1 || wants_wl iperf-p4) && have iperf3; then
    "${CLIENT_PIN[@]}" iperf3 -s -p "$IPERF_B" -B 127.0.0.1 >"$TMP/iperf3-server.log" 2>&1 &
    IPERF_PID=$!
    PIDS+=("$IPERF_PID")
    wait_port "$IPERF_B" "$IPERF_PID" || { log "iperf3 server did not start"; exit 1; }
  fi
  "${CLIENT_PIN[@]}" "$LOADGEN_BIN" serve --mode echo --threads 1 \
    --tcp "127.0.0.1:$ECHO1" --tcp "127.0.0.1:$ECHO2" \
    --udp "127.0.0.1:$ECHO1" --udp "127.0.0.1:$ECHO2" >"$TMP/echo.log" 2>&1 &
  ECHO_PID=$!
  PIDS+=("$ECHO_PID")
  if ! wait_port "$ECHO1" "$ECHO_PID" || ! wait_port "$ECHO2" "$ECHO_PID"; then
    log "echo backends did not start"
    cat "$TMP/echo.log" >&2
    exit 1
  fi
}

# ----------------------------------------------------------------------------- candidates
CAND_PID=""
HTTP_T=""
IPERF_T=""
ECHO_T=""
UDP_T=""
start_candidate() {
  local name=$1 base bin workers tcp_extra pin splice="" cfg
  CAND_PID=""
  if [[ $name == direct ]]; then
    HTTP_T=127.0.0.1:$HTTP1
    IPERF_T=127.0.0.1:$IPERF_B
    ECHO_T=127.0.0.1:$ECHO1
    UDP_T=127.0.0.1:$ECHO1
    return 0
  fi
  base=$(cand_base "$name")
  HTTP_T=127.0.0.1:$base
  IPERF_T=127.0.0.1:$((base + 1))
  ECHO_T=127.0.0.1:$((base + 2))
  UDP_T=127.0.0.1:$((base + 2))
  case "$name" in
    l4lb | l4lb-b)
      bin=$L4LB_BIN
      workers=$WORKERS
      tcp_extra=$L4LB_TCP_EXTRA
      pin=$L4LB_PIN_CPUS
      if [[ $name == l4lb-b ]]; then
        bin=$L4LB_B_BIN
        workers=$L4LB_B_WORKERS
        tcp_extra=$L4LB_B_TCP_EXTRA
        pin=$L4LB_B_PIN_CPUS
      fi
      cfg="$TMP/$name.toml"
      render "$TEMPLATES/tools-l4lb.toml.tmpl" "$cfg" "WORKERS=$workers" "TCP_EXTRA=$tcp_extra" \
        "PIN_CPUS=$pin" \
        "LISTEN_HTTP=$HTTP_T" "LISTEN_IPERF=$IPERF_T" "LISTEN_ECHO=$ECHO_T" "LISTEN_UDP=$UDP_T" \
        "HTTP_BACKENDS=  { addr = \"127.0.0.1:$HTTP1\" },
  { addr = \"127.0.0.1:$HTTP2\" }," \
        "IPERF_BACKENDS=  { addr = \"127.0.0.1:$IPERF_B\" }," \
        "ECHO_BACKENDS=  { addr = \"127.0.0.1:$ECHO1\" },
  { addr = \"127.0.0.1:$ECHO2\" },"
      RUST_LOG=warn "${PROXY_PIN[@]}" "$bin" --config "$cfg" >"$TMP/$name.log" 2>&1 &
      CAND_PID=$!
      ;;
    haproxy | haproxy-splice)
      [[ $name == haproxy-splice ]] && splice="    option splice-auto"
      render "$TEMPLATES/tools-haproxy.cfg.tmpl" "$TMP/$name.cfg" \
        "WORKERS=$WORKERS" "MAXCONN=$HAPROXY_MAXCONN" "MAXPIPES=$HAPROXY_MAXPIPES" "TMP=$TMP" \
        "SPLICE=$splice" "LISTEN_HTTP=$HTTP_T" "LISTEN_IPERF=$IPERF_T" "LISTEN_ECHO=$ECHO_T" \
        "HTTP_SERVERS=    server h1 127.0.0.1:$HTTP1
    server h2 127.0.0.1:$HTTP2" \
        "IPERF_SERVERS=    server i1 127.0.0.1:$IPERF_B" \
        "ECHO_SERVERS=    server e1 127.0.0.1:$ECHO1
    server e2 127.0.0.1:$ECHO2"
      "${PROXY_PIN[@]}" haproxy -db -f "$TMP/$name.cfg" >"$TMP/$name.log" 2>&1 &
      CAND_PID=$!
      ;;
    nginx)
      render "$TEMPLATES/tools-nginx.conf.tmpl" "$TMP/nginx.conf" \
        "WORKERS=$WORKERS" "NOFILE=$NOFILE" "TMP=$TMP" \
        "NGINX_MODULES=$NGINX_MODULES" "NGINX_USER=$(id -un)" \
        "WORKER_CONNECTIONS=$((2 * HOLD_CONNS + 1000))" \
        "LISTEN_HTTP=$HTTP_T" "LISTEN_IPERF=$IPERF_T" "LISTEN_ECHO=$ECHO_T" "LISTEN_UDP=$UDP_T" \
        "HTTP_SERVERS=        server 127.0.0.1:$HTTP1;
        server 127.0.0.1:$HTTP2;" \
        "IPERF_SERVERS=        server 127.0.0.1:$IPERF_B;" \
        "ECHO_SERVERS=        server 127.0.0.1:$ECHO1;
        server 127.0.0.1:$ECHO2;"
      "${PROXY_PIN[@]}" nginx -e "$TMP/nginx-startup.log" -c "$TMP/nginx.conf" >"$TMP/nginx.log" 2>&1 &
      CAND_PID=$!
      ;;
  esac
  PIDS+=("$CAND_PID")
  if ! wait_port "${HTTP_T##*:}" "$CAND_PID" || ! wait_port "${ECHO_T##*:}" "$CAND_PID"; then
    log "$name did not start; its output:"
    cat "$TMP/$name.log" "$TMP/nginx-error.log" "$TMP/nginx-startup.log" 2>/dev/null | tail -n 20 >&2
    stop_pid "$CAND_PID"
    CAND_PID=""
    return 1
  fi
}

# ------------------------------------------------------------------------------ counters
# machine_ticks: busy CPU ticks of the whole machine (user nice system irq softirq), then
# the kernel's part of them (system irq softirq).
machine_ticks() {
  local _cpu user nice system _idle _iowait irq softirq _rest
  read -r _cpu user nice system _idle _iowait irq softirq _rest </proc/stat
  echo "$((user + nice + system + irq + softirq)) $((system + irq + softirq))"
}

# cpus_ticks "0 1": busy ticks of those CPUs (the same fields as machine_ticks).
cpus_ticks() {
  awk -v want=" $1 " '$1 ~ /^cpu[0-9]+$/ && index(want, " " substr($1, 4) " ") {
    s += $2 + $3 + $4 + $7 + $8 } END { print s + 0 }' /proc/stat
}

# busy_share TICKS NANOSECONDS "0 1": the share of those CPUs' time that was busy, averaged
# over them (1: every one of them busy throughout).
busy_share() {
  awk -v t="$1" -v ns="$2" -v n="$(wc -w <<<"$3")" -v hz="$CLK_TCK" 'BEGIN {
    if (ns <= 0 || n <= 0) { print "-"; exit }
    printf "%.2f", (t / hz) / (ns / 1e9) / n }'
}

# idle_entries "1": times those CPUs entered an idle state (cpuidle usage counters); each
# entry means the next wake-up on that CPU needs an interrupt from another one.
idle_entries() {
  local c f total=0 v
  for c in $1; do
    for f in /sys/devices/system/cpu/cpu"$c"/cpuidle/state*/usage; do
      [[ -r $f ]] || continue
      read -r v <"$f"
      total=$((total + v))
    done
  done
  echo "$total"
}

NSTAT_KEYS=(TcpInSegs TcpOutSegs TcpExtTCPOrigDataSent TcpExtTCPPureAcks TcpExtTCPHPAcks
  TcpExtDelayedACKs TcpExtTCPHPHits TcpRetransSegs TcpOutRsts TcpExtTW TcpExtTCPAbortOnData
  TcpExtTCPAbortOnClose TcpExtListenOverflows TcpExtListenDrops)
# nstat_snap FILE: the absolute TCP counters (nstat -as: no history file is touched).
nstat_snap() {
  nstat -asz 2>/dev/null | awk '{ print $1, $2 }' >"$1"
}
# nstat_delta A B KEY
nstat_delta() {
  awk -v k="$3" 'FNR == NR { if ($1 == k) a = $2; next } $1 == k { b = $2 } END { print b - a }' "$1" "$2"
}

# ------------------------------------------------------------------------------- results
declare -A RATE=() P99=() PCPU=() PUSER=() MCPU=() KCPU=() ADDED=() UNIT=() CUNIT=() NOTE=() RSS=() CNT=()
# Per cell, in the order of RATE's: its placement, and its added CPU ("-" for direct).
declare -A PLACE=() ADDED_ALL=() RTTS=() BUSY_CLIENT=() BUSY_PROXY=()
declare -A DIRECT_MCPU=()

# per VALUE UNITS SCALE: VALUE * SCALE / UNITS, or empty when UNITS is 0.
per() {
  awk -v v="$1" -v n="$2" -v s="$3" 'BEGIN { if (n > 0) printf "%.6g", v * s / n }'
}

# to_us "3.84ms": wrk's latency in microseconds.
to_us() {
  awk -v x="$1" 'BEGIN {
    if (x ~ /us$/) { sub(/us$/, "", x); print x + 0 }
    else if (x ~ /ms$/) { sub(/ms$/, "", x); print x * 1000 }
    else if (x ~ /s$/) { sub(/s$/, "", x); print x * 1000000 } }'
}

# run_tool WL OUTFILE: runs workload WL's client against the current targets, pinned to the
# client CPUs, output in OUTFILE; with --counters wrapped in /usr/bin/time for its wake-ups.
run_tool() {
  local wl=$1 outf=$2 cmd=()
  case "$wl" in
    wrk-ka) cmd=(wrk -t2 -c64 -d"${DURATION}s" --latency "http://$HTTP_T/") ;;
    wrk-close) cmd=(wrk -t2 -c64 -d"${DURATION}s" --latency -H "Connection: close" "http://$HTTP_T/") ;;
    iperf-p1) cmd=(iperf3 -c "${IPERF_T%:*}" -p "${IPERF_T##*:}" -P1 -t "$DURATION" -J) ;;
    iperf-p4) cmd=(iperf3 -c "${IPERF_T%:*}" -p "${IPERF_T##*:}" -P4 -t "$DURATION" -J) ;;
    udp-echo) cmd=("$LOADGEN_BIN" udp-rr --target "$UDP_T" --conns 32 --size 64 --timeout-ms 500
      --duration "$DURATION" --threads 1 --json --quiet) ;;
  esac
  if ((COUNTERS)); then
    "${CLIENT_PIN[@]}" perf stat -x, -o "$TMP/perf-client.out" -e "$PROC_EVENTS" -- "${cmd[@]}" \
      >"$outf" 2>"$outf.err" || true
  else
    "${CLIENT_PIN[@]}" "${cmd[@]}" >"$outf" 2>"$outf.err" || true
  fi
}

# rtt_start: sample the placement into $TMP/rtt every 0.5 s until rtt_stop.
rtt_start() {
  : >"$TMP/rtt"
  ((${#RTT_CMD[@]})) || return 0
  (while :; do
    "${RTT_CMD[@]}" >>"$TMP/rtt" 2>/dev/null || true
    sleep 0.5
  done) &
  RTT_PID=$!
  PIDS+=("$RTT_PID")
}

rtt_stop() {
  [[ -n $RTT_PID ]] || return 0
  kill "$RTT_PID" 2>/dev/null || true
  wait "$RTT_PID" 2>/dev/null || true
  RTT_PID=""
}

# rtt_wait_near: probe once a second, up to --placement-wait seconds, until a probe is within
# 3x the smallest round trip (the CPUs are near); adds the seconds waited to WAITED.
rtt_wait_near() {
  local n v
  ((${#RTT_CMD[@]})) && [[ -n $RTT_MIN ]] || return 0
  for ((n = 0; n < PLACEMENT_WAIT; n++)); do
    v=$("${RTT_CMD[@]}" 2>/dev/null) || return 0
    awk -v v="$v" -v m="$RTT_MIN" 'BEGIN { exit !(v <= 3 * m) }' && break
    sleep 1
  done
  if ((n > 0)); then
    log "  waited $n s for CPUs $RTT_P and $RTT_C to be near"
    WAITED=$((WAITED + n))
  fi
}

# rtt_verdict: "MEDIAN PLACEMENT MIN" for the cell's samples: far when more than one sample
# is above 3x the smallest round trip seen so far (MIN, which the samples may lower);
# "- near MIN" without samples.
rtt_verdict() {
  awk -v min="${RTT_MIN:-}" '
    $1 ~ /^[0-9.]+$/ { v[n++] = $1 + 0; if (min == "" || $1 + 0 < min + 0) min = $1 + 0 }
    END {
      if (n == 0) { print "-", "near", (min == "" ? "-" : min); exit }
      for (i = 1; i < n; i++)  # insertion sort: mawk has no asort
        for (j = i; j > 0 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
      for (i = 0; i < n; i++) if (v[i] > 3 * min) far++
      printf "%.1f %s %s\n", v[int((n - 1) / 2)], (far > 1 ? "far" : "near"), min
    }' "$TMP/rtt"
}

# backend_of WL: the PID of the backend process tree that workload WL talks to.
backend_of() {
  case "$1" in
    wrk-*) echo "$BACKEND_NGINX_PID" ;;
    iperf-*) echo "$IPERF_PID" ;;
    *) echo "$ECHO_PID" ;;
  esac
}

# cell CAND WL REPEAT TRY: one run of WL through CAND; appends to the cell's lists. Returns 3,
# appending nothing, when the run had the CPUs far apart and TRY < --placement-tries.
cell() {
  local cand=$1 wl=$2 r=$3 try=$4 key="$1|$2" outf="$TMP/out" units rate p99 p0 p1 pu0 pu1 m0 m1 k0 k1 bpid
  local rtt placement
  if [[ $wl == udp-echo && $cand == haproxy* ]]; then
    NOTE[$key]="n/a (HAProxy has no UDP)"
    return 0
  fi
  local perf_proxy="" perf_backend="" prof_pid="" n0 n1 k v line c0 c1 q0 q1 sched_pid="" who i0 i1
  local bc0 bc1 bq0 bq1 t0 t1
  p0=$(cpu_ticks "$CAND_PID")
  pu0=$(user_ticks "$CAND_PID")
  read -r m0 k0 <<<"$(machine_ticks)"
  if ((COUNTERS)); then
    bpid=$(backend_of "$wl")
    nstat_snap "$TMP/n0"
    c0=$(cpus_ticks "$CLIENT_CPU_LIST")
    q0=$(cpus_ticks "$PROXY_CPU_LIST")
    i0=$(idle_entries "$PROXY_CPU_LIST")
    perf stat -a -x, -o "$TMP/perf-sched.out" -e "$SCHED_EVENTS" >/dev/null 2>&1 &
    sched_pid=$!
    perf stat -x, -o "$TMP/perf-backend.out" -e "$PROC_EVENTS" \
      -p "$(tree_pids "$bpid" | tr ' ' ,)" >/dev/null 2>&1 &
    perf_backend=$!
    if [[ -n $CAND_PID ]]; then
      perf stat -x, -o "$TMP/perf-proxy.out" -e "$PROC_EVENTS" \
        -p "$(tree_pids "$CAND_PID" | tr ' ' ,)" >/dev/null 2>&1 &
      perf_proxy=$!
    fi
    sleep 0.3
  fi
  if [[ -n $PROFILE ]]; then
    perf record -a -g -q -o "$PROFILE/$cand-$wl-$r.data" >/dev/null 2>&1 &
    prof_pid=$!
    sleep 0.3
  fi
  local senders_pid=""
  if ((COUNTERS)) && [[ $wl == iperf-* ]]; then
    : >"$TMP/senders.out"
    senders_snapshot &
    senders_pid=$!
  fi
  rtt_start
  bc0=$(cpus_ticks "$CLIENT_CPU_LIST")
  bq0=$(cpus_ticks "$PROXY_CPU_LIST")
  t0=$(date +%s%N)
  run_tool "$wl" "$outf"
  t1=$(date +%s%N)
  read -r m1 k1 <<<"$(machine_ticks)"
  bc1=$(cpus_ticks "$CLIENT_CPU_LIST")
  bq1=$(cpus_ticks "$PROXY_CPU_LIST")
  rtt_stop
  if [[ -n $senders_pid ]]; then
    wait "$senders_pid" 2>/dev/null || true
    [[ -n ${SENDERS[$key]:-} ]] || SENDERS[$key]=$(<"$TMP/senders.out")
  fi
  if ((COUNTERS)); then
    c1=$(cpus_ticks "$CLIENT_CPU_LIST")
    q1=$(cpus_ticks "$PROXY_CPU_LIST")
    i1=$(idle_entries "$PROXY_CPU_LIST")
  fi
  p1=$(cpu_ticks "$CAND_PID")
  pu1=$(user_ticks "$CAND_PID")
  if [[ -n $prof_pid ]]; then
    kill -INT "$prof_pid" 2>/dev/null || true
    wait "$prof_pid" 2>/dev/null || true
  fi
  case "$wl" in
    wrk-*)
      rate=$(awk '/^Requests\/sec:/ { print $2 }' "$outf")
      units=$(awk '/requests in/ { print $1 }' "$outf")
      p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$outf")")
      if grep -q 'Non-2xx\|Socket errors' "$outf"; then
        NOTE[$key]="errors: $(grep 'Non-2xx\|Socket errors' "$outf" | tr -s ' ' | tr '\n' ';')"
      fi
      UNIT[$key]=$([[ $wl == wrk-ka ]] && echo req/s || echo conn/s)
      CUNIT[$key]=$([[ $wl == wrk-ka ]] && echo "µs/req" || echo "µs/conn")
      ;;
    iperf-*)
      # end.sum_received: the bytes the server received and the rate over the run.
      units=$(awk '/"sum_received"/ { f = 1 } f && /"bytes"/ { gsub(/[^0-9.]/, "", $2); print $2; exit }' "$outf")
      rate=$(awk '/"sum_received"/ { f = 1 } f && /"bits_per_second"/ { gsub(/[^0-9.e+]/, "", $2); printf "%.3f", $2 / 1e9; exit }' "$outf")
      p99=""
      UNIT[$key]="Gbit/s"
      CUNIT[$key]="s/GB"
      ;;
    udp-echo)
      line=$(tail -n 1 "$outf")
      if [[ $line == "{"* ]]; then
        rate=$(jget "$line" rate)
        p99=$(jget "$line" p99)
        units=$(jget "$line" transactions)
        [[ $(jget "$line" total 0) == 0 ]] || NOTE[$key]="errors: $(jget "$line" total)"
      fi
      UNIT[$key]="req/s"
      CUNIT[$key]="µs/req"
      ;;
  esac
  if [[ -z ${rate:-} || -z ${units:-} || ${units:-0} == 0 ]]; then
    log "$cand $wl: no result; client output:"
    tail -n 5 "$outf" "$outf.err" >&2 || true
    NOTE[$key]="failed"
    return 0
  fi
  read -r rtt placement RTT_MIN <<<"$(rtt_verdict)"
  if [[ $placement == far ]] && ((try < PLACEMENT_TRIES)); then
    [[ -z $RAW ]] || echo "run=$r cand=$cand wl=$wl rate=$rate p99_us=${p99:-} units=$units rtt_ns=$rtt placement=far kept=0" >>"$RAW"
    for v in $perf_proxy $perf_backend $sched_pid; do
      kill -INT "$v" 2>/dev/null || true
      wait "$v" 2>/dev/null || true
    done
    rm -f "$TMP"/perf-*.out
    log "  CPUs $RTT_P and $RTT_C were far apart ($rtt ns against $RTT_MIN): measuring again"
    REDONE=$((REDONE + 1))
    return 3
  fi
  [[ $placement == far ]] && FAR_KEPT=$((FAR_KEPT + 1))
  # Scale per unit: µs per request/connection, s per GB.
  local scale=1000000
  [[ $wl == iperf-* ]] && scale=1000000000
  local mcpu pcpu="" puser="" added=""
  mcpu=$(per "$((m1 - m0))" "$units" "$(awk -v s="$scale" -v t="$CLK_TCK" 'BEGIN { print s / t }')")
  KCPU[$key]+=" $(per "$((k1 - k0))" "$units" "$(awk -v s="$scale" -v t="$CLK_TCK" 'BEGIN { print s / t }')")"
  if [[ $cand == direct ]]; then
    DIRECT_MCPU[$wl|$r]=$mcpu
  else
    pcpu=$(per "$((p1 - p0))" "$units" "$(awk -v s="$scale" -v t="$CLK_TCK" 'BEGIN { print s / t }')")
    PCPU[$key]+=" $pcpu"
    puser=$(per "$((pu1 - pu0))" "$units" "$(awk -v s="$scale" -v t="$CLK_TCK" 'BEGIN { print s / t }')")
    PUSER[$key]+=" $puser"
    if [[ -n ${DIRECT_MCPU[$wl|$r]:-} ]]; then
      added=$(awk -v a="$mcpu" -v b="${DIRECT_MCPU[$wl|$r]}" 'BEGIN { printf "%.6g", a - b }')
      ADDED[$key]+=" $added"
    fi
  fi
  RATE[$key]+=" $rate"
  BUSY_CLIENT[$key]+=" $(busy_share "$((bc1 - bc0))" "$((t1 - t0))" "$CLIENT_CPU_LIST")"
  BUSY_PROXY[$key]+=" $(busy_share "$((bq1 - bq0))" "$((t1 - t0))" "$PROXY_CPU_LIST")"
  PLACE[$key]+=" $placement"
  RTTS[$key]+=" $rtt"
  ADDED_ALL[$key]+=" ${added:--}"
  [[ -n $p99 ]] && P99[$key]+=" $p99"
  MCPU[$key]+=" $mcpu"
  [[ -z $RAW ]] || echo "run=$r cand=$cand wl=$wl rate=$rate p99_us=${p99:-} units=$units machine_cpu=$mcpu proxy_cpu=${pcpu:-} proxy_user_cpu=${puser:-} added=${added:-} cpu_unit=${CUNIT[$key]} rtt_ns=$rtt placement=$placement kept=1" >>"$RAW"
  if ((COUNTERS)); then
    # Counters per request or connection; per GB for iperf3.
    [[ $wl == iperf-* ]] && units=$(awk -v b="$units" 'BEGIN { printf "%.6f", b / 1e9 }')
    for v in $perf_proxy $perf_backend; do
      kill -INT "$v" 2>/dev/null || true
      wait "$v" 2>/dev/null || true
    done
    for who in client backend proxy; do
      [[ -f $TMP/perf-$who.out ]] || continue
      v=$(awk -F, '$3 == "context-switches" { print $1 }' "$TMP/perf-$who.out")
      [[ $v =~ ^[0-9]+$ ]] && CNT[$key|$who ctx switches]+=" $(per "$v" "$units" 1)"
      v=$(awk -F, '$3 == "raw_syscalls:sys_enter" { print $1 }' "$TMP/perf-$who.out")
      [[ $v =~ ^[0-9]+$ ]] && CNT[$key|$who syscalls]+=" $(per "$v" "$units" 1)"
      v=$(awk -F, '$3 == "syscalls:sys_enter_epoll_wait" { print $1 }' "$TMP/perf-$who.out")
      [[ $v =~ ^[0-9]+$ ]] && CNT[$key|$who epoll_waits]+=" $(per "$v" "$units" 1)"
      rm -f "$TMP/perf-$who.out"
    done
    kill -INT "$sched_pid" 2>/dev/null || true
    wait "$sched_pid" 2>/dev/null || true
    IFS=, read -ra sched_names <<<"$SCHED_EVENTS"
    for k in "${sched_names[@]}"; do
      v=$(awk -F, -v k="$k" '$3 == k { print $1 }' "$TMP/perf-sched.out")
      [[ $v =~ ^[0-9]+$ ]] && CNT[$key|$k]+=" $(per "$v" "$units" 1)"
    done
    CNT[$key|client CPUs busy µs]+=" $(per "$((c1 - c0))" "$units" "$((1000000 / CLK_TCK))")"
    CNT[$key|proxy CPUs busy µs]+=" $(per "$((q1 - q0))" "$units" "$((1000000 / CLK_TCK))")"
    CNT[$key|proxy CPUs idle entries]+=" $(per "$((i1 - i0))" "$units" 1)"
    nstat_snap "$TMP/n1"
    for k in "${NSTAT_KEYS[@]}"; do
      CNT[$key|$k]+=" $(per "$(nstat_delta "$TMP/n0" "$TMP/n1" "$k")" "$units" 1)"
    done
    n0=$(nstat_delta "$TMP/n0" "$TMP/n1" TcpOutSegs)
    n1=$(nstat_delta "$TMP/n0" "$TMP/n1" TcpExtTCPOrigDataSent)
    CNT[$key|non-data segs out]+=" $(per "$((n0 - n1))" "$units" 1)"
  fi
}

# fd_count ROOT: open descriptors of ROOT's process tree.
fd_count() {
  local total=0 p fds
  for p in $(tree_pids "$1"); do
    fds=(/proc/"$p"/fd/*)
    total=$((total + ${#fds[@]}))
  done
  echo "$total"
}

RSS_BASE=0
# hold_cell CAND: HOLD_CONNS idle connections through the TCP echo listener; the proxy's
# RSS while they are held minus its RSS right after start, per connection.
hold_cell() {
  local cand=$1 key="$1|hold" rss1 lpid n json opened fds
  "${CLIENT_PIN[@]}" "$LOADGEN_BIN" hold --target "$ECHO_T" --conns "$HOLD_CONNS" \
    --hold 4 --timeout-ms 5000 --open-timeout 20 --threads 1 \
    --json >"$TMP/hold.json" 2>"$TMP/hold.err" &
  lpid=$!
  PIDS+=("$lpid")
  for ((n = 0; n < 300; n++)); do
    grep -q '^opened ' "$TMP/hold.err" 2>/dev/null && break
    kill -0 "$lpid" 2>/dev/null || break
    sleep 0.1
  done
  # "opened" means the kernel completed the handshakes; the proxy may still have some in its
  # accept queue. Sample once it holds two descriptors per connection (at most 10 s).
  opened=$(sed -n 's/^opened \([0-9]*\).*/\1/p' "$TMP/hold.err" 2>/dev/null | head -n 1)
  for ((n = 0; n < 100; n++)); do
    [[ -n $CAND_PID && -n $opened ]] || break
    (($(fd_count "$CAND_PID") >= 2 * opened)) && break
    sleep 0.1
  done
  sleep 0.3
  rss1=$(rss_kb "$CAND_PID")
  fds=$(fd_count "$CAND_PID")
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
  UNIT[$key]="conn/s"
  NOTE[$key]="verified $(jget "$json" verified)/$HOLD_CONNS"
  if [[ -n $CAND_PID ]] && ((opened > 0)); then
    RSS[$key]+=" $(awk -v a="$RSS_BASE" -v b="$rss1" -v n="$opened" 'BEGIN { print (b - a) * 1024 / n }')"
  fi
  if [[ -n $RAW ]]; then
    echo "run=$REP cand=$cand wl=hold opened=$opened rss_kb=$rss1 rss_base_kb=$RSS_BASE fds=$fds" >>"$RAW"
  fi
}

declare -A SENDERS=()
# senders_snapshot: at a quarter, a half and three quarters of an iperf3 cell, what `ss -tmi`
# says of the sockets sending to the iperf3 server (the proxy's backend side; for direct,
# iperf3's client): their congestion control, pacing rate, bytes not yet sent and share of
# time limited by the receiver's window. The control connection (under 1 MB acked) is left
# out.
senders_snapshot() {
  local n
  for ((n = 0; n < 3; n++)); do
    sleep "$(awk -v d="$DURATION" 'BEGIN { print d / 4 }')"
    ss -tmiH state established dst "127.0.0.1:$IPERF_B" 2>/dev/null
  done | awk '
    function val(tok, name) { sub(name, "", tok); return tok }
    function range(lo, hi, f) { return lo == "" ? "-" : (sprintf(f, lo) == sprintf(f, hi) ? sprintf(f, lo) : sprintf(f "-" f, lo, hi)) }
    function widen(i, v) { if (lo[i] == "" || v < lo[i]) lo[i] = v; if (hi[i] == "" || v > hi[i]) hi[i] = v }
    /bytes_acked:/ {
      acked = 0; pace = ""; notsent = 0; rwnd = 0; cc = ""
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^bytes_acked:/) acked = val($i, "bytes_acked:") + 0
        else if ($i == "pacing_rate") pace = $(i + 1)
        else if ($i ~ /^notsent:/) notsent = val($i, "notsent:") + 0
        else if ($i ~ /^rwnd_limited:/) { rwnd = $i; sub(/.*\(/, "", rwnd); rwnd += 0 }
        else if ($i ~ /^(bbr|cubic|reno|dctcp|htcp|vegas|westwood|bic)$/) cc = $i
      }
      if (acked < 1000000) next
      n++; algo[cc] = 1
      # ss writes the rate as 10804684688bps or as 10.8Gbps, depending on its version.
      scale = pace ~ /Gbps$/ ? 1 : pace ~ /Mbps$/ ? 1e-3 : pace ~ /Kbps$/ ? 1e-6 : 1e-9
      widen(1, (pace + 0) * scale); widen(2, notsent / 1e6); widen(3, rwnd)
    }
    END {
      if (n == 0) { print "-"; exit }
      a = ""; for (k in algo) a = a (a == "" ? "" : ",") k
      printf "%s; %d socket samples; pacing %s Gbit/s; unsent %s MB; rwnd_limited %s%%\n", a, n,
        range(lo[1], hi[1], "%.1f"), range(lo[2], hi[2], "%.1f"), range(lo[3], hi[3], "%.0f")
    }' >"$TMP/senders.out"
}

# io_sizes CAND: strace the proxy for 1 s of wrk keep-alive; calls per request and mean
# bytes of its reads and writes (EAGAIN returns counted apart).
declare -A IOSIZES=()
io_sizes() {
  local cand=$1 pids=() p wpid
  for p in $(tree_pids "$CAND_PID"); do pids+=(-p "$p"); done
  "${CLIENT_PIN[@]}" wrk -t2 -c64 -d"$((DURATION + 2))s" "http://$HTTP_T/" >"$TMP/wrk-strace.out" 2>&1 &
  wpid=$!
  PIDS+=("$wpid")
  sleep 1
  rm -f "$TMP"/strace.out.*
  timeout -s INT 1 strace -ff -qq -e signal=none \
    -e trace=read,recvfrom,recvmsg,readv,write,sendto,sendmsg,writev,epoll_wait \
    -o "$TMP/strace.out" "${pids[@]}" 2>/dev/null || true
  stop_pid "$wpid"
  IOSIZES[$cand]=$(cat "$TMP"/strace.out.* | awk '
    { name = $1; sub(/\(.*/, "", name) }
    / = -1 EAGAIN/ { eagain[name]++; next }
    / = [0-9]+$/ { n[name]++; bytes[name] += $NF; if ($NF < 1) zero[name]++ }
    END {
      for (k in n) if (k != "epoll_wait")
        printf "%s: %d calls, mean %.0f B; ", k, n[k], bytes[k] / n[k]
      for (k in eagain) printf "%s EAGAIN: %d; ", k, eagain[k]
      printf "epoll_wait: %d calls, %.1f events each", n["epoll_wait"], (n["epoll_wait"] ? bytes["epoll_wait"] / n["epoll_wait"] : 0)
    }')
}

# ------------------------------------------------------------------------------------ run
log "machine: $NCPU CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -r)"
log "proxies on CPU $PROXY_SET with $WORKERS workers; clients and backends on CPU $CLIENT_SET"
start_backends
[[ -n $RAW ]] && : >"$RAW"
STARTED=$(date +%s)
# Each repeat measures one workload at a time on every candidate, back to back, so that the
# cells compared in a repeat are seconds apart (this VM has slow phases lasting tens of
# seconds, docs/benchmarks.md): direct first (its machine CPU is what "added" subtracts), then
# the proxies in an order rotated per repeat, each started for its cell and stopped after it.
PROXIES=()
for c in "${WANT[@]}"; do [[ $c == direct ]] || PROXIES+=("$c"); done
NP=${#PROXIES[@]}
for c in "${WANT[@]}"; do
  [[ -n ${SKIP[$c]:-} ]] && log "skipping $c: ${SKIP[$c]}"
done
for ((REP = 1; REP <= REPEAT; REP++)); do
  order=()
  [[ ",$CANDIDATES," == *",direct,"* ]] && order+=(direct)
  for ((k = 0; k < NP; k++)); do order+=("${PROXIES[(k + REP - 1) % NP]}"); done
  for wl in "${WORKLOADS[@]}"; do
    [[ -n ${WL_SKIP[$wl]:-} ]] && continue
    for cand in "${order[@]}"; do
      [[ -n ${SKIP[$cand]:-} ]] && continue
      for ((try = 1; try <= PLACEMENT_TRIES; try++)); do
        [[ $wl == hold ]] || rtt_wait_near
        log "run $REP/$REPEAT: $wl: $cand$( ((try == 1)) || echo " (try $try)")"
        if ! start_candidate "$cand"; then
          SKIP[$cand]="did not start"
          log "skipping $cand from now on: it did not start"
          break
        fi
        sleep 0.3
        RSS_BASE=$(rss_kb "$CAND_PID")
        rc=0
        if [[ $wl == hold ]]; then
          hold_cell "$cand"
        else
          cell "$cand" "$wl" "$REP" "$try" || rc=$?
        fi
        if ((rc == 0 && COUNTERS && REP == 1)) && [[ $wl == wrk-ka && -n $CAND_PID ]]; then
          io_sizes "$cand"
        fi
        stop_pid "$CAND_PID"
        CAND_PID=""
        ((rc == 3)) || break
      done
    done
  done
done

# A run that starts with the CPUs far apart takes the far round trip for the smallest until it
# first sees them near, and keeps its first cells as near. Judged again with the run's
# smallest round trip, a kept cell whose median sample is above 3x it ran far apart.
LATE_FAR=0
if [[ -n $RTT_MIN ]]; then
  for key in "${!PLACE[@]}"; do
    read -r new late <<<"$(awk -v p="${PLACE[$key]}" -v r="${RTTS[$key]:-}" -v m="$RTT_MIN" 'BEGIN {
      n = split(p, a, " "); split(r, b, " "); out = ""; late = 0
      for (i = 1; i <= n; i++) {
        if (a[i] == "near" && b[i] ~ /^[0-9.]+$/ && b[i] + 0 > 3 * m) { a[i] = "far"; late++ }
        out = out (i > 1 ? "," : "") a[i]
      }
      print out, late
    }')"
    PLACE[$key]=" ${new//,/ }"
    LATE_FAR=$((LATE_FAR + late))
  done
  FAR_KEPT=$((FAR_KEPT + LATE_FAR))
fi

# --------------------------------------------------------------------------------- report
fmt() {
  if [[ -n $1 ]]; then
    # shellcheck disable=SC2059 # the format is the caller's constant
    printf "$2" "$1"
  else
    printf -- '-'
  fi
}
ANCHORS=()
for c in haproxy haproxy-splice nginx; do
  [[ ",$CANDIDATES," == *",$c,"* && -z ${SKIP[$c]:-} ]] && ANCHORS+=("$c")
done

echo
echo "## l4lb vs HAProxy vs nginx with wrk, iperf3 and a UDP echo"
echo
echo "Machine: $NCPU CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -r)."
echo "Proxies on CPU $PROXY_SET with $WORKERS workers/threads/processes; wrk, iperf3, the UDP client and"
echo "the backends on CPU $CLIENT_SET. Median of $REPEAT run(s) of ${DURATION} s; a run measures one workload on"
echo "every candidate back to back, each restarted for its cell, in rotated order. proxy CPU: the"
echo "proxy's utime+stime per unit. machine CPU: busy time of all CPUs"
echo "(softirq included) per unit; added: machine CPU through the proxy minus direct's, same run."
echo "wrk: 2 threads, 64 connections, nginx backends (13-byte body); iperf3: Gbit/s received;"
echo "UDP echo: 32 flows of 64-byte datagrams (l4lb-loadgen udp-rr); hold: $HOLD_CONNS idle connections."
if ((${#RTT_CMD[@]})); then
  echo "Placement: a cache line's round trip between CPU $RTT_P and CPU $RTT_C, sampled every 0.5 s in each"
  echo "cell (smallest $RTT_MIN ns); a cell with more than one sample above 3x that ran with the vCPUs"
  echo "far apart and was measured again, up to $PLACEMENT_TRIES tries: $REDONE cell(s) measured again, $FAR_KEPT kept far apart."
  echo "Before each try it waited up to $PLACEMENT_WAIT s for the CPUs to be near: $WAITED s in all."
  if ((LATE_FAR > 0)); then
    echo "$LATE_FAR cell(s) ran before the run first saw the CPUs near: their median round trip is above 3x"
    echo "the run's smallest, so they ran far apart and are counted so (in the kept-far count above)."
  fi
else
  echo "Placement: not checked (the proxy and the clients share a CPU, or core-rtt could not run)."
fi
echo
echo "| workload | candidate | rate | p99 µs | proxy CPU | machine CPU | added CPU | notes |"
echo "|---|---|---|---|---|---|---|---|"
for wl in "${WORKLOADS[@]}"; do
  for cand in "${WANT[@]}"; do
    key="$cand|$wl"
    if [[ -n ${SKIP[$cand]:-} ]]; then
      echo "| $wl | $cand | skipped: ${SKIP[$cand]} | | | | | |"
      continue
    fi
    if [[ -n ${WL_SKIP[$wl]:-} ]]; then
      echo "| $wl | $cand | skipped: ${WL_SKIP[$wl]} | | | | | |"
      continue
    fi
    rate=$(median "${RATE[$key]:-}")
    if [[ -z $rate ]]; then
      echo "| $wl | $cand | ${NOTE[$key]:-n/a} | | | | | |"
      continue
    fi
    cu=${CUNIT[$key]:-}
    if [[ $wl == hold ]]; then
      printf '| %s | %s | %.0f conn/s | - | RSS %s/conn | - | - | %s |\n' "hold $HOLD_CONNS" "$cand" "$rate" \
        "$(fmt "$(median "${RSS[$key]:-}")" '%.0f B')" "${NOTE[$key]:-}"
      continue
    fi
    rfmt='%.0f'
    [[ ${UNIT[$key]} == Gbit/s ]] && rfmt='%.2f'
    cfmt='%.2f'
    [[ $cu == s/GB ]] && cfmt='%.3f'
    # shellcheck disable=SC2059 # rfmt and cfmt are constants
    printf '| %s | %s | %s %s | %s | %s | %s | %s | %s |\n' "$wl" "$cand" \
      "$(printf "$rfmt" "$rate")" "${UNIT[$key]}" "$(fmt "$(median "${P99[$key]:-}")" '%.0f')" \
      "$(fmt "$(median "${PCPU[$key]:-}")" "$cfmt $cu")" "$(fmt "$(median "${MCPU[$key]:-}")" "$cfmt $cu")" \
      "$(fmt "$(median "${ADDED[$key]:-}")" "$cfmt $cu")" "${NOTE[$key]:-}"
  done
done

# The issue's summary: l4lb against the best anchor per row.
best() { # best WL MAP lowest?: the anchors' best median of MAP (max rate, or min when $3=min)
  local wl=$1 map=$2 dir=$3 c v b="" who=""
  local -n ref=$map
  for c in "${ANCHORS[@]}"; do
    v=$(median "${ref[$c|$wl]:-}")
    [[ -n $v ]] || continue
    if [[ -z $b ]] || awk -v v="$v" -v b="$b" -v d="$dir" 'BEGIN { exit !(d == "min" ? v < b : v > b) }'; then
      b=$v
      who=$c
    fi
  done
  [[ -n $b ]] && echo "$b $who"
}
summary_row() { # LABEL WL MAP DIR FORMAT
  local label=$1 wl=$2 map=$3 dir=$4 vf=$5 b who l
  read -r b who <<<"$(best "$wl" "$map" "$dir")"
  local -n ref2=$map
  l=$(median "${ref2[l4lb|$wl]:-}")
  [[ -n ${b:-} && -n $l ]] || return 0
  # shellcheck disable=SC2059 # vf is the caller's constant
  printf "| %s | $vf (%s) | $vf | %s | %s |\n" "$label" "$b" "$who" "$l" \
    "$(awk -v a="$l" -v b="$b" 'BEGIN { if (b != 0) printf "%.2fx", a / b; else print "n/a" }')" \
    "$(paired_ratios "${ref2[l4lb|$wl]:-}" "${ref2[$who|$wl]:-}")"
}
# paired_ratios "L4LB VALUES" "ANCHOR VALUES": l4lb's value over the anchor's in the same run,
# for each run, and their median. The machine's speed drifts between runs (see
# docs/benchmarks.md); a ratio within one run, where both were measured seconds apart, is
# less exposed to that drift than the ratio of two medians.
paired_ratios() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); m = split(b, y, " ")
    if (n == 0 || n != m) { print "n/a"; exit }
    list = ""
    for (i = 1; i <= n; i++) {
      r[i] = (y[i] != 0) ? x[i] / y[i] : 0
      list = list (i > 1 ? " " : "") sprintf("%.2f", r[i])
    }
    for (i = 2; i <= n; i++) { v = r[i]; j = i - 1; while (j > 0 && r[j] > v) { r[j + 1] = r[j]; j-- } r[j + 1] = v }
    med = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
    printf "%.2fx (%s)", med, list
  }'
}
if [[ ",$CANDIDATES," == *",l4lb,"* && ${#ANCHORS[@]} -gt 0 ]]; then
  echo
  echo "| workload | best anchor | l4lb | l4lb / best | per-run l4lb / best: median (runs) |"
  echo "|---|---|---|---|---|"
  for wl in "${WORKLOADS[@]}"; do
    case "$wl" in
      iperf-*)
        summary_row "$wl, Gbit/s" "$wl" RATE max '%.2f'
        summary_row "$wl, proxy CPU s/GB" "$wl" PCPU min '%.3f'
        summary_row "$wl, added machine CPU s/GB" "$wl" ADDED min '%.3f'
        ;;
      wrk-ka)
        summary_row "wrk keep-alive, req/s" "$wl" RATE max '%.0f'
        summary_row "wrk keep-alive, p99 µs" "$wl" P99 min '%.0f'
        summary_row "wrk keep-alive, added machine CPU µs/req" "$wl" ADDED min '%.2f'
        ;;
      wrk-close)
        summary_row "wrk Connection: close, conn/s" "$wl" RATE max '%.0f'
        summary_row "wrk Connection: close, p99 µs" "$wl" P99 min '%.0f'
        summary_row "wrk Connection: close, added machine CPU µs/conn" "$wl" ADDED min '%.2f'
        ;;
      udp-echo)
        summary_row "UDP echo, req/s" "$wl" RATE max '%.0f'
        summary_row "UDP echo, proxy CPU µs/req" "$wl" PCPU min '%.2f'
        summary_row "UDP echo, added machine CPU µs/req" "$wl" ADDED min '%.2f'
        ;;
      hold) summary_row "$HOLD_CONNS idle connections, RSS B/conn" hold RSS min '%.0f' ;;
    esac
  done
fi

# An A/B of two l4lb builds or settings: each figure of l4lb over l4lb-b's in the same run.
if [[ ",$CANDIDATES," == *",l4lb,"* && ",$CANDIDATES," == *",l4lb-b,"* ]]; then
  echo
  echo "A/B, per run: l4lb over l4lb-b, median (runs)"
  echo
  echo "| workload | rate | p99 | proxy CPU per unit | added machine CPU per unit |"
  echo "|---|---|---|---|---|"
  for wl in "${WORKLOADS[@]}"; do
    [[ $wl == hold ]] && continue
    cells=()
    for map in RATE P99 PCPU ADDED; do
      declare -n ab=$map
      cells+=("$(paired_ratios "${ab[l4lb|$wl]:-}" "${ab[l4lb-b|$wl]:-}")")
      unset -n ab
    done
    printf '| %s | %s | %s | %s | %s |\n' "$wl" "${cells[@]}"
  done
fi

# pick_by VALUES PLACES WANT: the values whose cell ran in placement WANT.
pick_by() {
  awk -v a="$1" -v b="$2" -v w="$3" 'BEGIN {
    n = split(a, x, " "); split(b, y, " "); out = ""
    for (i = 1; i <= n; i++) if (y[i] == w && x[i] != "-") out = out " " x[i]
    print out
  }'
}

# Cells kept far apart (the last of their tries, or every far cell with --placement-tries 1):
# each candidate's medians over its near cells and over its far cells, side by side.
if ((FAR_KEPT > 0)); then
  echo
  echo "By placement ($FAR_KEPT cell(s) kept far apart): each candidate's median over its cells run near"
  echo "and over those run far apart (number of cells)"
  echo
  echo "| workload | candidate | near: rate | near: added CPU | far: rate | far: added CPU |"
  echo "|---|---|---|---|---|---|"
  for wl in "${WORKLOADS[@]}"; do
    [[ $wl == hold ]] && continue
    for cand in "${WANT[@]}"; do
      key="$cand|$wl"
      [[ -n ${PLACE[$key]:-} ]] || continue
      row="| $wl | $cand"
      for where in near far; do
        for map in RATE ADDED_ALL; do
          declare -n vals=$map
          picked=$(pick_by "${vals[$key]:-}" "${PLACE[$key]}" "$where")
          unset -n vals
          n=$(wc -w <<<"$picked")
          if ((n == 0)); then
            row+=" | -"
          else
            row+=" | $(awk -v v="$(median "$picked")" -v m="$map" 'BEGIN { printf (m == "RATE" ? "%.0f" : "%.2f"), v }') ($n)"
          fi
        done
      done
      echo "$row |"
    done
  done
fi

# The kernel's floor under "added": a proxy adds at least one more TCP connection (or, for
# UDP, two more datagrams each way) of kernel work, which is what direct's kernel CPU per
# unit measures; l4lb's added CPU minus its own process CPU is what it adds elsewhere, and
# minus its user-space CPU (utime) what it would add if its own code cost nothing: the
# syscalls and the kernel work they cause stay.
if [[ ",$CANDIDATES," == *",l4lb,"* && ",$CANDIDATES," == *",direct,"* && ${#ANCHORS[@]} -gt 0 ]]; then
  echo
  echo "| workload | direct's kernel CPU (floor of added) | 0.8 x best anchor's added | l4lb added | l4lb added minus its own CPU | l4lb added minus its user-space CPU |"
  echo "|---|---|---|---|---|---|"
  for wl in wrk-ka wrk-close udp-echo; do
    wants_wl "$wl" || continue
    fl=$(median "${KCPU[direct|$wl]:-}")
    read -r b _ <<<"$(best "$wl" ADDED min)"
    la=$(median "${ADDED[l4lb|$wl]:-}")
    lp=$(median "${PCPU[l4lb|$wl]:-}")
    lu=$(median "${PUSER[l4lb|$wl]:-}")
    [[ -n $fl && -n ${b:-} && -n $la && -n $lp && -n $lu ]] || continue
    printf '| %s | %.2f %s | %.2f | %.2f | %.2f | %.2f |\n' "$wl" "$fl" "${CUNIT[l4lb|$wl]}" \
      "$(awk -v b="$b" 'BEGIN { print 0.8 * b }')" "$la" "$(awk -v a="$la" -v p="$lp" 'BEGIN { print a - p }')" \
      "$(awk -v a="$la" -v u="$lu" 'BEGIN { print a - u }')"
  done
fi

# The ceiling over the request/response rates: on this placement the clients' CPU is the
# bottleneck, and a proxy on another CPU can at best leave it as much work per request as no
# proxy at all. So each candidate's rate (and p99) over direct's in the same repeat: how close
# each comes to that ceiling, and how far apart the candidates can be at most.
# range_ratios "VALUES" "DIRECT VALUES": per-run ratios, as "median (min-max)".
range_ratios() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); m = split(b, y, " ")
    if (n == 0 || n != m) { print "-"; exit }
    k = 0
    for (i = 1; i <= n; i++) if (y[i] != 0 && x[i] != "-" && y[i] != "-") r[++k] = x[i] / y[i]
    if (k == 0) { print "-"; exit }
    for (i = 2; i <= k; i++) { v = r[i]; j = i - 1; while (j > 0 && r[j] > v) { r[j + 1] = r[j]; j-- } r[j + 1] = v }
    med = (k % 2) ? r[(k + 1) / 2] : (r[k / 2] + r[k / 2 + 1]) / 2
    printf "%.2fx (%.2f-%.2f)", med, r[1], r[k]
  }'
}
if [[ ",$CANDIDATES," == *",direct,"* && ${#PROXIES[@]} -gt 0 ]]; then
  echo
  echo "Ceiling: each candidate over direct in the same repeat, median (min-max) of the runs"
  echo
  header="| workload | direct"
  for cand in "${PROXIES[@]}"; do header+=" | $cand"; done
  echo "$header |"
  echo "|---|---$(printf '|---%.0s' "${PROXIES[@]}")|"
  for wl in wrk-ka wrk-close udp-echo; do
    wants_wl "$wl" || continue
    for map in RATE P99; do
      declare -n vals=$map
      d=$(median "${vals[direct|$wl]:-}")
      if [[ $map == RATE ]]; then
        row="| $wl rate | $(fmt "$d" '%.0f') ${UNIT[direct|$wl]:-}"
      else
        row="| $wl p99 | $(fmt "$d" '%.0f') µs"
      fi
      for cand in "${PROXIES[@]}"; do
        row+=" | $(range_ratios "${vals[$cand|$wl]:-}" "${vals[direct|$wl]:-}")"
      done
      unset -n vals
      echo "$row |"
    done
  done
fi

# Which CPU decides each rate: a CPU busy all the time (1.00) is the bottleneck of that cell.
if ((${#PROXIES[@]} > 0)); then
  echo
  echo "Busy: the client CPUs' and the proxy CPUs' busy share while the tool ran (1.00: busy"
  echo "throughout), median of the runs, as client / proxy"
  echo
  header="| workload"
  cols=()
  [[ ",$CANDIDATES," == *",direct,"* ]] && cols+=(direct)
  cols+=("${PROXIES[@]}")
  for cand in "${cols[@]}"; do header+=" | $cand"; done
  echo "$header |"
  echo "|---$(printf '|---%.0s' "${cols[@]}")|"
  for wl in wrk-ka wrk-close iperf-p1 iperf-p4 udp-echo; do
    wants_wl "$wl" || continue
    row="| $wl"
    for cand in "${cols[@]}"; do
      c=$(median "${BUSY_CLIENT[$cand|$wl]:-}")
      q=$(median "${BUSY_PROXY[$cand|$wl]:-}")
      if [[ -n $c && -n $q ]]; then
        row+=" | $(fmt "$c" '%.2f') / $(fmt "$q" '%.2f')"
      else
        row+=" | -"
      fi
    done
    echo "$row |"
  done
fi

if ((COUNTERS)); then
  echo
  echo "### Counters per unit of work (request, connection; iperf3: per GB)"
  echo
  echo "Machine-wide nstat deltas per unit (both hops of loopback: every segment is counted once"
  echo "sent and once received); ctx switches: the process's context switches (perf stat), each a"
  echo "sleep and wake-up or a preemption; client: wrk, iperf3 or l4lb-loadgen; backend: nginx,"
  echo "iperf3 -s or l4lb-loadgen serve."
  echo
  names=("client CPUs busy µs" "proxy CPUs busy µs" "proxy CPUs idle entries" "${NSTAT_KEYS[@]}" "non-data segs out"
    "client ctx switches" "client syscalls" "client epoll_waits"
    "backend ctx switches" "backend syscalls" "backend epoll_waits"
    "proxy ctx switches" "proxy syscalls" "proxy epoll_waits")
  IFS=, read -ra sched_names <<<"$SCHED_EVENTS"
  names+=("${sched_names[@]}")
  for wl in "${WORKLOADS[@]}"; do
    [[ $wl == hold ]] && continue
    echo "| $wl | $(IFS='|'; for c in "${WANT[@]}"; do printf ' %s |' "$c"; done)"
    echo "|---|$(for _ in "${WANT[@]}"; do printf -- '---|'; done)"
    for n in "${names[@]}"; do
      printf '| %s |' "$n"
      for c in "${WANT[@]}"; do
        v=$(median "${CNT[$c|$wl|$n]:-}")
        if [[ $wl == iperf-* ]]; then printf ' %s |' "$(fmt "$v" '%.0f')"; else printf ' %s |' "$(fmt "$v" '%.2f')"; fi
      done
      echo
    done
    echo
  done
  echo "Proxy reads and writes under wrk keep-alive (strace, 1 s; strace slows the proxy):"
  echo
  for c in "${WANT[@]}"; do
    [[ -n ${IOSIZES[$c]:-} ]] && echo "- $c: ${IOSIZES[$c]}"
  done
  if ((${#SENDERS[@]})); then
    echo
    echo "Sockets sending to the iperf3 server, sampled 3 times during each candidate's first iperf3 try"
    echo "(ss -tmi: the proxy's backend side, iperf3's client for direct): congestion control,"
    echo "pacing rate, bytes not yet sent, share of time limited by the receiver's window; ranges"
    echo "over the samples:"
    echo
    for wl in iperf-p1 iperf-p4; do
      for c in "${WANT[@]}"; do
        [[ -n ${SENDERS[$c|$wl]:-} ]] && echo "- $wl, $c: ${SENDERS[$c|$wl]}"
      done
    done
  fi
fi
echo
log "done in $(($(date +%s) - STARTED)) s"
