#!/usr/bin/env bash
# Several l4lb hosts behind BGP + ECMP, in network namespaces (docs/scale-out.md).
#
#   client ──── router ──┬── h1: l4lb + BIRD + l4lb-announce.sh ──┐
#   600 addrs   BIRD,    ├── h2: (same config)                    ├── router ── backends
#               ECMP     └── h3: (same config)                    ┘            4 x serve --mode http
#
# The router learns the service address 198.18.100.1/32 over BGP from each host and installs
# one ECMP route (BIRD `merge paths`) hashed on the 4-tuple (fib_multipath_hash_policy=1).
# Each host announces it only while its l4lb is healthy (scripts/l4lb-announce.sh).
#
# Usage: scripts/ecmp-lab.sh up|test|down|bench
#   up      build the namespaces, links and addresses; start backends, BIRD, l4lb and the
#           announcement checkers; wait until the router has a 3-way ECMP route.
#           Removes what an earlier run with the same ECMP_LAB_ID left first.
#   test    (after up) four phases, printed as tables: all hosts; one host stopped (time to
#           withdrawal); one backend removed from every host's config + SIGHUP; the host back.
#           Exit 0 only when every phase shows 100% agreement.
#   down    stop every process in the lab's namespaces, delete the namespaces (and with them
#           the links), remove the state directory. Safe to run at any time, any number of times.
#   bench   (after up) tcp-crr and tcp-rr through 1, 2 and 3 announced hosts.
# Needs root, iproute2 and BIRD 2 (Debian: apt-get install bird2).
# Environment:
#   ECMP_LAB_ID      suffix of every name (default 0): namespaces are l4ecmp<ID>-<role>, so
#                    labs with different IDs run side by side
#   ECMP_LAB_DIR     state directory (default ${TMPDIR:-/tmp}/l4ecmp<ID>)
#   L4LB_BIN, LOADGEN_BIN   binaries (default target/release/..., else target/debug/...)
#   ECMP_CLIENTS     client addresses (default 600, at most 1000)
#   ECMP_BENCH_S     seconds per bench run (default 5)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ID=${ECMP_LAB_ID:-0}
if [[ ! $ID =~ ^[A-Za-z0-9]{1,16}$ ]]; then
  echo "ecmp-lab: ECMP_LAB_ID must be 1-16 letters or digits, not '$ID'" >&2
  exit 2
fi
P=l4ecmp$ID
DIR=${ECMP_LAB_DIR:-${TMPDIR:-/tmp}/$P}
CLIENTS=${ECMP_CLIENTS:-600}
BENCH_S=${ECMP_BENCH_S:-5}
if [[ ! $CLIENTS =~ ^[0-9]+$ ]] || ((CLIENTS < 1 || CLIENTS > 1000)); then
  echo "ecmp-lab: ECMP_CLIENTS must be 1..1000, not '$CLIENTS'" >&2
  exit 2
fi
for d in target/release target/debug; do
  if [[ -z ${L4LB_BIN:-} && -x $d/l4lb ]]; then L4LB_BIN=$d/l4lb; fi
  if [[ -z ${LOADGEN_BIN:-} && -x $d/l4lb-loadgen ]]; then LOADGEN_BIN=$d/l4lb-loadgen; fi
done
L4LB_BIN=$(realpath -e "${L4LB_BIN:-target/release/l4lb}" 2>/dev/null || echo "${L4LB_BIN:-target/release/l4lb}")
LOADGEN_BIN=$(realpath -e "${LOADGEN_BIN:-target/release/l4lb-loadgen}" 2>/dev/null || echo "${LOADGEN_BIN:-target/release/l4lb-loadgen}")
ANNOUNCE=$(realpath scripts/l4lb-announce.sh)

HOSTS=(h1 h2 h3)
NS_ALL=("$P-client" "$P-router" "$P-h1" "$P-h2" "$P-h3" "$P-backends")
VIP=198.18.100.1
HTTP_PORT=80
ECHO_PORT=7
BACKENDS=(198.18.20.1 198.18.20.2 198.18.20.3 198.18.20.4)
CLIENT_FIRST=198.18.64.1
ROUTER_AS=65000
HOST_AS=65001
ANNOUNCE_TABLE=100
# The router's address on host i's link is 198.18.1<i>.1, the host's 198.18.1<i>.2.

