#!/usr/bin/env bash
# charliecloud's ch-run (Debian charliecloud-runtime 0.31) for the container tests that use
# bin="ch-run": an HPC container runner with no daemon and no API, where the container is
# the child process itself (apptainer/singularity are not packaged for Debian 12).
#
#   ci/charliecloud.sh          install if needed, unpack the busybox image, run one container
#   ci/charliecloud.sh stop     nothing to stop (no daemon); accepted like the other scripts
#   ci/charliecloud.sh clean    delete the unpacked image directory
#
# Image: ch-run takes an unpacked directory, not an image name. The busybox root filesystem
# tarball that ci/images.sh builds is unpacked to $XQ_IMAGE_DIR/busybox-chrun (default
# /var/tmp/xqueue-images); it is unpacked again whenever the tarball is newer. The tests unpack
# their own copy from the tarball (so they never share a directory with a run of this script);
# this one is for the check below and for trying ch-run by hand:
#     USER=root ch-run /var/tmp/xqueue-images/busybox-chrun -- sh -c 'echo hi'
#
# Why it looks like this (found out on the target machine kind):
#   * as root, ch-run refuses to start without $USER ("ch-run: error: $USER not set"), and
#     CI shells often have none (even `ch-run --version` needs it): this script sets it, and so
#     does xqueue's ch-run backend;
#   * as an unprivileged user ch-run works through user namespaces, if the image directory is
#     readable by that user (it is: the tarball's modes are kept);
#   * procps: the tests check with `ps -g PGID` that a killed ch-run left nothing behind.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=charliecloud
. "$HERE/lib.sh"

IMGDIR=${XQ_IMAGE_DIR:-/var/tmp/xqueue-images}
TAR=$IMGDIR/busybox-rootfs.tar
DIR=$IMGDIR/busybox-chrun

case "${1:-start}" in
  start) need_root ;;
  stop) echo "charliecloud: nothing to stop"; exit 0 ;;
  clean) need_root; rm -rf "$DIR"; echo "charliecloud cleaned: $DIR"; exit 0 ;;
  *) die "usage: $0 [start|stop|clean]" ;;
esac

ensure_pkgs charliecloud-runtime procps
command -v ch-run >/dev/null || die "ch-run not on PATH after installing charliecloud-runtime"

# ---------------------------------------------------------------- image directory
[ -s "$TAR" ] || bash "$HERE/images.sh" >&2
if [ ! -x "$DIR/bin/sh" ] || [ "$TAR" -nt "$DIR/bin/busybox" ]; then
  log "unpacking $TAR into $DIR"
  rm -rf "$DIR.tmp"; mkdir -p "$DIR.tmp"
  tar -C "$DIR.tmp" -xf "$TAR" || die "cannot unpack $TAR"
  touch "$DIR.tmp/bin/busybox"          # newer than the tarball: no unpacking on the next run
  rm -rf "$DIR"; mv "$DIR.tmp" "$DIR"
fi

# ---------------------------------------------------------------- one real container
export USER=${USER:-$(id -un)}
rc=0
out=$(ch-run "$DIR" -- sh -c 'echo ch-run-ok; exit 3' 2>&1) || rc=$?
[ "$rc" = 3 ] && [ "$out" = ch-run-ok ] || die "test container failed (rc $rc, expected 3): $out"
echo "charliecloud ready: ch-run $(ch-run --version 2>&1) at $(command -v ch-run), image directory $DIR"
