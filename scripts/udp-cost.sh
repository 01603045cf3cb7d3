#!/usr/bin/env bash
# Where a UDP proxy's CPU goes per udp-rr transaction, for l4lb and nginx (stream) side by side.
# Each proxy runs 1 worker pinned to one CPU in front of two echo backends; the load generator
# and the backends share the other CPUs. For every run and proxy it measures:
#   - transactions per second and p99 (the load generator, 32 clients, 64-byte datagrams);
#   - proxy CPU per transaction (utime+stime of its processes, µs);
#   - syscalls per transaction, and datagrams per send/receive call (io_uring_enter counted as
#     one: it carries the ring's sends and receives) (perf stat on the syscall
#     tracepoints, same run);
#   - the CPU spent inside the kernel's udp_sendmsg and udp_recvmsg (perf record at 997 Hz with call
#     graphs, same run), per transaction: the protocol work of moving one datagram through the
#     socket layer, which every proxy built on sockets does for 2 received and 2 sent datagrams
#     per transaction, however it batches its syscalls.
# Candidates alternate within each repeat so that all see the same machine; medians are
# printed. The last line compares l4lb's unavoidable part (its udp_sendmsg + udp_recvmsg) with
# nginx's whole CPU per transaction: the lowest ratio any socket-based design could reach here.
# A third candidate, echo, is no proxy: the echo server itself runs on the proxy's CPU and the
# load generator sends to it directly. Its CPU per transaction is what one plain process pays
# on that CPU to receive a datagram from the other CPU and send one back; a proxy does that
# twice per transaction (client side and backend side), so twice echo's figure is a yardstick
# for the least a socket proxy can cost without batching or a cheaper kernel path.
#
# Usage: scripts/udp-cost.sh [--duration S] [--repeat N] [--base-port P]
#   --duration S   seconds per run (default 4)
#   --repeat N     runs per candidate, medians are printed (default 3)
#   --base-port P  ports P+1, P+2 (backends), P+81 (l4lb), P+181 (echo), P+281 (nginx);
#                  default 24500
# Needs perf (linux-perf) and root or perf_event_paranoid <= 1; nginx with the stream module
# (skipped when missing). Environment: BUILD_DIR (default target/release), NGINX_MODULES.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=4
REPEAT=3
BASE_PORT=24500
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
    --repeat) REPEAT=${2:?--repeat needs N}; shift 2 ;;
    --base-port) BASE_PORT=${2:?--base-port needs a port}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "udp-cost: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
