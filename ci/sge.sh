#!/usr/bin/env bash
# Single-host Son of Grid Engine for the xqueue test suite (Debian gridengine 8.1.9):
# sge_qmaster + sge_execd on this machine, queue all.q with XQ_SGE_SLOTS (default 8) slots.
#
#   ci/sge.sh          install if needed, configure, start, wait until all.q accepts jobs
#   ci/sge.sh stop     qconf -ke all; qconf -km   (a clean qmaster shutdown takes ~8-10 s)
#   ci/sge.sh stop-qmaster    stop only sge_qmaster (SIGTERM, by pid file): a qmaster outage.
#                             sge_execd goes on running its jobs and reports them later
#   ci/sge.sh start-qmaster   the same as start: starts whatever is down and waits until all.q
#                             accepts jobs again (execd has re-registered)
#
# Idempotent: a re-run with everything up only compares the configuration (~1-2 s; every qconf
# call costs ~0.1 s of client CPU).
# Clients: the /usr/bin/q* wrappers read /etc/default/gridengine, so qsub/qstat/qdel/qacct work
# without SGE_ROOT. Code that needs it can use SGE_ROOT=/var/lib/gridengine SGE_CELL=default.
#
# Why the configuration looks like this (all found out on the target machine kind):
#   * the Debian packages only create a cell when debconf is preseeded (gridengineconfig=true);
#   * SGE requires that the address a client connects from reverse-resolves to the name the
#     client claims. Where the hostname is an alias of 127.0.0.1 (as on the CI machines), the
#     address resolves back to "localhost" and every command fails with "access denied (client
#     IP resolved to host name "localhost". This is not identical to clients host name ...)".
#     host_aliases with "localhost" as the canonical name fixes that ("<hostname> localhost",
#     the other way round, does not);
#   * min_uid/min_gid 0: otherwise root cannot submit ("user id 0 is lower than minimum user id");
#     execd reads this when it starts, so it is started only after the global config is set;
#   * schedule_interval 1 s, flush_submit/finish_sec 1: default is 15 s between scheduler runs;
#   * accounting_flush_time 0: otherwise `qacct` lags finished jobs by up to 15 s;
#   * all.q is written in full: the default template names PEs that do not exist (so adding it
#     fails) and has load_thresholds np_load_avg=1.75, which puts a busy 2-core machine into alarm.
# Do not use /etc/init.d/gridengine-*: its stop matches the wrong binary and leaves qmasters running.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=sge
. "$HERE/lib.sh"

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SLOTS=${XQ_SGE_SLOTS:-8}
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOL=/var/spool/gridengine
QM_PID=$SPOOL/qmaster/qmaster.pid
[[ "$SLOTS" =~ ^[1-9][0-9]*$ ]] || die "XQ_SGE_SLOTS must be a positive integer, not '$SLOTS'"

stop_all() {
  command -v qconf >/dev/null || return 0
  qconf -ke all >/dev/null 2>&1 || true
  wait_for 30 none_running sge_execd || true
  qconf -km >/dev/null 2>&1 || true
  wait_for 60 none_running sge_qmaster || true
  # fall back to signals if qmaster did not answer (e.g. half-started)
  local f; for f in "$SPOOL"/execd/*/execd.pid; do [ -f "$f" ] && stop_pidfile "$f" sge_execd; done
  stop_pidfile "$QM_PID" sge_qmaster 30
}

MODE=${1:-start}
case "$MODE" in
  start|start-qmaster) need_root ;;
  stop) need_root; stop_all; echo "sge stopped"; exit 0 ;;
  stop-qmaster) need_root; stop_pidfile "$QM_PID" sge_qmaster 60; echo "sge_qmaster stopped"; exit 0 ;;
  *) die "usage: $0 [start|stop|stop-qmaster|start-qmaster]" ;;
esac

# ---------------------------------------------------------------- install
if ! pkg_installed gridengine-master || ! pkg_installed gridengine-exec || ! pkg_installed gridengine-client; then
  command -v debconf-set-selections >/dev/null || die "debconf-set-selections not found (needs a Debian/Ubuntu machine)"
  H=$(hostname -f 2>/dev/null || hostname)
  debconf-set-selections <<DEBCONF
gridengine-common gridengine/gridenginemaster string $H
gridengine-common gridengine/gridenginecell string default
gridengine-common gridengine/gridengineconfig boolean true
gridengine-client gridengine/gridenginemaster string $H
gridengine-client gridengine/gridenginecell string default
gridengine-client gridengine/gridengineconfig boolean true
gridengine-master gridengine/adminmail string root@localhost
DEBCONF
  ensure_pkgs gridengine-master gridengine-exec gridengine-client
fi
ensure_pkgs procps   # pgrep (ci/lib.sh none_running)
[ -f "$COMMON/bootstrap" ] || die "SGE cell not initialised ($COMMON/bootstrap missing): the debconf preseed did not take; purge gridengine-* and its debconf answers (echo PURGE | debconf-communicate gridengine-common) and re-run"

# ---------------------------------------------------------------- hostname alias fix
if getent ahostsv4 "$(hostname)" | awk '{print $1}' | has '^127\.'; then
  want=$(printf '%s\n' localhost "$(hostname)" "$(hostname -f 2>/dev/null || hostname)" | awk '!seen[$0]++' | paste -sd' ')
  [ "$(cat "$COMMON/host_aliases" 2>/dev/null)" = "$want" ] || echo "$want" > "$COMMON/host_aliases"
fi

# ---------------------------------------------------------------- qmaster
qmaster_up() { qconf -sh; }
QM_FRESH=0
if ! qmaster_up >/dev/null 2>&1; then
  if ! pidfile_alive "$QM_PID" sge_qmaster; then
    wait_for 30 none_running sge_qmaster || die "an sge_qmaster is still running but does not answer; run: $0 stop"
    log "starting sge_qmaster"
    /usr/sbin/sge_qmaster
    QM_FRESH=1
  fi
  wait_for 30 qmaster_up || die "sge_qmaster does not answer (see $SPOOL/qmaster/messages)"
fi
SGEHOST=$(cat "$COMMON/act_qmaster")

TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
# normalise a qconf listing: join "\"-continued lines, squeeze blanks
norm() { sed -e ':a' -e '/\\$/N; s/\\\n[[:space:]]*/ /; ta' | awk '{$1=$1; print}'; }

# ---------------------------------------------------------------- global config (file must be named "global")
qconf -sconf global | norm > "$TMP/cur"
awk 'BEGIN { v["min_uid"]="0"; v["min_gid"]="0"; v["load_report_time"]="00:00:05"
             v["reporting_params"]="accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00 accounting_flush_time=00:00:00" }
     ($1 in v) { print $1, v[$1]; next } { print }' "$TMP/cur" > "$TMP/global"
