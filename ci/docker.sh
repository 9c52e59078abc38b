#!/usr/bin/env bash
# A real Docker engine for the xqueue container tests: Debian's docker.io (dockerd 20.10 with
# its own containerd), listening on unix:///run/docker.sock, started by hand (no systemd).
#
#   ci/docker.sh          install if needed, configure, start dockerd, import the image
#   ci/docker.sh stop     stop dockerd (it stops its containerd)
#
# Image: xq-busybox:latest (docker.io/library/xq-busybox:latest), `docker import`ed from the
# tarball ci/images.sh builds (no registry is reachable from CI).
# Idempotent; a re-run checks the daemon and runs one test container (~0.5 s).
#
# Why the configuration looks like this (all found out on the target machine kind):
#   * iptables/ip6tables off and bridge "none": no NAT/bridge setup is needed or wanted in the
#     sandbox; containers get --network none (default here) or host;
#   * native.cgroupdriver=cgroupfs: there is no systemd;
#   * default-ulimits at or below this process's hard limits: the sandbox has no
#     CAP_SYS_RESOURCE, so raising rlimits in the container fails ("Operation not permitted");
#   * storage overlay2 (kernel overlayfs is available).
# The machine may already have a newer docker CLI in /usr/local/bin (28.x); it negotiates API
# 1.41 with this dockerd. Unlike podman's compat API, `docker run --rm` returns the real exit code.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=docker
. "$HERE/lib.sh"

SOCK=/run/docker.sock
PIDF=/run/xq-dockerd.pid
LOGF=/var/log/xq-dockerd.log
IMG=xq-busybox:latest
TAR=${XQ_IMAGE_DIR:-/var/tmp/xqueue-images}/busybox-rootfs.tar

case "${1:-start}" in
  start) need_root ;;
  stop) need_root; stop_pidfile "$PIDF" dockerd 30; echo "docker stopped"; exit 0 ;;
  *) die "usage: $0 [start|stop]" ;;
esac

ensure_pkgs docker.io procps   # procps: pgrep (ci/lib.sh live_pids)
[ -x /usr/sbin/dockerd ] || die "/usr/sbin/dockerd missing after installing docker.io"
DOCKER=(docker -H "unix://$SOCK")

# ---------------------------------------------------------------- config
NOFILE=$(ulimit -Hn); [ "$NOFILE" = unlimited ] && NOFILE=65536
NPROC=$(ulimit -Hu);  [ "$NPROC" = unlimited ] && NPROC=65536
[ "$NPROC" -gt 8192 ] && NPROC=8192
NEW=$(cat <<JSON
{
  "storage-driver": "overlay2",
  "iptables": false,
  "ip6tables": false,
  "bridge": "none",
  "exec-opts": ["native.cgroupdriver=cgroupfs"],
  "default-ulimits": {"nofile": {"Name": "nofile", "Soft": $NOFILE, "Hard": $NOFILE},
                      "nproc": {"Name": "nproc", "Soft": $NPROC, "Hard": $NPROC}},
  "log-driver": "json-file"
}
JSON
)
mkdir -p /etc/docker
if [ ! -f /etc/docker/daemon.json ] || [ "$(cat /etc/docker/daemon.json)" != "$NEW" ]; then
  printf '%s\n' "$NEW" > /etc/docker/daemon.json
  if pidfile_alive "$PIDF" dockerd; then log "daemon.json changed; restarting dockerd"; stop_pidfile "$PIDF" dockerd 30; fi
fi

# ---------------------------------------------------------------- dockerd
docker_up() { "${DOCKER[@]}" version --format '{{.Server.Version}}'; }
if ! pidfile_alive "$PIDF" dockerd; then
  # a dockerd we did not start (e.g. from an init script) would fight over /var/lib/docker
  if ! none_running dockerd; then die "a dockerd not started by this script is running (pid $(live_pids dockerd | paste -sd,)); stop it first"; fi
  rm -f "$PIDF"
  log "starting dockerd on unix://$SOCK"
  setsid /usr/sbin/dockerd -H "unix://$SOCK" -p "$PIDF" >"$LOGF" 2>&1 </dev/null &
fi
wait_for 60 docker_up || die "dockerd does not answer on $SOCK (see $LOGF)"

# ---------------------------------------------------------------- image
if ! "${DOCKER[@]}" image inspect "$IMG" >/dev/null 2>&1; then
  bash "$HERE/images.sh" >&2
  log "importing $IMG"
  "${DOCKER[@]}" import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' "$TAR" "$IMG" >/dev/null \
    || die "docker import $TAR failed"
fi
out=$("${DOCKER[@]}" run --rm --network none "$IMG" sh -c 'echo docker-ok' 2>&1) || true
[ "$out" = docker-ok ] || die "test container failed: $out"
echo "docker ready: dockerd $(docker_up) on unix://$SOCK (API $("${DOCKER[@]}" version --format '{{.Server.APIVersion}}')), storage overlay2, image $IMG"
