#!/usr/bin/env bash
# Two private OpenSSH servers on loopback for the xqueue test suite.
#
#   127.0.0.1:2222  MaxSessions 100   (XQ_SSH_PORT)   the "roomy" server
#   127.0.0.1:2223  MaxSessions 10    (XQ_SSH_PORT2)  OpenSSH's default limit: the 11th concurrent
#                                                     channel on one connection fails with
#                                                     "open failed", as on a real server
# Key-only auth for the user xqtest (XQ_SSH_USER; root is accepted with the same key too).
# Each server has its own config, host key, pid file and log under $XQ_SSH_DIR/<port>/; the
# system's /etc/ssh/sshd_config is not used and no sshd on port 22 is started.
#
#   ci/ssh.sh                  start both servers (install/configure as needed)
#   ci/ssh.sh start 2223       start only that one (quick: for tests that restart a server)
#   ci/ssh.sh stop [PORT...]   stop both, or only the given ones. Stopping kills the listener AND
#                              its per-connection sshd processes, so open connections drop as if
#                              the server went down (commands already started by those sessions
#                              are not killed). XQ_SSH_STOP_SESSIONS=0: kill the listener only,
#                              existing connections keep working (like an sshd restart).
#
# Connection facts go to $XQ_SSH_DIR/env (KEY=VALUE lines, shell- and Python-parsable):
#   XQ_SSH_HOST XQ_SSH_PORT XQ_SSH_PORT2 XQ_SSH_PORTS XQ_SSH_MAX_SESSIONS XQ_SSH_MAX_SESSIONS2
#   XQ_SSH_USER XQ_SSH_KEY XQ_SSH_KNOWN_HOSTS XQ_SSH_DIR
# known_hosts pins the host key of both ports ("[127.0.0.1]:2222 ssh-ed25519 ..."), so clients
# can use strict host key checking. Keys survive restarts (regenerated only if missing).
#
# Why: accounts made by useradd are locked ("!" password); with UsePAM no, sshd refuses locked
# accounts even for key auth ("User xqtest not allowed because account is locked"), hence
# usermod -p '*'. UsePAM no + UseDNS no keep logins fast and independent of the machine's PAM.
# MaxStartups is raised on both servers so tests that open many connections at once are not
# randomly refused (the default starts dropping at 10 unauthenticated connections).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=ssh
. "$HERE/lib.sh"

DIR=${XQ_SSH_DIR:-/tmp/xqueue-sshd}
PORT1=${XQ_SSH_PORT:-2222}
PORT2=${XQ_SSH_PORT2:-2223}
USR=${XQ_SSH_USER:-xqtest}
KEY=$DIR/client_ed25519
KH=$DIR/known_hosts

max_sessions() { if [ "$1" = "$PORT2" ]; then echo 10; else echo 100; fi; }

