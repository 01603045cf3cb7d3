# shellcheck shell=bash
# Helpers shared by the scripts in scripts/ (sourced, not run): stopping the processes a script
# started, waiting for a port, CPU lists, and CPU time and RSS of a process tree.
#
# A script that sources this keeps the PIDs it starts in the array PIDS and its scratch
# directory in TMP; `lib_cleanup` stops those PIDs (newest first) and removes TMP. Processes
# are only ever stopped by the PIDs the script recorded.

PIDS=()

# stop_pid PID: SIGTERM, up to 5 s for it to exit, then SIGKILL; reaps it.
stop_pid() {
  local pid=$1 n
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((n = 0; n < 50; n++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# lib_cleanup: stop every PID in PIDS (newest first), then remove TMP if set.
lib_cleanup() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${PIDS[i]}"
  done
  if [[ -n ${TMP:-} ]]; then
    rm -rf "$TMP"
  fi
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# wait_port PORT PID [TENTHS] [HOST]: until HOST:PORT (default 127.0.0.1) accepts, at most
# TENTHS tenths of a second (default 100), while PID lives.
wait_port() {
  local port=$1 pid=$2 tenths=${3:-100} host=${4:-127.0.0.1} n
  for ((n = 0; n < tenths; n++)); do
    port_open "$host" "$port" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# expand_cpus "0-2,5" -> "0 1 2 5"
expand_cpus() {
  local part out=() a b i parts
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then
      a=${part%-*}
      b=${part#*-}
      for ((i = a; i <= b; i++)); do out+=("$i"); done
    elif [[ -n $part ]]; then
      out+=("$part")
    fi
  done
  echo "${out[@]}"
}

# allowed_cpus: the CPUs this shell may run on, space separated.
allowed_cpus() {
  if command -v taskset >/dev/null 2>&1; then
    expand_cpus "$(taskset -pc $$ | sed 's/.*: //')"
  else
    seq -s ' ' 0 $(($(nproc) - 1))
  fi
}

# tree_pids ROOT: ROOT and all its descendants.
tree_pids() {
  local root=$1 f line pid rest ppid i p
  local -A parent=()
  for f in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$f" || continue
    pid=${line%% *}
    rest=${line##*) }
    read -r _ ppid _ <<<"$rest"
    parent[$pid]=$ppid
  done
  local out=("$root")
  i=0
  while ((i < ${#out[@]})); do
    for p in "${!parent[@]}"; do
      [[ ${parent[$p]} == "${out[i]}" ]] && out+=("$p")
    done
    i=$((i + 1))
  done
  echo "${out[@]}"
}

# shellcheck disable=SC2034 # read by the scripts that source this file
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# cpu_ticks ROOT: utime+stime of ROOT's process tree, in CLK_TCK ticks. /proc/PID/stat already
# sums the process's threads, so threads are counted once, processes each.
cpu_ticks() { tree_ticks "$1" 1; }

# user_ticks ROOT: utime alone of ROOT's process tree (the part of cpu_ticks spent outside
# the kernel), in CLK_TCK ticks.
user_ticks() { tree_ticks "$1" 0; }

# tree_ticks ROOT WITH_STIME: utime (+ stime when WITH_STIME is 1) of ROOT's process tree.
tree_ticks() {
  local total=0 p line rest f
  [[ -n $1 ]] || { echo 0; return; }
  for p in $(tree_pids "$1"); do
    read -r line 2>/dev/null <"/proc/$p/stat" || continue
    rest=${line##*) }
    read -ra f <<<"$rest"
    total=$((total + f[11] + $2 * f[12]))
  done
  echo "$total"
}

# rss_kb ROOT: resident memory of ROOT's process tree, KiB.
rss_kb() {
  local total=0 p v
  [[ -n $1 ]] || { echo 0; return; }
  for p in $(tree_pids "$1"); do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# jget JSON KEY [DEFAULT]: the value of KEY in a flat one-line JSON object (the load
# generator's --json), or DEFAULT (empty) when it has none.
jget() {
  local v
  v=$(sed -n "s/.*\"$2\":\"\{0,1\}\([^,}\"]*\).*/\1/p" <<<"$1")
  printf '%s' "${v:-${3:-}}"
}

# median "N N N": the median of a space-separated list of numbers; empty when none.
median() {
  local -a v
  read -ra v <<<"$1"
  ((${#v[@]} > 0)) || return 0
  printf '%s\n' "${v[@]}" | sort -g | awk '{ a[NR] = $1 } END {
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
