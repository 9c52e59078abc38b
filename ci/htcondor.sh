#!/usr/bin/env bash
# A personal HTCondor pool for the xqueue test suite: Debian trixie's `condor` (23.x), every
# daemon of a one-machine pool (master, collector, negotiator, schedd, startd), run in the
# trixie tree of ci/lib-trixie.sh (HTCondor is not packaged for Debian 12; see there why a
# chroot, and how it is entered).
#
#   ci/htcondor.sh          build the tree and install condor if needed (~75 s the first time:
#                           debootstrap ~55 s, apt ~20 s), configure, start condor_master, wait
#                           until the schedd and the startd are in the collector (~3 s)
#   ci/htcondor.sh stop     SIGTERM condor_master (by pid file): it stops its daemons (~2 s)
#   ci/htcondor.sh clean    stop, then delete the tree (and so ci/apptainer.sh's install too)
#
# Idempotent: a re-run with the pool up only compares the configuration (well under a second);
# a changed configuration restarts the pool.
#
# What the host sees:
#   * the collector (behind condor_shared_port) on 127.0.0.1:$XQ_CONDOR_PORT (default 9618);
#   * the shared folder $XQ_CONDOR_SHARED (default /var/tmp/xqueue-condor-shared), bind-mounted
#     at the SAME path inside: a job's Iwd, output and log files must live there, since the jobs
#     run inside the tree and the controller reads their files from the host. The tests put
#     their workdirs under it;
#   * /var/tmp/xqueue-condor/env: KEY=VALUE lines for a client on the host (below).
# A client on the host (the PyPI `htcondor` bindings) needs no HTCondor install of its own:
#     CONDOR_CONFIG=/dev/null  _CONDOR_COLLECTOR_HOST=127.0.0.1:9618
#     _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS=CLAIMTOBE  _CONDOR_SEC_CLAIMTOBE_USER=xqcondor
# Jobs run as the user they were submitted as, and HTCondor refuses jobs owned by root: the
# host's clients claim to be $XQ_CONDOR_USER (default xqcondor, uid $XQ_CONDOR_UID = 4242), an
# account that exists only inside the tree. So that the jobs of a controller running as root can
# write into the job folders it made, the shared folder carries a default ACL that gives that
# uid rwx on everything created below it (what a shared home gives the one user on a real site).
#
# Why the configuration looks like this (found out on the target machine kind):
#   * `use ROLE : Personal` plus CONDOR_HOST/NETWORK_INTERFACE 127.0.0.1 and no IPv6: a pool that
#     only loopback reaches; ALLOW_* open to 127.0.0.1, authentication FS or CLAIMTOBE;
#   * 2 s update, negotiation and polling intervals (the defaults are minutes);
#   * one partitionable slot of XQ_CONDOR_CPUS (default 8) CPUs, START = TRUE and no preemption
#     or suspension policy, so jobs start at once whatever the machine's load;
#   * MOUNT_UNDER_SCRATCH empty: otherwise the starter unshares a mount namespace for each job,
#     which fails inside the tree, and every job is held ("Failed to unshare the mount
#     namespace"); BASE_CGROUP empty: no cgroup tracking (not possible here either);
#   * SINGULARITY = /bin/false: the startd would otherwise probe the apptainer that
#     ci/apptainer.sh installs into the same tree; pool jobs never run in a container.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=htcondor
. "$HERE/lib.sh"
. "$HERE/lib-trixie.sh"

PORT=${XQ_CONDOR_PORT:-9618}
CPUS=${XQ_CONDOR_CPUS:-8}
SHARED=${XQ_CONDOR_SHARED:-/var/tmp/xqueue-condor-shared}
JOBUSER=${XQ_CONDOR_USER:-xqcondor}
JOBUID=${XQ_CONDOR_UID:-4242}
STATE=/var/tmp/xqueue-condor
PIDFILE=$STATE/master.pid
CONF=$TRIXIE/etc/condor/config.d/99-xqueue.config
if ! [[ "$PORT" =~ ^[1-9][0-9]*$ && "$CPUS" =~ ^[1-9][0-9]*$ && "$JOBUID" =~ ^[1-9][0-9]*$ ]]; then
  die "XQ_CONDOR_PORT, XQ_CONDOR_CPUS and XQ_CONDOR_UID must be positive integers"