ip4_to_int() {
  local a b c d
  IFS=. read -r a b c d <<<"$1"
  echo $(((a << 24) | (b << 16) | (c << 8) | d))
}
int_to_ip4() {
  echo "$((($1 >> 24) & 255)).$((($1 >> 16) & 255)).$((($1 >> 8) & 255)).$(($1 & 255))"
}
CLIENT_LAST=$(int_to_ip4 $(($(ip4_to_int $CLIENT_FIRST) + CLIENTS - 1)))
SOURCES=$CLIENT_FIRST-$CLIENT_LAST

in_ns() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}

log() { printf '%s\n' "$*"; }
die() {
  echo "ecmp-lab: $*" >&2
  exit 1
}

now_ms() {
  local t=$EPOCHREALTIME
  echo $((${t%.*} * 1000 + 10#${t#*.} / 1000))
}

# stamp: the time of day with milliseconds, UTC (as l4lb-announce.sh logs it).
stamp() {
  local t=$EPOCHREALTIME
  TZ=UTC printf '%(%H:%M:%S)T.%.3s' "${t%.*}" "${t#*.}"
}

# ms_to_s MS: "1.234"
ms_to_s() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# bg NS NAME CMD...: start CMD inside NS, detached from this shell's session and stdio, with
# its output in $DIR/NAME.log (appended) and its PID in $DIR/NAME.pid.
bg() {
  local ns=$1 name=$2
  shift 2
  ip netns exec "$ns" setsid "$@" </dev/null >>"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

pid_of() { cat "$DIR/$1.pid" 2>/dev/null || true; }

# ns_port_open NS IP PORT
ns_port_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_ns "$1" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$2" "$3" 2>/dev/null
}

# wait_until TENTHS CMD...: run CMD every 0.1 s until it succeeds, at most TENTHS times.
wait_until() {
  local tenths=$1 n
  shift
  for ((n = 0; n < tenths; n++)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

# admin NS METHOD PATH: one request to the host's admin API; the body on stdout.
admin() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  in_ns "$1" bash -c '
    exec 3<>/dev/tcp/127.0.0.1/9090 || exit 1
    printf "%s %s HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" "$0" "$1" >&3
    body=0
    while IFS= read -r -t 2 line <&3 || [[ -n $line ]]; do
      if ((body)); then printf "%s\n" "$line"; elif [[ $line == $'"'"'\r'"'"' ]]; then body=1; fi
    done' "$2" "$3"
}

# ecmp_hops: the router's next hops for the service address, one host name per line.
ecmp_hops() {
  in_ns "$P-router" ip -4 route show "$VIP" 2>/dev/null |
    sed -n 's/.*via 198\.18\.1\([1-3]\)\.2 .*/h\1/p' | sort
}
hops_are() { [[ $(ecmp_hops | tr '\n' ' ') == "$1" ]]; }

# ---------------------------------------------------------------------------------------------
# down

cmd_down() {
  local ns pid pids n f
  for ns in "${NS_ALL[@]}"; do
    [[ -e /run/netns/$ns ]] || continue
    # Every process in a lab namespace was started by this lab: TERM, then KILL.
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
    for ((n = 0; n < 30; n++)); do
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [[ -z $pids ]] && break
      sleep 0.1
    done
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for ns in "${NS_ALL[@]}"; do
    if [[ -e /run/netns/$ns ]]; then
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  # A process recorded in a pid file that somehow left its namespace (none should).
  if [[ -d $DIR ]]; then
    for f in "$DIR"/*.pid; do
      [[ -e $f ]] || continue
      pid=$(cat "$f")
      if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
        [[ $(readlink "/proc/$pid/exe" 2>/dev/null) =~ (bird|l4lb|l4lb-loadgen|bash)$ ]]; then
        stop_pid "$pid"
      fi
    done
    # Only a directory this script made (marker written by up) is removed.
    if [[ -e $DIR/.ecmp-lab ]]; then rm -rf "$DIR"; fi
  fi
  for ns in "${NS_ALL[@]}"; do
    [[ -e /run/netns/$ns ]] && die "namespace $ns is still there"
  done
  return 0
}

# ---------------------------------------------------------------------------------------------
# up

# link NS_A IF_A ADDR_A NS_B IF_B ADDR_B: a veth pair created directly inside the two
# namespaces (it never exists in the caller's namespace, so names cannot collide there).
link() {
  ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
  ip -n "$1" addr add "$3" dev "$2"
  ip -n "$4" addr add "$6" dev "$5"
  ip -n "$1" link set "$2" up
  ip -n "$4" link set "$5" up
}

write_configs() {
  local i b
  {
    echo "# l4lb in each ECMP lab host: the same file for all three (written by ecmp-lab.sh)."
    echo "[runtime]"
    echo "workers = 1"
    echo "pin_cpus = false          # bench pins each host's l4lb with taskset"
    echo "drain_timeout_s = 2"
    echo
    echo "[admin]"
    echo "bind = \"127.0.0.1:9090\"  # each namespace has its own loopback"
    for spec in "http:$HTTP_PORT" "echo:$ECHO_PORT"; do
      echo
      echo "[[listener]]"
      echo "name = \"${spec%%:*}\""
      echo "bind = \"$VIP:${spec#*:}\""
      echo "balance = \"source_ip_hash\""
      echo "connect_timeout_ms = 1000"
      [[ ${spec%%:*} == http ]] && echo "access_log = true"
      echo "backends = ["
      for b in "${BACKENDS[@]}"; do
        echo "  { addr = \"$b:${spec#*:}\" },"
      done
      echo "]"
    done
  } >"$DIR/l4lb.toml"

  cat >"$DIR/bird-router.conf" <<EOF
# The router: one eBGP session per l4lb host; equal routes merged into one ECMP route.
log "$DIR/bird-router.log" all;
router id 198.18.1.1;
protocol device { scan time 10; }
protocol kernel {
  ipv4 { import none; export all; };
  merge paths on;           # install every equal BGP path as one multipath route
}
template bgp l4lb_host {
  local as $ROUTER_AS;
  ipv4 { import where net = $VIP/32; export none; };
  # Lab timers: sessions come up within a second or two of each other.
  connect delay time 1; connect retry time 2; error wait time 1, 5;
  hold time 9; keepalive time 3;
}
EOF
  for i in 1 2 3; do
    echo "protocol bgp h$i from l4lb_host { neighbor 198.18.1$i.2 as $HOST_AS; }" >>"$DIR/bird-router.conf"
    cat >"$DIR/bird-h$i.conf" <<EOF
# l4lb host h$i: announce what l4lb-announce.sh puts in kernel table $ANNOUNCE_TABLE.
log "$DIR/bird-h$i.log" all;
router id 198.18.1$i.2;
protocol device { scan time 10; }
protocol kernel announce {
  ipv4 { import all; export none; };
  kernel table $ANNOUNCE_TABLE;
  learn;                    # routes added by the checker (not by BIRD)
}
protocol bgp uplink {
  local 198.18.1$i.2 as $HOST_AS;
  neighbor 198.18.1$i.1 as $ROUTER_AS;
  ipv4 { import none; export where net = $VIP/32; };
  connect delay time 1; connect retry time 2; error wait time 1, 5;
  hold time 9; keepalive time 3;
}
EOF
  done
}

# start_l4lb HOST: l4lb in the host's namespace on the shared config. Not pinned: on a
# shared machine a pinned process waits for its one CPU, and a starved admin API would make
# the checker withdraw a healthy host; `bench` pins for its runs only.
start_l4lb() {
  local h=$1
  bg "$P-$h" "l4lb-$h" env RUST_LOG=info "$L4LB_BIN" --config "$DIR/l4lb.toml"
  wait_until 100 ns_port_open "$P-$h" 127.0.0.1 9090 ||
    die "l4lb on $h did not start; its log: $(tail -5 "$DIR/l4lb-$h.log")"
}

cmd_up() {
  local i b h
  [[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
  if ! command -v bird >/dev/null || ! command -v birdc >/dev/null; then
    die "needs BIRD 2 (Debian: apt-get install bird2)"
  fi
  command -v ip >/dev/null || die "needs iproute2"
  [[ -x $L4LB_BIN && -x $LOADGEN_BIN ]] ||
    die "binaries not found ($L4LB_BIN, $LOADGEN_BIN): cargo build --release --bins"
  cmd_down
  [[ ! -e $DIR ]] || die "$DIR exists and is not an ecmp-lab state directory; set ECMP_LAB_DIR"
  mkdir -p "$DIR"
  echo "$P" >"$DIR/.ecmp-lab"
  log "== lab $P: namespaces ${NS_ALL[*]}"
  for ns in "${NS_ALL[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  link "$P-client" router 198.18.1.2/24 "$P-router" client 198.18.1.1/24
  link "$P-backends" router 198.18.3.2/24 "$P-router" backends 198.18.3.1/24
  for i in 1 2 3; do
    link "$P-h$i" router "198.18.1$i.2/24" "$P-router" "h$i" "198.18.1$i.1/24"
    ip -n "$P-h$i" addr add "$VIP/32" dev lo
    ip -n "$P-h$i" route add default via "198.18.1$i.1"
  done
  ip -n "$P-client" route add default via 198.18.1.1
  ip -n "$P-backends" route add default via 198.18.3.1
  ip -n "$P-router" route add 198.18.64.0/22 via 198.18.1.2
  ip -n "$P-router" route add 198.18.20.0/24 via 198.18.3.2
  in_ns "$P-router" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  for b in "${BACKENDS[@]}"; do
    ip -n "$P-backends" addr add "$b/32" dev lo
  done
  # The client addresses, one /32 each on the client's loopback.
  for ((i = 0; i < CLIENTS; i++)); do
    echo "addr add $(int_to_ip4 $(($(ip4_to_int $CLIENT_FIRST) + i)))/32 dev lo"
  done | ip -n "$P-client" -batch -
  log "   client: $CLIENTS addresses $SOURCES; router: 198.18.1.1; hosts h1-h3: 198.18.1{1,2,3}.2 + $VIP/32 on lo; backends: ${BACKENDS[*]}"

  write_configs
  log "== backends: l4lb-loadgen serve --mode http (port $HTTP_PORT) and --mode echo (port $ECHO_PORT)"
  local http_args=() echo_args=()
  for b in "${BACKENDS[@]}"; do
    http_args+=(--tcp "$b:$HTTP_PORT")
    echo_args+=(--tcp "$b:$ECHO_PORT")
  done
  bg "$P-backends" serve-http "$LOADGEN_BIN" serve --mode http --threads 1 "${http_args[@]}"
  bg "$P-backends" serve-echo "$LOADGEN_BIN" serve --mode echo --threads 1 "${echo_args[@]}"
  for b in "${BACKENDS[@]}"; do
    wait_until 100 ns_port_open "$P-backends" "$b" "$HTTP_PORT" || die "backend $b:$HTTP_PORT did not start"
    wait_until 100 ns_port_open "$P-backends" "$b" "$ECHO_PORT" || die "backend $b:$ECHO_PORT did not start"
  done

  log "== BIRD: router (AS $ROUTER_AS, merge paths) and h1-h3 (AS $HOST_AS), control sockets in $DIR"
  bg "$P-router" bird-router.proc bird -f -c "$DIR/bird-router.conf" -s "$DIR/bird-router.ctl"
  for h in "${HOSTS[@]}"; do
    bg "$P-$h" "bird-$h.proc" bird -f -c "$DIR/bird-$h.conf" -s "$DIR/bird-$h.ctl"
  done

  log "== l4lb on h1-h3 (same config $DIR/l4lb.toml)"
  for h in "${HOSTS[@]}"; do
    start_l4lb "$h"
    log "   $h: l4lb pid $(pid_of "l4lb-$h")"
  done
  log "== announcement checkers (l4lb-announce.sh: /status + draining every 200 ms, rise 3, fall 3, hold-down 3 s)"
  for h in "${HOSTS[@]}"; do
    bg "$P-$h" "announce-$h" bash "$ANNOUNCE" --route "$VIP/32" --listener http \
      --table "$ANNOUNCE_TABLE" --interval-ms 200 --rise 3 --fall 3 --hold-down 3
  done
  if ! wait_until 300 hops_are "h1 h2 h3 "; then
    birdc -s "$DIR/bird-router.ctl" show protocols >&2 || true
    die "the router did not get a 3-way ECMP route for $VIP within 30 s"
  fi
  log "== router: BGP sessions and the ECMP route"
  birdc -s "$DIR/bird-router.ctl" show protocols | sed -n 's/^\(h[1-3] .*\)/   \1/p'
  in_ns "$P-router" ip -4 route show "$VIP" | sed 's/^/   /'
  log "ecmp-lab: up ($P; state in $DIR; 'scripts/ecmp-lab.sh down' removes it)"
}

# ---------------------------------------------------------------------------------------------
# test

require_up() {
  [[ -d $DIR && -e /run/netns/$P-router ]] || die "lab $P is not up: scripts/ecmp-lab.sh up"
}

# probe OUT: every client address opens 2 connections (two source ports, so two ECMP hashes)
# with one HTTP request each. OUT.probe: "client_ip:port backend" as the client saw it;
# OUT.access: "host client_ip:port backend end" from each host's access log.
probe() {
  local base=$1 h n want got
  local -A before=()
  for h in "${HOSTS[@]}"; do
    before[$h]=$(wc -l <"$DIR/l4lb-$h.log")
  done
  in_ns "$P-client" "$LOADGEN_BIN" probe --target "$VIP:$HTTP_PORT" --sources "$SOURCES" \
    --per-source 2 --threads 8 --connect-timeout-ms 5000 --timeout-ms 5000 \
    >"$base.probe" 2>"$base.err" || true
  want=$(grep -vc ' error=' "$base.probe" || true)
  # Access lines are written when each connection closes: wait for all of them (bounded).
  for ((n = 0; n < 50; n++)); do
    : >"$base.access"
    for h in "${HOSTS[@]}"; do
      tail -n +"$((before[$h] + 1))" "$DIR/l4lb-$h.log" |
        sed -n "s/.* client=\([0-9.:]*\) backend=\([0-9.:]*\) .* end=\([a-z_]*\).*/$h \1 \2 \3/p" >>"$base.access"
    done
    got=$(wc -l <"$base.access")
    ((got >= want)) && break
    sleep 0.1
  done
}

# analyse OUT [REF REMOVED]: the table of one phase (host x backend), and its figures.
# Writes OUT.clients: "client_ip backend" (or "client_ip MIXED"). With REF (an earlier
# phase's .clients) compares each client's backend with it; REMOVED names a backend that left.
# Prints "figure NAME OK/TOTAL" lines that cmd_test collects.
analyse() {
  awk -v ref="${2:-}" -v removed="${3:-}" -v out="$1.clients" -v nb="${#BACKENDS[@]}" \
    -v backends="${BACKENDS[*]}" -v port="$HTTP_PORT" '
    BEGIN {
      split(backends, B, " ")
      for (i = 1; i <= nb; i++) B[i] = B[i] ":" port
      if (ref != "") while ((getline line < ref) > 0) { split(line, f, " "); REF[f[1]] = f[2] }
    }
    FILENAME ~ /\.access$/ { HOST[$2] = $1; LBB[$2] = $3; next }
    {
      conns++
      split($1, a, ":"); ip = a[1]
      if ($2 ~ /^error=/) { errors++; BK[ip] = "ERROR"; next }
      h = ($1 in HOST) ? HOST[$1] : "?"
      if (h == "?") unlogged++
      else if (LBB[$1] != $2) mismatch++
      T[h, $2]++; HT[h]++; BT[$2]++
      if (!(ip in BK)) { BK[ip] = $2; order[++nips] = ip }
      else if (BK[ip] != $2) BK[ip] = "MIXED"
      if (!((ip, h) in SEEN)) { SEEN[ip, h] = 1; NH[ip]++ }
    }
    END {
      printf "   %-6s %6s", "host", "conns"
      for (i = 1; i <= nb; i++) printf " %14s", B[i]
      printf "\n"
      split("h1 h2 h3 ?", hs, " ")
      for (k = 1; k <= 4; k++) {
        h = hs[k]; if (h == "?" && !(h in HT)) continue
        printf "   %-6s %6d", h, HT[h]
        for (i = 1; i <= nb; i++) printf " %14d", T[h, B[i]]
        printf "\n"
      }
      printf "   %-6s %6d", "all", conns - errors
      for (i = 1; i <= nb; i++) printf " %14d", BT[B[i]]
      printf "\n"
      one = 0; two = 0; crossed = 0
      for (j = 1; j <= nips; j++) {
        ip = order[j]; print ip, BK[ip] > out
        if (BK[ip] != "MIXED" && BK[ip] != "ERROR") one++
        if (NH[ip] > 1) { crossed++; if (BK[ip] != "MIXED") two++ }
      }
      printf "   connections: %d, failed: %d, without an access-log line: %d, answer differs from the host log: %d\n", conns, errors, unlogged, mismatch
      printf "   clients whose 2 connections crossed 2 different hosts: %d, of them on one backend: %d\n", crossed, two
      printf "figure clients_on_one_backend %d %d\n", one, nips
      printf "figure connections_answered %d %d\n", conns - errors - unlogged - mismatch, conns
      if (ref != "") {
        kept = 0; nkept = 0; moved = 0; nmoved = 0
        for (j = 1; j <= nips; j++) {
          ip = order[j]
          if (removed != "" && REF[ip] == removed) { nmoved++; if (BK[ip] != removed && BK[ip] != "MIXED" && BK[ip] != "ERROR") moved++ }
          else { nkept++; if (BK[ip] == REF[ip]) kept++ }
        }
        printf "figure same_backend_as_before %d %d\n", kept, nkept
        if (removed != "") printf "figure moved_off_removed_backend %d %d\n", moved, nmoved
      }
    }' "$1.access" "$1.probe"
}

# show_figures OUT: prints the phase's figures as sentences; fails when one is not 100%.
FIGURES_OK=1
show_figures() {
  local name ok total pct what
  while read -r _ name ok total; do
    pct=$(awk -v a="$ok" -v b="$total" 'BEGIN { printf "%.1f", b ? 100 * a / b : 0 }')
    case $name in
      clients_on_one_backend) what="clients reached one backend whichever host carried them" ;;
      connections_answered) what="connections answered by the backend the host's log names" ;;
      same_backend_as_before) what="clients ${2:-kept their backend}" ;;
      moved_off_removed_backend) what="clients of the removed backend moved to another one" ;;
      *) what=$name ;;
    esac
    printf '   => %d/%d %s (%s%%)\n' "$ok" "$total" "$what" "$pct"
    if ((ok != total || total == 0)); then FIGURES_OK=0; fi
  done < <(grep '^figure ' "$1.fig")
}

