#!/usr/bin/env bash
# Single-node Slurm for the xqueue test suite (Debian slurm-wlm 22.05 + munge), optionally with
# job accounting (slurmdbd + MariaDB) so that `sacct` works.
#
#   ci/slurm.sh          install if needed, configure, start, wait until the node is idle
#   ci/slurm.sh stop     stop slurmd, slurmctld, slurmdbd, mariadbd, munged (by pid file)
#   ci/slurm.sh stop-ctld    stop only slurmctld (SIGTERM, by pid file): a controller outage.
#                            slurmd goes on running its jobs and reports them when it is back
#   ci/slurm.sh start-ctld   the same as start: starts whatever is down (here slurmctld, which
#                            recovers its jobs from StateSaveLocation) and waits until the node
#                            takes jobs again (~1-3 s)
#
# Idempotent: a re-run with nothing changed only checks the daemons (well under a second).
# If slurm.conf changes (e.g. another XQ_SLURM_MINJOBAGE) both Slurm daemons are restarted,
# because slurmctld and slurmd must see the same file.
#
# Environment:
#   XQ_SLURM_ACCOUNTING=1   1 (default): MariaDB + slurmdbd, `sacct` works.
#                           0: accounting_storage/none; `sacct` then fails with "accounting
#                           storage is disabled"; use `scontrol show job` (for MinJobAge s) or
#                           /var/log/slurm/jobcomp.log instead.
#   XQ_SLURM_CPUS=8         CPUs the node advertises (more than the real cores is fine, see below)
#   XQ_SLURM_MINJOBAGE=600  seconds a finished job stays visible to squeue/scontrol
#
# Why the configuration looks like this (all found out on the target machine kind):
#   * no systemd and hybrid cgroup v1/v2 -> ProctrackType=proctrack/linuxproc, TaskPlugin=task/none
#     (the cgroup plugins do not work there);
#   * SlurmdParameters=config_overrides lets slurmd advertise CPUs=8 on a 2-core machine, so up
#     to 8 test jobs run at once instead of 2 (drained 200 jobs in ~23 s instead of ~94 s);
#   * SchedulerParameters=batch_sched_delay=0: with the default (3) jobs start ~3 s apart;
#   * MinJobAge: how long finished jobs stay in squeue/scontrol (default 300);
#   * MaxArraySize is left at Slurm's default (1001, i.e. array indices 0-1000); the ready line
#     prints the value in effect so tests can rely on it;
#   * MaxJobCount=20000 (default 10000; each array element counts, and ended jobs too until
#     MinJobAge): benchmarks/slurm_bench.py queues 10,000 jobs while test runs share the node;
#   * jobcomp/filetxt writes one line per finished job to /var/log/slurm/jobcomp.log, which works
#     even without slurmdbd.
#   * memory is enforced, so tests can see a job killed for its --mem (xqueue's OOM class): with
#     CR_Core a --mem is only a scheduling hint. CR_Core_Memory makes memory consumable, and
#     JobAcctGatherParams=OverMemoryKill has the accounting poll (every second here, default 30)
#     kill a step that outgrows it; the step ends FAILED (signal 9) and slurmstepd writes
#     "exceeded memory limit" into the job's output (task/cgroup, which would report
#     OUT_OF_MEMORY, does not work on this machine kind). A job without --mem gets
#     DefMemPerCPU = RealMemory / CPUs, so CPUs, not memory, still bound how many run at once.
# Known Slurm behaviour tests should expect: a job whose dependency can never be satisfied stays
# PENDING (Reason=DependencyNeverSatisfied) unless submitted with --kill-on-invalid-dep=yes.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=slurm
. "$HERE/lib.sh"

ACCT=${XQ_SLURM_ACCOUNTING:-1}
CPUS=${XQ_SLURM_CPUS:-8}
MINJOBAGE=${XQ_SLURM_MINJOBAGE:-600}
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
LOGDIR=/var/log/slurm
MUNGE_PID=/run/munge/munged.pid
MYSQL_PID=/run/mysqld/mysqld.pid
DBD_PID=/run/slurmdbd.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

