#!/usr/bin/env bash
# Builds the tiny container image the xqueue container tests use, without any image registry
# (CI machines can reach only Debian's apt mirror and PyPI):
#
#   $XQ_IMAGE_DIR/busybox-rootfs.tar   (default /var/tmp/xqueue-images; ~2 MB)
#     a root filesystem with Debian's statically linked busybox (busybox-static) as /bin/busybox
#     and its applets (sh, echo, sleep, cat, ...) as symlinks in /bin, plus /etc/passwd and
#     /etc/group for root and nobody. ci/podman.sh and ci/docker.sh `import` it as
#     localhost/xq-busybox:latest and xq-busybox:latest, with CMD /bin/sh and PATH=/bin.
#
#   ci/images.sh          build it if missing (idempotent; a re-run does nothing)
#   ci/images.sh stop     no-op (accepted so ci/services.sh can treat every script alike)
#   ci/images.sh clean    delete the tarball
#
# The busybox-static .deb is downloaded and unpacked into a temporary directory (apt-get
# download + dpkg-deb -x) instead of being installed, so nothing on the host changes (installing
# it would also remove a `busybox` package, which it conflicts with).
# Note: do not add a "busybox -> busybox" symlink; `busybox --list` does not list itself.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=images
. "$HERE/lib.sh"

OUT=${XQ_IMAGE_DIR:-/var/tmp/xqueue-images}
TAR=$OUT/busybox-rootfs.tar

case "${1:-start}" in
  start|build) ;;
  stop) echo "images: nothing to stop"; exit 0 ;;
  clean) rm -f "$TAR"; echo "images cleaned: $TAR"; exit 0 ;;
  *) die "usage: $0 [start|stop|clean]" ;;
esac
need_root

if [ ! -s "$TAR" ]; then
  if ! command -v dpkg-deb >/dev/null || ! command -v apt-get >/dev/null; then
    die "needs apt-get and dpkg-deb (a Debian/Ubuntu machine)"
  fi
  W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
  # apt-get download drops privileges to _apt, which must be able to write the directory
  chmod 755 "$W"; mkdir -p "$W/deb"; chown _apt "$W/deb" 2>/dev/null || true
  fetch() { (cd "$W/deb" && apt-get download -qq busybox-static >/dev/null); }
  if ! fetch; then
    log "apt-get download busybox-static failed; refreshing package lists and retrying"
    apt_update; fetch || die "cannot download busybox-static from the apt mirror"
  fi
  dpkg-deb -x "$W"/deb/busybox-static_*.deb "$W/pkg"
  BB=$W/pkg/bin/busybox
  [ -x "$BB" ] || die "busybox-static package has no /bin/busybox"

  R=$W/rootfs
  mkdir -p "$R"/{bin,tmp,etc,proc,sys,dev,root,work}
  chmod 1777 "$R/tmp"
  cp "$BB" "$R/bin/busybox"
  for app in $("$R/bin/busybox" --list); do
    [ "$app" = busybox ] || ln -sf busybox "$R/bin/$app"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$R/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
  # reproducible tarball: sorted, fixed owner and mtime
  mkdir -p "$OUT"
  tar -C "$R" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$TAR.tmp" .
  mv "$TAR.tmp" "$TAR"
  log "built $TAR"
fi
tar -tf "$TAR" | has -x './bin/sh' || die "$TAR has no ./bin/sh; delete it and re-run"
echo "images ready: $TAR ($(( $(stat -c %s "$TAR") / 1024 )) KiB, busybox rootfs)"