# checker_lines: the number of lines in the three checkers' logs, "h1:N h2:N h3:N".
checker_lines() {
  local h
  for h in "${HOSTS[@]}"; do printf '%s:%s ' "$h" "$(wc -l <"$DIR/announce-$h.log")"; done
}

# checker_changes MARK: the checker lines logged since checker_lines printed MARK.
checker_changes() {
  local m h n
  for m in $1; do
    h=${m%%:*} n=${m#*:}
    tail -n +"$((n + 1))" "$DIR/announce-$h.log" | sed "s/^/$h: /"
  done
}

# phase N TITLE HOPS [REF REMOVED REF_WORDS]: one probe while the router's next hops are
# HOPS. A probe during which an announcement changed (a checker starved of CPU on a busy
# machine withdraws a healthy host) measures the change, not the lab: it is reported and
# repeated, at most three times.
phase() {
  local n=$1 title=$2 hops=$3 base=$DIR/phase$1 attempt mark changes
  log ""
  log "== phase $n: $title"
  for attempt in 1 2 3; do
    wait_until 200 hops_are "$hops" || log "   (the router's next hops are $(ecmp_hops | tr '\n' ' '), not $hops)"
    log "   ECMP next hops on the router: $(ecmp_hops | tr '\n' ' ')"
    mark=$(checker_lines)
    probe "$base"
    changes=$(checker_changes "$mark")
    if [[ -z $changes ]] && hops_are "$hops"; then break; fi
    log "   attempt $attempt: an announcement changed during the probe; it is repeated:"
    printf '%s\n' "${changes:-(no checker line; next hops now $(ecmp_hops | tr '\n' ' '))}" | sed 's/^/     /'
  done
  analyse "$base" "${4:-}" "${5:-}" >"$base.fig"
  grep -v '^figure ' "$base.fig"
  # Not in a pipeline: show_figures sets FIGURES_OK in this shell.
  show_figures "$base" "${6:-}"
  if [[ -s $base.err ]]; then sed 's/^/   /' "$base.err"; fi
  if grep -q ' error=' "$base.probe"; then
    echo "   failed connections by kind: $(grep -o 'error=[a-z_]*' "$base.probe" | sort | uniq -c | tr -s ' ' | tr '\n' ',')"
  fi
}

cmd_test() {
  local t0 t1 removed
  require_up
  FIGURES_OK=1
  log "ecmp-lab test: $CLIENTS clients x 2 connections, source_ip_hash on every host, VIP $VIP:$HTTP_PORT"
  hops_are "h1 h2 h3 " || wait_until 150 hops_are "h1 h2 h3 " ||
    die "the router does not have all three hosts as next hops: $(ecmp_hops | tr '\n' ' ')"

  phase 1 "three hosts announced" "h1 h2 h3 " "" "" ""

  log ""
  t0=$(now_ms)
  log "== stopping l4lb on h2 (SIGTERM at $(stamp))"
  kill -TERM "$(pid_of l4lb-h2)"
  if wait_until 200 hops_are "h1 h3 "; then
    t1=$(now_ms)
    log "   the router's route lost h2 $(ms_to_s $((t1 - t0))) s after SIGTERM"
  else
    log "   the router still routes to h2 20 s after SIGTERM"
    FIGURES_OK=0
  fi
  grep ' withdraw ' "$DIR/announce-h2.log" | tail -1 | sed 's/^/   checker: /' || true
  phase 2 "h2 stopped, route withdrawn" "h1 h3 " "$DIR/phase1.clients" "" \
    "kept the backend they had in phase 1"

  removed=${BACKENDS[3]}:$HTTP_PORT
  log ""
  log "== removing backend ${BACKENDS[3]} from the config and reloading (SIGHUP) the running hosts"
  sed -i "/\"${BACKENDS[3]}:/d" "$DIR/l4lb.toml"
  local h
  for h in h1 h3; do
    kill -HUP "$(pid_of "l4lb-$h")"
  done
  for h in h1 h3; do
    wait_until 50 ecmp_reloaded "$h" "$removed" || die "$h did not reload"
  done
  phase 3 "backend $removed removed on every host" "h1 h3 " "$DIR/phase2.clients" "$removed" \
    "not on $removed kept their backend"

  log ""
  t0=$(now_ms)
  log "== starting l4lb on h2 again (the edited config) at $(stamp)"
  start_l4lb h2
  if wait_until 200 hops_are "h1 h2 h3 "; then
    t1=$(now_ms)
    log "   the router's route has h2 again $(ms_to_s $((t1 - t0))) s after the start (rise 3 x 200 ms, hold-down 3 s)"
  else
    log "   h2 was not announced again within 20 s"
    FIGURES_OK=0
  fi
  grep ' announce ' "$DIR/announce-h2.log" | tail -1 | sed 's/^/   checker: /' || true
  phase 4 "h2 back and announced" "h1 h2 h3 " "$DIR/phase3.clients" "" \
    "kept the backend they had in phase 3"

  log ""
  if ((FIGURES_OK)); then
    log "ecmp-lab: PASS: 100% in every phase"
  else
    log "ecmp-lab: FAIL: a figure above is below 100%"
    return 1
  fi
}

# ecmp_reloaded HOST ADDR: HOST's /status no longer lists ADDR.
ecmp_reloaded() {
  ! admin "$P-$1" GET /status | grep -q "\"$2\""
}

# ---------------------------------------------------------------------------------------------
# bench

# set_hosts "h1 h2": enable every backend on these hosts and disable every backend on the
# others (admin API), so the checkers withdraw the others; wait for the router to agree.
set_hosts() {
  local want=$1 h b action
  for h in "${HOSTS[@]}"; do
    action=disable
    [[ " $want " == *" $h "* ]] && action=enable
    for b in "${BACKENDS[@]}"; do
      admin "$P-$h" POST "/listeners/http/backends/$b:$HTTP_PORT/$action" >/dev/null
      admin "$P-$h" POST "/listeners/echo/backends/$b:$ECHO_PORT/$action" >/dev/null
    done
  done
  wait_until 300 hops_are "$want " || die "router next hops are '$(ecmp_hops | tr '\n' ' ')', not '$want'"
}

# bench_run MODE PORT: "rate errors" of one load run through the announced hosts.
bench_run() {
  local mode=$1 port=$2 json rate errs
  local -a extra=()
  [[ $mode == tcp-crr ]] && extra=(--http)
  json=$(in_ns "$P-client" "$LOADGEN_BIN" "$mode" "${extra[@]}" --target "$VIP:$port" \
    --sources "$SOURCES" --conns 64 --duration "$BENCH_S" --json --quiet 2>/dev/null | tail -1) || true
  rate=$(jget "$json" rate)
  errs=$(jget "$json" total 0)
  printf '%s %s' "${rate:-0}" "$errs"
}

# cpu_busy: "busy total" jiffies of the whole machine (/proc/stat), for a busy share.
cpu_busy() {
  awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# bench_measure MODE PORT HOSTS...: runs one load and prints "rate errors machine% h1% h2% ..."
# (CPU shares in % of one CPU over the run).
bench_measure() {
  local mode=$1 port=$2 h t0 t1 b0 a0 b1 a1 out
  shift 2
  local -A c0=()
  for h in "$@"; do c0[$h]=$(cpu_ticks "$(pid_of "l4lb-$h")"); done
  read -r b0 a0 <<<"$(cpu_busy)"
  t0=$(now_ms)
  out=$(bench_run "$mode" "$port")
  t1=$(now_ms)
  read -r b1 a1 <<<"$(cpu_busy)"
  out+=" $((100 * (b1 - b0) * $(nproc) / (a1 - a0 > 0 ? a1 - a0 : 1)))"
  for h in "$@"; do
    out+=" $((100 * ($(cpu_ticks "$(pid_of "l4lb-$h")") - c0[$h]) * 1000 / CLK_TCK / (t1 - t0 > 0 ? t1 - t0 : 1)))"
  done
  echo "$out"
}

cmd_bench() {
  local n h cpus mode port rate errs mach r max_l4lb=0
  local -a set per
  require_up
  read -ra cpus <<<"$(allowed_cpus)"
  # Each host's l4lb (every thread) on its own CPU for the runs, where there are enough.
  for ((h = 0; h < 3; h++)); do
    taskset -a -p -c "${cpus[h % ${#cpus[@]}]}" "$(pid_of "l4lb-${HOSTS[h]}")" >/dev/null
  done
  log "ecmp-lab bench: tcp-crr --http (port $HTTP_PORT) and tcp-rr (port $ECHO_PORT), 64 connections from $CLIENTS client addresses, $BENCH_S s each"
  log "   machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')), kernel $(uname -r); binaries $L4LB_BIN"
  log "   l4lb: 1 worker per host; h1, h2, h3 pinned to CPU $(for i in 0 1 2; do printf '%s ' "${cpus[i % ${#cpus[@]}]}"; done)(CPUs allowed: ${cpus[*]})"
  log "   the load generator, the backends, BIRD and the kernel's forwarding in every namespace share these CPUs"
  log "   CPU columns: % of one CPU over the run (machine: all CPUs together, of $((100 * $(nproc)))%,"
  log "   including anything else running on the machine; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg))"
  printf '   %-5s %-9s %-8s %12s %7s %9s  %s\n' hosts announced load rate errors machine "l4lb per host"
  for n in 1 2 3; do
    set=("${HOSTS[@]:0:n}")
    set_hosts "${set[*]}"
    for mode in tcp-crr tcp-rr; do
      port=$HTTP_PORT
      [[ $mode == tcp-rr ]] && port=$ECHO_PORT
      read -r rate errs mach r <<<"$(bench_measure "$mode" "$port" "${set[@]}")"
      read -ra per <<<"$r"
      r=""
      for ((h = 0; h < n; h++)); do
        r+="${set[h]} ${per[h]}%  "
        if ((per[h] > max_l4lb)); then max_l4lb=${per[h]}; fi
      done
      printf '   %-5s %-9s %-8s %12.0f %7s %8s%%  %s\n' "$n" "$(
        IFS=,
        echo "${set[*]}"
      )" "$mode" "$rate" "$errs" "$mach" "$r"
    done
  done
  set_hosts "h1 h2 h3"
  for h in "${HOSTS[@]}"; do
    taskset -a -p -c "$(
      IFS=,
      echo "${cpus[*]}"
    )" "$(pid_of "l4lb-$h")" >/dev/null
  done
  log "   (all three hosts announced again and unpinned; load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
  log "   The busiest l4lb used ${max_l4lb}% of one CPU in any run."
  if (($(nproc) < 8)); then
    log "   What the CPU count limits: this machine has $(nproc) CPUs for everything in the lab: the"
    log "   load generator, three l4lb processes, the backends, and the kernel's forwarding in the"
    log "   router and host namespaces. Another host adds no CPU, so the aggregate rate cannot grow"
    log "   in proportion to the host count here; what changes is how the same CPUs are shared."
    log "   The figures show that ECMP spreads the load and that each host serves its share; how far"
    log "   it scales needs hosts with their own CPUs (and a router that hashes in hardware)."
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  test) cmd_test ;;
  down)
    cmd_down
    log "ecmp-lab: down ($P)"
    ;;
  bench) cmd_bench ;;
  -h | --help | help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    ;;
  *)
    echo "usage: scripts/ecmp-lab.sh up|test|down|bench (try --help)" >&2
    exit 2
    ;;
esac