ACTION=${1:-start}; [ $# -gt 0 ] && shift
PORTS=("$@"); [ ${#PORTS[@]} -gt 0 ] || PORTS=("$PORT1" "$PORT2")
for p in "${PORTS[@]}"; do
  [ "$p" = "$PORT1" ] || [ "$p" = "$PORT2" ] || die "unknown port '$p' (this script manages $PORT1 and $PORT2)"
done
case "$ACTION" in start|stop) ;; *) die "usage: $0 [start|stop] [PORT...]" ;; esac
need_root

# descendants PID: pids of all processes below PID
descendants() {
  ps -eo pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END { n = split(kids[root], q, " "); for (i = 1; i <= n; i++) { print q[i]; m = split(kids[q[i]], more, " "); for (j = 1; j <= m; j++) q[++n] = more[j] } }'
}

stop_port() {
  local port=$1 pidf=$DIR/$1/sshd.pid pid sess=()
  pid=$(pidfile_pid "$pidf")
  if [ -n "$pid" ] && proc_alive "$pid" sshd; then
    if [ "${XQ_SSH_STOP_SESSIONS:-1}" = 1 ]; then
      local d; for d in $(descendants "$pid"); do
        [ "$(cat "/proc/$d/comm" 2>/dev/null)" = sshd ] && sess+=("$d")
      done
    fi
    stop_pid "$pid" sshd 10
    local s; for s in "${sess[@]}"; do kill -TERM "$s" 2>/dev/null || true; done
    for s in "${sess[@]}"; do wait_for 5 proc_gone "$s" sshd || kill -KILL "$s" 2>/dev/null || true; done
  fi
  rm -f "$pidf"
  wait_for 10 eval "! port_open $port" || die "port $port still accepts connections after stopping sshd"
}

if [ "$ACTION" = stop ]; then
  for p in "${PORTS[@]}"; do stop_port "$p"; done
  echo "ssh stopped: ${PORTS[*]}"; exit 0
fi

# ---------------------------------------------------------------- install, keys, user
ensure_pkgs openssh-server openssh-client procps   # procps: ps, to find a server's sessions
if [ -e "$DIR" ] && [ "$(stat -c %u "$DIR")" != 0 ]; then die "$DIR exists and is not owned by root; remove it"; fi
mkdir -p "$DIR" /run/sshd; chmod 755 "$DIR" /run/sshd      # /run/sshd: sshd's privilege-separation dir
[ -s "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -f "$KEY" -C xqueue-test-client
# only this key is accepted (not the users' own ~/.ssh/authorized_keys)
cp "$KEY.pub" "$DIR/authorized_keys"; chmod 644 "$DIR/authorized_keys"
id "$USR" >/dev/null 2>&1 || { log "creating user $USR"; useradd -m -s /bin/bash "$USR"; }
[ "$(getent shadow "$USR" | cut -d: -f2)" = '*' ] || usermod -p '*' "$USR"   # unlock, no password

# ---------------------------------------------------------------- per-port config + host key
write_config() {
  local port=$1 d=$DIR/$1 new
  mkdir -p "$d"
  [ -s "$d/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$d/host_ed25519" -C "xqueue-test-host-$port"
  new=$(cat <<CONF
# Generated by xqueue ci/ssh.sh -- edits are overwritten.
Port $port
ListenAddress 127.0.0.1
HostKey $d/host_ed25519
PidFile $d/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
AuthorizedKeysFile $DIR/authorized_keys
StrictModes no
MaxSessions $(max_sessions "$port")
MaxStartups 100:30:200
Subsystem sftp internal-sftp
LogLevel INFO
CONF
)
  if [ ! -f "$d/sshd_config" ] || [ "$(cat "$d/sshd_config")" != "$new" ]; then
    printf '%s\n' "$new" > "$d/sshd_config"
    /usr/sbin/sshd -t -f "$d/sshd_config" || die "sshd rejects $d/sshd_config"
    # a running server re-reads its config on SIGHUP
    if pidfile_alive "$d/sshd.pid" sshd; then kill -HUP "$(pidfile_pid "$d/sshd.pid")"; sleep 0.3; fi
  fi
}
for p in "$PORT1" "$PORT2"; do write_config "$p"; done

# known_hosts + env always describe both servers, whichever were asked to start
{ for p in "$PORT1" "$PORT2"; do echo "[127.0.0.1]:$p $(cut -d' ' -f1,2 "$DIR/$p/host_ed25519.pub")"; done; } > "$KH.tmp"
mv "$KH.tmp" "$KH"; chmod 644 "$KH"
cat > "$DIR/env.tmp" <<ENV
XQ_SSH_HOST=127.0.0.1
XQ_SSH_PORT=$PORT1
XQ_SSH_PORT2=$PORT2
XQ_SSH_PORTS=$PORT1,$PORT2
XQ_SSH_MAX_SESSIONS=$(max_sessions "$PORT1")
XQ_SSH_MAX_SESSIONS2=$(max_sessions "$PORT2")
XQ_SSH_USER=$USR
XQ_SSH_KEY=$KEY
XQ_SSH_KNOWN_HOSTS=$KH
XQ_SSH_DIR=$DIR
ENV
mv "$DIR/env.tmp" "$DIR/env"; chmod 644 "$DIR/env"

# ---------------------------------------------------------------- start + check a real login
ssh_cmd() {
  ssh -i "$KEY" -p "$1" -o UserKnownHostsFile="$KH" -o StrictHostKeyChecking=yes -o BatchMode=yes \
      -o ControlMaster=no -o ControlPath=none -o ConnectTimeout=5 "$USR@127.0.0.1" "${@:2}"
}
for p in "${PORTS[@]}"; do
  d=$DIR/$p
  if ! pidfile_alive "$d/sshd.pid" sshd; then
    port_open "$p" && die "port $p is taken by another process (not our sshd: $d/sshd.pid)"
    log "starting sshd on 127.0.0.1:$p"
    /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log" || die "sshd on port $p failed to start (see $d/sshd.log)"
  fi
  wait_for 10 port_open "$p" || die "sshd on port $p does not listen (see $d/sshd.log)"
  who=$(ssh_cmd "$p" id -un 2>&1) || die "key login to $USR@127.0.0.1:$p failed: $who (see $d/sshd.log)"
  [ "$who" = "$USR" ] || die "login on port $p ran as '$who', not $USR"
done
status=()
for p in "$PORT1" "$PORT2"; do
  if pidfile_alive "$DIR/$p/sshd.pid" sshd; then status+=("$p(MaxSessions $(max_sessions "$p"))"); else status+=("$p(stopped)"); fi
done
echo "ssh ready: $USR@127.0.0.1 ports ${status[*]}; env $DIR/env, key $KEY, known_hosts $KH"
