#!/usr/bin/env bash
# Health-driven route announcement for one l4lb host behind BGP + ECMP (docs/scale-out.md).
#
# Polls the local l4lb admin API and keeps ROUTE in kernel routing table TABLE only while l4lb
# can serve: GET /status answers and LISTENER has at least one backend "up", and /metrics says
# l4lb_draining 0. BIRD learns that table (protocol kernel { kernel table TABLE; learn; }) and
# announces the route over BGP; removing the route makes BIRD withdraw it at once.
#
# Flap damping: the route goes after FALL failed polls in a row; it comes back only after
# RISE good polls in a row AND at least HOLD_DOWN seconds after the last withdrawal.
# Every transition is logged on stdout: `HH:MM:SS.mmm announce|withdraw ROUTE (<why>)` (UTC).
# On SIGTERM/SIGINT the route is withdrawn before exiting (no checker, no announcement).
#
# Usage: scripts/l4lb-announce.sh --route 198.18.100.1/32 [options]
#   --route CIDR        the service address to announce (required)
#   --admin IP:PORT     l4lb's admin API (default 127.0.0.1:9090)
#   --listener NAME     listener that must have an up backend (default: any listener)
#   --table N           kernel routing table BIRD learns from (default 100)
#   --dev IFACE         device of the route (default lo, where the service address lives)
#   --interval-ms N     poll period (default 200)
#   --rise N            good polls before announcing (default 3)
#   --fall N            failed polls before withdrawing (default 2)
#   --hold-down S       minimum seconds between a withdrawal and the next announcement (default 3)
# Needs bash, iproute2; no other tool (HTTP over bash's /dev/tcp, bounded by read timeouts).
set -euo pipefail

ROUTE='' ADMIN=127.0.0.1:9090 LISTENER='' TABLE=100 DEV=lo
INTERVAL_MS=200 RISE=3 FALL=2 HOLD_DOWN=3
while (($# > 0)); do
  case "$1" in
    --route) ROUTE=$2 ;;
    --admin) ADMIN=$2 ;;
    --listener) LISTENER=$2 ;;
    --table) TABLE=$2 ;;
    --dev) DEV=$2 ;;
    --interval-ms) INTERVAL_MS=$2 ;;
    --rise) RISE=$2 ;;
    --fall) FALL=$2 ;;
    --hold-down) HOLD_DOWN=$2 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "l4lb-announce: unknown argument: $1 (try --help)" >&2
      exit 2
      ;;
  esac
  shift 2
done
for v in TABLE INTERVAL_MS RISE FALL HOLD_DOWN; do
  if [[ ! ${!v} =~ ^[0-9]+$ ]]; then
    echo "l4lb-announce: ${v,,} must be a whole number, not '${!v}'" >&2
    exit 2
  fi
done
if [[ -z $ROUTE || ! $ADMIN =~ ^([0-9.]+):([0-9]+)$ ]]; then
  echo "l4lb-announce: --route CIDR and --admin IP:PORT are required (try --help)" >&2
  exit 2
fi
ADMIN_IP=${BASH_REMATCH[1]} ADMIN_PORT=${BASH_REMATCH[2]}
SLEEP=$(printf '%d.%03d' $((INTERVAL_MS / 1000)) $((INTERVAL_MS % 1000)))

now_ms() {
  local t=$EPOCHREALTIME
  echo $((${t%.*} * 1000 + 10#${t#*.} / 1000))
}

# stamp: the time of day with milliseconds, UTC, for the transition lines.
stamp() {
  local t=$EPOCHREALTIME
  TZ=UTC printf '%(%H:%M:%S)T.%.3s' "${t%.*}" "${t#*.}"
}

# http_get PATH: the response body on stdout; fails on no connection, a status other than
# 200 or a stalled reply (each read waits at most 1 s; the admin API closes after one reply).
http_get() {
  local fd line status='' body=0 n=0
  exec {fd}<>"/dev/tcp/$ADMIN_IP/$ADMIN_PORT" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" "$ADMIN" >&"$fd" ||
    { exec {fd}>&-; return 1; }
  while IFS= read -r -t 1 -u "$fd" line || [[ -n $line ]]; do
    n=$((n + 1))
    if ((n > 100000)); then break; fi
    if [[ -z $status ]]; then
      status=$line
    elif ((body)); then
      printf '%s\n' "$line"
    elif [[ $line == $'\r' || -z $line ]]; then
      body=1
    fi
  done
  exec {fd}>&-
  [[ $status == 'HTTP/1.1 200 '* ]]
}

# healthy: 0 when l4lb answers, is not draining and the listener has a backend up; else
# prints why on stdout and returns 1.
healthy() {
  local status metrics chunk found=0
  if ! status=$(http_get /status 2>/dev/null); then
    echo "admin /status not answering"
    return 1
  fi
  if ! metrics=$(http_get /metrics 2>/dev/null); then
    echo "admin /metrics not answering"
    return 1
  fi
  if [[ $metrics == *$'\nl4lb_draining 1'* || $metrics == 'l4lb_draining 1'* ]]; then
    echo "l4lb is draining"
    return 1
  fi
  # Listener objects are the only ones with a "name" key (backends have "addr").
  while IFS= read -r chunk; do
    if [[ -n $LISTENER && $chunk != "\"$LISTENER\""* ]]; then continue; fi
    if [[ $chunk == *'"state":"up"'* ]]; then found=1; fi
  done < <(printf '%s\n' "${status//\{\"name\":/$'\n'}" | tail -n +2)
  if ((!found)); then
    echo "no backend up${LISTENER:+ in listener $LISTENER}"
    return 1
  fi
}

announced() {
  [[ -n $(ip route show table "$TABLE" "$ROUTE" 2>/dev/null) ]]
}

announce() {
  ip route replace "$ROUTE" dev "$DEV" table "$TABLE" proto static
  echo "$(stamp) announce $ROUTE ($1)"
}

withdraw() {
  ip route del "$ROUTE" table "$TABLE" 2>/dev/null || true
  echo "$(stamp) withdraw $ROUTE ($1)"
}

on_stop() {
  if announced; then withdraw "checker stopped"; fi
  exit 0
}
trap on_stop TERM INT

# Start withdrawn: a route left by an earlier checker is not proof of health.
if announced; then withdraw "checker starting"; fi
echo "$(stamp) start $ROUTE admin=$ADMIN table=$TABLE interval=${INTERVAL_MS}ms rise=$RISE fall=$FALL hold_down=${HOLD_DOWN}s"
up=0 good=0 bad=0 last_withdraw=0
while :; do
  if why=$(healthy); then
    good=$((good + 1)) bad=0
    if ((!up && good >= RISE)) && (($(now_ms) - last_withdraw >= HOLD_DOWN * 1000)); then
      announce "$good good polls"
      up=1
    fi
  else
    bad=$((bad + 1)) good=0
    if ((up && bad >= FALL)); then
      withdraw "$why"
      up=0 last_withdraw=$(now_ms)
    fi
  fi
  sleep "$SLEEP" &
  wait $! || true
done