fi
case "$SHARED" in /*) ;; *) die "XQ_CONDOR_SHARED must be an absolute path" ;; esac

condor_q() { chroot "$TRIXIE" "$@"; }   # a client command inside the tree (no mounts needed)

# The pool's processes: condor_master (by pid file) and, should it have died, the daemons it
# left, found by their root directory being the tree (and so never a process of anyone else).
tree_pids() {
  local p root; root=$(readlink -f "$TRIXIE")
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && [[ "$(cat "$p/comm" 2>/dev/null)" == condor_* ]] \
      && echo "${p#/proc/}"
  done
  return 0
}
stop_pool() {
  stop_pidfile "$PIDFILE" condor_master 30
  local p; for p in $(tree_pids); do kill -KILL "$p" 2>/dev/null || true; done
  wait_for 10 test -z "$(tree_pids)" || log "condor processes still running: $(tree_pids | tr '\n' ' ')"
}

case "${1:-start}" in
  start) need_root ;;
  stop) need_root; stop_pool; echo "htcondor stopped"; exit 0 ;;
  clean)
    need_root; stop_pool
    if [ -d "$TRIXIE" ]; then trixie_lock; rm -rf "$TRIXIE" "$TRIXIE.tmp"; fi
    rm -rf "$STATE"; echo "htcondor cleaned: $TRIXIE"; exit 0 ;;
  *) die "usage: $0 [start|stop|clean]" ;;
esac

T0=$(now_ms)
ensure_pkgs acl   # setfacl: the shared folder's default ACL
trixie_lock
trixie_ensure
trixie_apt condor
trixie_user "$JOBUSER" "$JOBUID"
[ "$(chroot "$TRIXIE" id -u "$JOBUSER")" = "$JOBUID" ] \
  || die "user $JOBUSER exists in $TRIXIE with another uid than $JOBUID; run: $0 clean"
T_INSTALL=$(( $(now_ms) - T0 ))

# ---------------------------------------------------------------- shared folder
mkdir -p "$SHARED" "$TRIXIE$SHARED" "$STATE"
chmod 1777 "$SHARED"
# The default ACL names every entry, so what is made below gets group and others r-x (never
# world-writable: xqueue refuses a workdir others can write to) and the job user rwx.
setfacl -m "user:$JOBUID:rwx" -m "d:user::rwx,d:group::r-x,d:other::r-x,d:user:$JOBUID:rwx,d:mask::rwx" "$SHARED" \
  || die "setfacl on $SHARED failed (does its file system support POSIX ACLs?)"
getfacl -cp --default "$SHARED" 2>/dev/null | has "^user:$JOBUID:rwx" || die "default ACL on $SHARED did not take"

# ---------------------------------------------------------------- configuration
NEW=$(mktemp); trap 'rm -f "$NEW"' EXIT
cat > "$NEW" <<CONFIG
# Written by xqueue ci/htcondor.sh; rewritten (and the pool restarted) when it changes.
use ROLE : Personal
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = 127.0.0.1:$PORT
SHARED_PORT_PORT = $PORT
NETWORK_INTERFACE = 127.0.0.1
BIND_ALL_INTERFACES = false
ENABLE_IPV6 = false
DAEMON_LIST = MASTER COLLECTOR NEGOTIATOR SCHEDD STARTD

SEC_DEFAULT_AUTHENTICATION = OPTIONAL
SEC_DEFAULT_AUTHENTICATION_METHODS = FS, CLAIMTOBE
SEC_CLIENT_AUTHENTICATION_METHODS = FS, CLAIMTOBE
SEC_DEFAULT_ENCRYPTION = OPTIONAL
SEC_DEFAULT_INTEGRITY = OPTIONAL
ALLOW_READ = 127.0.0.1
ALLOW_WRITE = 127.0.0.1
ALLOW_DAEMON = 127.0.0.1
ALLOW_NEGOTIATOR = 127.0.0.1
ALLOW_ADMINISTRATOR = 127.0.0.1
ALLOW_ADVERTISE_MASTER = 127.0.0.1
ALLOW_ADVERTISE_SCHEDD = 127.0.0.1
ALLOW_ADVERTISE_STARTD = 127.0.0.1

UPDATE_INTERVAL = 2
POLLING_INTERVAL = 2
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_CYCLE_DELAY = 2
STARTER_UPDATE_INTERVAL = 2
STARTER_INITIAL_UPDATE_INTERVAL = 2
SCHEDD_INTERVAL = 2
PERIODIC_EXPR_INTERVAL = 2

NUM_CPUS = $CPUS
NUM_SLOTS = 1
NUM_SLOTS_TYPE_1 = 1
SLOT_TYPE_1 = 100%
SLOT_TYPE_1_PARTITIONABLE = TRUE
START = TRUE
SUSPEND = FALSE
PREEMPT = FALSE
KILL = FALSE

MOUNT_UNDER_SCRATCH =
BASE_CGROUP =
SINGULARITY = /bin/false
MAIL = /bin/true
CONFIG
changed=0
if ! cmp -s "$NEW" "$CONF"; then
  log "writing $CONF"
  cp "$NEW" "$CONF"; chmod 644 "$CONF"; changed=1
fi

# ---------------------------------------------------------------- env file for host clients
cat > "$NEW" <<ENV
XQ_CONDOR_COLLECTOR=127.0.0.1:$PORT
XQ_CONDOR_USER=$JOBUSER
XQ_CONDOR_UID=$JOBUID
XQ_CONDOR_SHARED=$SHARED
XQ_TRIXIE_ROOT=$TRIXIE
ENV
cmp -s "$NEW" "$STATE/env" || cp "$NEW" "$STATE/env"

# ---------------------------------------------------------------- the pool
schedd_and_startd() {
  [ -n "$(condor_q condor_status -schedd -af Name 2>/dev/null)" ] \
    && [ -n "$(condor_q condor_status -startd -af Name 2>/dev/null)" ]
}
if pidfile_alive "$PIDFILE" condor_master && [ "$changed" = 1 ]; then
  log "configuration changed: restarting the pool"
  stop_pool
fi
T1=$(now_ms)
if ! pidfile_alive "$PIDFILE" condor_master; then
  stop_pool   # daemons an earlier master left behind
  trixie_unlock
  log "starting condor_master"
  mkdir -p "$TRIXIE/var/log/condor"
  # Everything below lives in a private mount namespace: its mounts vanish with the master.
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid unshare --mount --propagation private bash -c '
    R=$1; S=$2
    mount -t proc proc "$R/proc" && mount --rbind /dev "$R/dev" && mount -t tmpfs tmpfs "$R/run" \
      && mount --bind "$S" "$R$S" || exit 1
    mkdir -p "$R/run/lock/condor" "$R/run/condor"
    chroot "$R" chown condor:condor /run/lock/condor /run/condor /var/log/condor
    exec chroot "$R" /usr/sbin/condor_master -f
  ' _ "$TRIXIE" "$SHARED" >"$STATE/master.log" 2>&1 </dev/null &
  echo $! > "$PIDFILE"
  wait_for 10 pidfile_alive "$PIDFILE" condor_master \
    || die "condor_master did not start: $(tail -n 5 "$STATE/master.log" | tr '\n' ' ')"
fi
wait_for 60 schedd_and_startd \
  || die "the schedd or the startd did not reach the collector within 60 s (logs: $TRIXIE/var/log/condor)"
T_START=$(( $(now_ms) - T1 ))
version=$(condor_q condor_version | awk 'NR == 1 {print $2}')
secs() { printf '%d.%01d' $(($1 / 1000)) $(($1 % 1000 / 100)); }
echo "htcondor ready: HTCondor $version pool on 127.0.0.1:$PORT ($CPUS CPUs, one partitionable slot), jobs as $JOBUSER (uid $JOBUID), shared folder $SHARED, client env $STATE/env; setup $(secs "$T_INSTALL") s, pool up in $(secs "$T_START") s"