for n in "$DURATION" "$REPEAT" "$BASE_PORT"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "udp-cost: $n is not a positive integer" >&2; exit 2; }
done
BUILD_DIR=${BUILD_DIR:-target/release}
L4LB_BIN=${L4LB_BIN:-$BUILD_DIR/l4lb}
LOADGEN_BIN=${LOADGEN_BIN:-$BUILD_DIR/l4lb-loadgen}
NGINX_MODULES=${NGINX_MODULES:-/etc/nginx/modules-enabled/*stream*.conf}
log() { echo "udp-cost: $*" >&2; }
for bin in "$L4LB_BIN" "$LOADGEN_BIN"; do
  [[ -x $bin ]] || { log "$bin not found; build first (make build)"; exit 1; }
done
command -v perf >/dev/null 2>&1 || { log "perf is not installed (apt-get install linux-perf)"; exit 1; }

# shellcheck source=scripts/lib.sh
source scripts/lib.sh
TMP=$(mktemp -d "${TMPDIR:-/tmp}/l4lb-udp-cost.XXXXXX")
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -ra CPUS <<<"$(allowed_cpus)"
PROXY_CPU=${CPUS[0]}
if ((${#CPUS[@]} > 1)); then
  CLIENT_SET=$(IFS=,; echo "${CPUS[*]:1}")
else
  CLIENT_SET=$PROXY_CPU
  log "one CPU only: proxy, generator and backends share it"
fi

B1=127.0.0.1:$((BASE_PORT + 1))
B2=127.0.0.1:$((BASE_PORT + 2))
L4LB_T=127.0.0.1:$((BASE_PORT + 81))
NGINX_T=127.0.0.1:$((BASE_PORT + 281))
ECHO_T=127.0.0.1:$((BASE_PORT + 181))

taskset -c "$CLIENT_SET" "$LOADGEN_BIN" serve --mode echo --threads 1 --udp "$B1" --udp "$B2" \
  >"$TMP/backends.log" 2>&1 &
PIDS+=($!)

cat >"$TMP/l4lb.toml" <<CONF
[runtime]
workers = 1
pin_cpus = false

[[listener]]
name = "udp"
protocol = "udp"
bind = "$L4LB_T"
balance = "round_robin"
idle_timeout_s = 10
backends = [ { addr = "$B1" }, { addr = "$B2" } ]
CONF

CANDIDATES=(l4lb)
if command -v nginx >/dev/null 2>&1 && compgen -G "$NGINX_MODULES" >/dev/null; then
  CANDIDATES+=(nginx)
  cat >"$TMP/nginx.conf" <<CONF
include $NGINX_MODULES;
user $(id -un);
worker_processes 1;
daemon off;
master_process on;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 10000; }
stream {
    upstream be_udp { server $B1; server $B2; }
    server { listen $NGINX_T udp reuseport; proxy_pass be_udp; proxy_timeout 10s; }
}
CONF
else
  log "nginx with the stream module not found: measuring l4lb and the echo yardstick only"
fi
CANDIDATES+=(echo)

# udp_listening ADDR PID: until a UDP socket is bound to ADDR (5 s at most) while PID lives.
udp_listening() {
  local hex n o
  IFS=. read -ra o <<<"${1%:*}"
  # /proc/net/udp: the address as a little-endian hex word, then the port.
  hex=$(printf '%02X%02X%02X%02X:%04X' "${o[3]}" "${o[2]}" "${o[1]}" "${o[0]}" "${1##*:}")
  for ((n = 0; n < 50; n++)); do
    grep -q " $hex " /proc/net/udp && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# perf_share DATA SYMBOL: the percentage of samples with SYMBOL on the call stack.
perf_share() {
  perf report -i "$1" --children --sort sym --stdio -g none 2>/dev/null |
    awk -v s="$2" '$NF == s && $1 ~ /%$/ && !found { sub(/%/, "", $1); print $1; found = 1 }'
}

SYSCALLS="syscalls:sys_enter_sendmmsg,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_sendmsg"
SYSCALLS+=",syscalls:sys_enter_recvmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom"
SYSCALLS+=",syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_read"
SYSCALLS+=",syscalls:sys_enter_write,syscalls:sys_enter_clock_gettime,syscalls:sys_enter_gettimeofday"
# l4lb's UDP plane on io_uring: one io_uring_enter per loop turn submits its sends and
# receives and waits.
SYSCALLS+=",syscalls:sys_enter_io_uring_enter"

declare -A TX=() P99=() US=() SC=() DPS=() UDP_US=()

# measure NAME TARGET PID: one run against a started candidate.
measure() {
  local name=$1 target=$2 pid=$3 pids c0 c1 json tx sc data send recv us
  pids=$(tree_pids "$pid" | tr ' ' ,)
  # perf starts first and stops after the load: both see the whole run (an idle proxy adds
  # no samples and only a few syscalls), and perf's start-up does not compete with the load.
  perf stat -x, -e "$SYSCALLS" -p "$pids" -o "$TMP/stat.txt" -- sleep $((DURATION + 2)) 2>/dev/null &
  local stat_pid=$!
  perf record -q -F 997 -g -o "$TMP/perf.data" -p "$pids" -- sleep $((DURATION + 2)) >/dev/null 2>&1 &
  local rec_pid=$!
  sleep 1
  c0=$(cpu_ticks "$pid")
  json=$(taskset -c "$CLIENT_SET" "$LOADGEN_BIN" udp-rr --target "$target" --conns 32 --size 64 \
    --timeout-ms 500 --duration "$DURATION" --threads 1 --json --quiet 2>/dev/null | tail -n 1) || true
  c1=$(cpu_ticks "$pid")
  wait "$stat_pid" "$rec_pid" 2>/dev/null || true
  tx=$(jget "$json" transactions 0)
  if ((tx == 0)); then
    log "$name: no transactions in this run"
    return 0
  fi
  sc=$(awk -F, '$1 ~ /^[0-9]+$/ { s += $1 } END { print s + 0 }' "$TMP/stat.txt")
  # Data syscalls: the send and receive calls, and io_uring_enter, which carries them on the
  # ring (not epoll_wait, read/write or the clock).
  data=$(awk -F, '$1 ~ /^[0-9]+$/ && $3 ~ /(send|recv|io_uring_enter)/ { s += $1 } END { print s + 0 }' "$TMP/stat.txt")
  send=$(perf_share "$TMP/perf.data" udp_sendmsg)
  recv=$(perf_share "$TMP/perf.data" udp_recvmsg)
  us=$(awk -v c=$((c1 - c0)) -v t="$CLK_TCK" -v n="$tx" 'BEGIN { printf "%.2f", c / t * 1e6 / n }')
  TX[$name]+=" $(jget "$json" rate)"
  P99[$name]+=" $(jget "$json" p99)"
  US[$name]+=" $us"
  SC[$name]+=" $(awk -v s="$sc" -v n="$tx" 'BEGIN { printf "%.2f", s / n }')"
  # 4 datagrams per transaction through a proxy: client->proxy, proxy->backend,
  # backend->proxy, proxy->client; 2 for the echo itself (client->echo, echo->client).
  local per_tx=4
  [[ $name == echo ]] && per_tx=2
  DPS[$name]+=" $(awk -v d="$data" -v n="$tx" -v k=$per_tx 'BEGIN { if (d > 0) printf "%.2f", k * n / d }')"
  UDP_US[$name]+=" $(awk -v u="$us" -v a="${send:-0}" -v b="${recv:-0}" 'BEGIN { printf "%.2f", u * (a + b) / 100 }')"
  log "$name: $(jget "$json" rate) tx/s, $us µs CPU/tx, udp_sendmsg ${send:-?}% + udp_recvmsg ${recv:-?}% of samples"
}

log "proxy CPU $PROXY_CPU; generator and backends on $CLIENT_SET; $REPEAT x ${DURATION}s per candidate"
for ((r = 1; r <= REPEAT; r++)); do
  for cand in "${CANDIDATES[@]}"; do
    case "$cand" in
      l4lb)
        taskset -c "$PROXY_CPU" "$L4LB_BIN" --config "$TMP/l4lb.toml" >"$TMP/l4lb.log" 2>&1 &
        target=$L4LB_T
        ;;
      nginx)
        taskset -c "$PROXY_CPU" nginx -e "$TMP/nginx-startup.log" -c "$TMP/nginx.conf" \
          >"$TMP/nginx.log" 2>&1 &
        target=$NGINX_T
        ;;
      echo)
        taskset -c "$PROXY_CPU" "$LOADGEN_BIN" serve --mode echo --threads 1 --udp "$ECHO_T" \
          >"$TMP/echo.log" 2>&1 &
        target=$ECHO_T
        ;;
    esac
    pid=$!
    PIDS+=("$pid")
    if udp_listening "$target" "$pid"; then
      sleep 0.2
      measure "$cand" "$target" "$pid"
    else
      log "$cand did not start:"
      tail -n 5 "$TMP/$cand.log" >&2
    fi
    stop_pid "$pid"
  done
done

printf '\n| candidate | tx/s | p99 µs | CPU µs/tx | syscalls/tx | datagrams per send/recv call | in udp_sendmsg + udp_recvmsg µs/tx |\n'
printf '|---|---|---|---|---|---|---|\n'
for cand in "${CANDIDATES[@]}"; do
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$cand" "$(median "${TX[$cand]:-}")" \
    "$(median "${P99[$cand]:-}")" "$(median "${US[$cand]:-}")" "$(median "${SC[$cand]:-}")" \
    "$(median "${DPS[$cand]:-}")" "$(median "${UDP_US[$cand]:-}")"
done
if [[ -n ${US[nginx]:-} && -n ${US[l4lb]:-} ]]; then
  awk -v l="$(median "${US[l4lb]}")" -v f="$(median "${UDP_US[l4lb]}")" -v n="$(median "${US[nginx]}")" \
    'BEGIN { printf "\nCPU per transaction, l4lb / nginx: %.2f. l4lb'"'"'s udp_sendmsg + udp_recvmsg alone / nginx'"'"'s whole CPU: %.2f (the floor for any socket-based proxy on this host).\n", l / n, f / n }'
fi
if [[ -n ${US[echo]:-} && -n ${US[l4lb]:-} ]]; then
  awk -v l="$(median "${US[l4lb]}")" -v e="$(median "${US[echo]}")" -v n="$(median "${US[nginx]:-}")" \
    'BEGIN { printf "Twice the echo'"'"'s CPU per transaction (one receive and one send each side, no batching): %.2f µs; l4lb / that: %.2f", 2 * e, l / (2 * e); if (n > 0) printf "; nginx / that: %.2f", n / (2 * e); printf ".\n" }'
fi