case "$ACCT" in 0|1) ;; *) die "XQ_SLURM_ACCOUNTING must be 0 or 1, not '$ACCT'" ;; esac
[[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "XQ_SLURM_CPUS must be a positive integer, not '$CPUS'"
[[ "$MINJOBAGE" =~ ^[0-9]+$ ]] || die "XQ_SLURM_MINJOBAGE must be a number of seconds, not '$MINJOBAGE'"

stop_all() {
  stop_pidfile "$SLURMD_PID" slurmd
  stop_pidfile "$CTLD_PID" slurmctld
  stop_pidfile "$DBD_PID" slurmdbd
  stop_pidfile "$MYSQL_PID" mariadbd 60
  stop_pidfile "$MUNGE_PID" munged
}

MODE=${1:-start}
case "$MODE" in
  start|start-ctld) need_root ;;
  stop) need_root; stop_all; echo "slurm stopped"; exit 0 ;;
  stop-ctld) need_root; stop_pidfile "$CTLD_PID" slurmctld; echo "slurmctld stopped"; exit 0 ;;
  *) die "usage: $0 [start|stop|stop-ctld|start-ctld]" ;;
esac

# ---------------------------------------------------------------- install
pkgs=(slurm-wlm munge)
[ "$ACCT" = 1 ] && pkgs+=(slurmdbd mariadb-server)
ensure_pkgs "${pkgs[@]}"
for b in slurmctld slurmd munged; do [ -x "/usr/sbin/$b" ] || die "/usr/sbin/$b missing after install"; done

# ---------------------------------------------------------------- slurm.conf
NODE=$(hostname -s)
[ -n "$NODE" ] || die "hostname -s is empty"
mkdir -p /etc/slurm "$LOGDIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
chown slurm:slurm "$LOGDIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
MEM=$(( $(awk '/^MemTotal:/{print int($2/1024)}' /proc/meminfo) * 85 / 100 ))
if [ "$ACCT" = 1 ]; then
  ACCT_LINES=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\nAccountingStoragePort=6819'
else
  ACCT_LINES=AccountingStorageType=accounting_storage/none
fi
# Node address is pinned to 127.0.0.1: the tests only ever talk to this machine, and it avoids
# depending on how (or whether) the hostname resolves.
NEWCONF=$(cat <<CONF
# Generated by xqueue ci/slurm.sh -- edits are overwritten.
ClusterName=xq
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=task=1
$ACCT_LINES
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( MEM / CPUS ))
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=$MINJOBAGE
MaxJobCount=20000
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MpiDefault=none
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} Boards=1 SocketsPerBoard=1 CoresPerSocket=${CPUS} ThreadsPerCore=1 RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
CONF
)
CONF_CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEWCONF" ]; then
  printf '%s\n' "$NEWCONF" > "$CONF"; chmod 644 "$CONF"; CONF_CHANGED=1
fi

# ---------------------------------------------------------------- munge (authentication)
# The munge package creates /etc/munge/munge.key; make one if it is missing anyway.
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge
if ! pidfile_alive "$MUNGE_PID" munged; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
fi
munge_ok() { munge -n | unmunge; }
wait_for 15 munge_ok || die "munged does not answer (see /var/log/munge/munged.log)"