if ! cmp -s "$TMP/cur" "$TMP/global"; then
  log "setting global config (min_uid 0, fast accounting)"
  qconf -Mconf "$TMP/global" >/dev/null 2>&1 || die "qconf -Mconf failed"
fi

# ---------------------------------------------------------------- scheduler config
qconf -ssconf | norm > "$TMP/cur"
awk 'BEGIN { v["schedule_interval"]="0:0:1"; v["flush_submit_sec"]="1"; v["flush_finish_sec"]="1" }
     ($1 in v) { print $1, v[$1]; next } { print }' "$TMP/cur" > "$TMP/sched"
if ! cmp -s "$TMP/cur" "$TMP/sched"; then
  log "setting scheduler config (1 s interval)"
  qconf -Msconf "$TMP/sched" >/dev/null 2>&1 || die "qconf -Msconf failed"
fi

# ---------------------------------------------------------------- hosts
qconf -ss 2>/dev/null | has -x "$SGEHOST" || qconf -as "$SGEHOST" >/dev/null 2>&1
qconf -sh 2>/dev/null | has -x "$SGEHOST" || qconf -ah "$SGEHOST" >/dev/null 2>&1

# ---------------------------------------------------------------- execd (after the global config)
EX_PID=$SPOOL/execd/$SGEHOST/execd.pid
if ! pidfile_alive "$EX_PID" sge_execd; then
  log "starting sge_execd"
  /usr/sbin/sge_execd
fi
exechost_registered() { qconf -sel | has -x "$SGEHOST"; }
wait_for 30 exechost_registered || die "exec host $SGEHOST did not register (see $SPOOL/execd/$SGEHOST/messages)"

# ---------------------------------------------------------------- queue all.q
cat > "$TMP/all.q" <<QUEUE
qname all.q
hostlist $SGEHOST
seq_no 0
load_thresholds NONE
suspend_thresholds NONE
nsuspend 1
suspend_interval 00:05:00
priority 0
min_cpu_interval 00:05:00
processors UNDEFINED
qtype BATCH INTERACTIVE
ckpt_list NONE
pe_list NONE
rerun FALSE
slots $SLOTS
tmpdir /tmp
shell /bin/sh
prolog NONE
epilog NONE
shell_start_mode unix_behavior
starter_method NONE
suspend_method NONE
resume_method NONE
terminate_method NONE
notify 00:00:60
owner_list NONE
user_lists NONE
xuser_lists NONE
subordinate_list NONE
complex_values NONE
projects NONE
xprojects NONE
calendar NONE
initial_state default
s_rt INFINITY
h_rt INFINITY
s_cpu INFINITY
h_cpu INFINITY
s_fsize INFINITY
h_fsize INFINITY
s_data INFINITY
h_data INFINITY
s_stack INFINITY
h_stack INFINITY
s_core INFINITY
h_core INFINITY
s_rss INFINITY
h_rss INFINITY
s_vmem INFINITY
h_vmem INFINITY
QUEUE
if ! qconf -sql 2>/dev/null | has -x all.q; then
  log "adding queue all.q ($SLOTS slots)"
  qconf -Aq "$TMP/all.q" >/dev/null 2>&1 || die "qconf -Aq all.q failed"
elif ! cmp -s <(qconf -sq all.q | norm) "$TMP/all.q"; then
  log "updating queue all.q ($SLOTS slots)"
  qconf -Mq "$TMP/all.q" >/dev/null 2>&1 || die "qconf -Mq all.q failed"
fi

# ---------------------------------------------------------------- wait: queue instance usable
# `qstat -f` line: "all.q@host  BIP  0/0/8  0.01  lx-amd64  [states]". Ready = load reported and
# no state letters (u = execd unknown, a = alarm, E = error, d = disabled ...).
qi_line() { qstat -f -q all.q 2>/dev/null | awk -v q="all.q@$SGEHOST" '$1==q'; }
queue_ready() { local l; l=$(qi_line); [ -n "$l" ] && [ "$(awk '{print NF}' <<<"$l")" = 5 ]; }
wait_for 60 queue_ready || die "queue instance all.q@$SGEHOST not ready: '$(qi_line)'"

# ---------------------------------------------------------------- jobs left by an earlier instance
# `start-qmaster` (an outage test's restart) keeps them: recovering jobs is what it tests.
queued_jobs() { qstat -u '*' | awk 'NR>2'; }
if [ "$MODE" = start ] && [ "$QM_FRESH" = 1 ]; then
  cancel_recovered sge_qmaster "$SPOOL/qmaster/messages" queued_jobs qdel -f -u '*'
fi
echo "sge ready: all.q@$SGEHOST $(qi_line | awk '{print $3}') slots, exec host $SGEHOST registered, SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL"
