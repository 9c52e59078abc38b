# shellcheck shell=bash
# Helpers shared by the ci/*.sh service scripts. Sourced, never run directly:
#     . "$(dirname "$0")/lib.sh"
# Every script that sources this runs under `set -euo pipefail`, as root, on a Debian-like
# machine that may have NO systemd (daemons are started by hand, never via service/systemctl).
#
# Conventions used by the scripts:
#   * everything chatty goes to stderr; the one "ready" line goes to stdout;
#   * a daemon counts as running only if its pid file names a live, non-zombie process with
#     the expected command name (a killed daemon that was re-parented to PID 1 can linger as a
#     zombie, and a stale pid file may point at an unrelated recycled pid);
#   * apt-get runs only when a package is missing.

XQ_NAME=${XQ_NAME:-$(basename "$0" .sh)}

log() { echo "[$XQ_NAME] $*" >&2; }
die() { echo "$XQ_NAME: ERROR: $*" >&2; exit 1; }

# `cmd | grep -q` under pipefail fails at random when grep exits early and cmd gets SIGPIPE.
# has PATTERN... reads all of stdin first, then greps.
has() { local x; x=$(cat); grep -q "$@" <<<"$x"; }

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root: it installs packages with apt-get and starts system daemons (try: sudo $0 ${*:-})"
}

# now_ms: wall clock in milliseconds (for timings)
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# ---------------------------------------------------------------- processes
# proc_alive PID [COMM]: PID exists, is not a zombie, and (if given) /proc/PID/comm == COMM.
proc_alive() {
  local pid=$1 comm=${2:-} stat state
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  state=${stat##*) }; state=${state%% *}          # field 3, after "(comm) "
  [ "$state" != Z ] && [ "$state" != X ] || return 1
  [ -z "$comm" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

proc_gone() { ! proc_alive "$@"; }

# live_pids NAME: pids of live (non-zombie) processes named NAME. Unlike plain `pgrep -x`, this
# ignores the zombies PID 1 has not reaped yet.
live_pids() { local p; for p in $(pgrep -x "$1" || true); do proc_alive "$p" "$1" && echo "$p"; done; return 0; }
none_running() { [ -z "$(live_pids "$1")" ]; }

# pidfile_alive FILE [COMM]
pidfile_alive() { [ -s "$1" ] && proc_alive "$(head -n1 "$1" | tr -dc 0-9)" "${2:-}"; }

# pidfile_pid FILE: the pid in FILE (or empty)
pidfile_pid() { [ -s "$1" ] && head -n1 "$1" | tr -dc 0-9 || true; }

# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds; fail after SECONDS.
wait_for() {
  local limit=$1; shift
  local end=$(( $(now_ms) + limit * 1000 ))
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    [ "$(now_ms)" -lt "$end" ] || return 1
    sleep 0.2
  done
}

# queue_empty LIST...: LIST (a command printing a cluster's queued jobs, one a line) works and
# prints nothing.
queue_empty() { local q; q=$("$@") && [ -z "$q" ]; }

# cancel_recovered NAME LOG LIST CANCEL...: cancel what controller NAME (its log: LOG), just
# started by this script, recovered from its state, and wait for its queue to empty. A
# controller recovers every job of an earlier instance, also those of a benchmark or test run
# cut off by a reboot: 4,525 elements of a 10,000-job Slurm array once filled the node for
# minutes, and the next test run timed out behind them. A plain start that had to start the
# controller is a new session on this test cluster, so nothing running waits on them. LIST is a
# command (a function) printing the queued jobs one a line, CANCEL cancels them all.
cancel_recovered() {
  local name=$1 logfile=$2 list=$3 left; shift 3
  left=$("$list") || die "could not list the jobs of $name once it started (see $logfile)"
  [ -n "$left" ] || return 0
  log "cancelling $(wc -l <<<"$left") job(s) that $name recovered from an earlier instance"
  "$@" >/dev/null 2>&1 || log "$1 exited $? (some may have ended meanwhile); waiting for the queue to empty"
  wait_for 60 queue_empty "$list" \
    || die "jobs that $name recovered are still queued after $1 (see $logfile): $("$list" | head -5 | paste -sd' ')"
}

# stop_pid PID COMM [SECONDS]: SIGTERM, wait up to SECONDS (default 20), then SIGKILL.
stop_pid() {
  local pid=$1 comm=$2 limit=${3:-20}
  proc_alive "$pid" "$comm" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_for "$limit" proc_gone "$pid" "$comm"; then
    log "$comm (pid $pid) ignored SIGTERM for ${limit}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_for 5 proc_gone "$pid" "$comm" || true
  fi
}

# stop_pidfile FILE COMM [SECONDS]
stop_pidfile() {
  local pid; pid=$(pidfile_pid "$1")
  if [ -n "$pid" ]; then stop_pid "$pid" "$2" "${3:-20}"; fi
  rm -f "$1"
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- packages
pkg_installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

# ensure_pkgs PKG...: apt-get install the ones that are missing.
#   * `apt-get update` runs at most once per XQ_APT_MAX_AGE seconds (default 3600) across all
#     scripts (stamp file), so ci/services.sh on a fresh machine updates the lists exactly once,
#     and a re-run on an installed machine never touches the network. XQ_APT_UPDATE=1 forces it.
#     If an install fails (e.g. lists were fresh but a mirror dropped a version) it updates and
#     retries once.
#   * Package maintainer scripts must not start daemons: on a machine with init scripts they
#     would grab our ports/pid files (mariadb, munge, sshd on :22, dockerd, sge_qmaster). Debian's
#     invoke-rc.d asks /usr/sbin/policy-rc.d; if there is none we put one that says "no" (101)
#     for the duration of the install and remove it afterwards.
XQ_APT_STAMP=/var/tmp/xqueue-ci/apt-updated
apt_update() {
  log "apt-get update"
  apt-get update -qq -o DPkg::Lock::Timeout=300 >&2 || die "apt-get update failed (is a Debian mirror reachable?)"
  mkdir -p "${XQ_APT_STAMP%/*}"; touch "$XQ_APT_STAMP"
}
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and there is no apt-get: these scripts need a Debian/Ubuntu machine"
  need_root
  local age=999999
  [ -f "$XQ_APT_STAMP" ] && age=$(( $(date +%s) - $(stat -c %Y "$XQ_APT_STAMP") ))
  if [ "${XQ_APT_UPDATE:-0}" = 1 ] || [ "$age" -gt "${XQ_APT_MAX_AGE:-3600}" ]; then apt_update; fi
  local guard=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from xqueue ci/lib.sh: do not start daemons during apt-get install\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d; guard=1
  fi
  log "apt-get install ${missing[*]}"
  local rc=0 opts=(-y -qq --no-install-recommends -o DPkg::Lock::Timeout=300
                   -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "${missing[@]}" >/dev/null || rc=$?
  if [ "$rc" != 0 ]; then
    log "apt-get install failed (rc $rc); refreshing package lists and retrying once"
    apt_update; rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install "${opts[@]}" "${missing[@]}" >/dev/null || rc=$?
  fi
  if [ "$guard" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  [ "$rc" = 0 ] || die "apt-get install ${missing[*]} failed (rc $rc)"
}