# ---------------------------------------------------------------- accounting: MariaDB + slurmdbd
if [ "$ACCT" = 1 ]; then
  mkdir -p /run/mysqld; chown mysql:root /run/mysqld
  if ! mysqladmin ping >/dev/null 2>&1; then
    log "starting mariadbd"
    # bound to loopback only; --skip-name-resolve avoids reverse DNS on every connection
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --skip-name-resolve \
      --pid-file="$MYSQL_PID" >/var/log/xq-mariadb.log 2>&1 </dev/null &
    wait_for 60 mysqladmin ping || die "mariadbd did not start (see /var/log/xq-mariadb.log)"
  fi
  # root talks to MariaDB over the unix socket (unix_socket auth, the Debian default)
  mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
    || die "could not create the MariaDB user for slurmdbd"
  NEWDBD=$(cat <<CONF
# Generated by xqueue ci/slurm.sh -- edits are overwritten.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
DebugLevel=info
LogFile=$LOGDIR/slurmdbd.log
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
)
  if [ ! -f "$DBDCONF" ] || [ "$(cat "$DBDCONF")" != "$NEWDBD" ]; then
    printf '%s\n' "$NEWDBD" > "$DBDCONF"
    stop_pidfile "$DBD_PID" slurmdbd
  fi
  # slurmdbd refuses to start unless its config (it holds the DB password) is private to SlurmUser
  chown slurm:slurm "$DBDCONF"; chmod 600 "$DBDCONF"
  if ! pidfile_alive "$DBD_PID" slurmdbd; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
  fi
  wait_for 30 port_open 6819 || die "slurmdbd is not listening on 6819 (see $LOGDIR/slurmdbd.log)"
fi

# ---------------------------------------------------------------- slurmctld + slurmd
if [ "$CONF_CHANGED" = 1 ]; then
  log "slurm.conf changed; (re)starting slurmctld and slurmd"
  stop_pidfile "$SLURMD_PID" slurmd
  stop_pidfile "$CTLD_PID" slurmctld
fi
CTLD_FRESH=0
if ! pidfile_alive "$CTLD_PID" slurmctld; then
  log "starting slurmctld"
  /usr/sbin/slurmctld || die "slurmctld failed to start (see $LOGDIR/slurmctld.log)"
  CTLD_FRESH=1
fi
if ! pidfile_alive "$SLURMD_PID" slurmd; then
  log "starting slurmd"
  /usr/sbin/slurmd || die "slurmd failed to start (see $LOGDIR/slurmd.log)"
fi

# ---------------------------------------------------------------- wait until the node takes jobs
# "idle" on a fresh start; "mixed"/"allocated" if jobs from an earlier test run are still
# running (the node is up either way). down/drain (e.g. after an unclean restart) is resumed.
node_state() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null || true; }
node_up() {
  local s; s=$(node_state)
  case "$s" in
    idle|mixed|allocated|completing) return 0 ;;
    down*|drain*|fail*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
  esac
  return 1
}
wait_for 60 node_up || die "node $NODE is '$(node_state)', not idle after 60 s (see $LOGDIR/slurmctld.log, slurmd.log)"

# ---------------------------------------------------------------- jobs left by an earlier instance
# `start-ctld` (an outage test's restart) keeps them: recovering jobs is what it tests.
queued_jobs() { squeue -h -r -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING -o %i; }
if [ "$MODE" = start ] && [ "$CTLD_FRESH" = 1 ]; then
  cancel_recovered slurmctld "$LOGDIR/slurmctld.log" queued_jobs scancel --partition=debug
fi

if [ "$ACCT" = 1 ]; then
  # slurmctld registers the cluster in slurmdbd when it starts; sacct only works after that
  cluster_registered() { sacctmgr -n -P show cluster format=cluster | has -x xq; }
  wait_for 30 cluster_registered || die "cluster xq not registered in slurmdbd (see $LOGDIR/slurmdbd.log)"
fi

MAXARRAY=$(scontrol show config | awk -F' *= *' '$1=="MaxArraySize"{print $2}')
echo "slurm ready: node $NODE $(node_state), partition debug, CPUs=$CPUS, MinJobAge=$MINJOBAGE, MaxArraySize=${MAXARRAY:-?}, accounting=$([ "$ACCT" = 1 ] && echo slurmdbd || echo none)"
