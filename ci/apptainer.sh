#!/usr/bin/env bash
# Apptainer for the container tests that use bin="apptainer" (the HPC container runner sites
# allow instead of docker): apptainer 1.4 from Debian sid, installed into the trixie tree of
# ci/lib-trixie.sh (it is not packaged for Debian 12 and needs glibc >= 2.38), and a host
# command that runs it there.
#
#   ci/apptainer.sh         install if needed (the tree itself ~55 s once; apptainer ~5 s),
#                           build the busybox image, install the host command, run one container
#   ci/apptainer.sh stop    nothing to stop (no daemon); accepted like the other scripts
#   ci/apptainer.sh clean   delete the image and the host command (ci/htcondor.sh clean deletes
#                           the tree)
#
# What the host gets:
#   * $XQ_APPTAINER_BIN (default /usr/local/lib/xqueue-ci/bin/apptainer): a small script that
#     runs the real apptainer inside the tree. THIS IS HOW THE TEST ENVIRONMENT PROVIDES
#     APPTAINER, not how a site does: each call unshares a private mount namespace, mounts
#     /proc, /dev, /sys and a tmpfs /run for it, bind-mounts the shared folders at the SAME
#     paths inside, enters the tree with pivot_root (apptainer refuses a plain chroot: "weak
#     chrooted environment") and execs `apptainer "$@"`. Its exit status is apptainer's, and a
#     signal to its process group reaches apptainer and the container. It is called
#     `apptainer` so the container backend knows which engine it drives (bin is a path);
#   * shared folders (bound at the same path): $XQ_CONDOR_SHARED (default
#     /var/tmp/xqueue-condor-shared, where the tests put the workdirs) and $XQ_IMAGE_DIR
#     (default /var/tmp/xqueue-images). Any other host path does not exist for apptainer;
#   * $XQ_IMAGE_DIR/busybox.sif, built from ci/images.sh's busybox root filesystem tarball
#     (rebuilt when the tarball is newer).
#
# Why it looks like this (found out on the target machine kind):
#   * the machine's sandbox leaves CAP_SYS_RESOURCE out of the bounding set, which apptainer
#     as root wants to keep: run it with --no-privs (xqueue's apptainer backend does);
#   * sid's Release file carries a Valid-Until date that a mirror snapshot outlives: the sid
#     source is added with Check-Valid-Until: no, and pinned to priority 1 so nothing but
#     the packages asked for by name (apptainer/sid) ever comes from it.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=apptainer
. "$HERE/lib.sh"
. "$HERE/lib-trixie.sh"

SHARED=${XQ_CONDOR_SHARED:-/var/tmp/xqueue-condor-shared}
IMGDIR=${XQ_IMAGE_DIR:-/var/tmp/xqueue-images}
TAR=$IMGDIR/busybox-rootfs.tar
SIF=$IMGDIR/busybox.sif
BIN=${XQ_APPTAINER_BIN:-/usr/local/lib/xqueue-ci/bin/apptainer}
for p in "$SHARED" "$IMGDIR" "$BIN"; do
  case "$p" in /*) ;; *) die "XQ_CONDOR_SHARED, XQ_IMAGE_DIR and XQ_APPTAINER_BIN must be absolute paths" ;; esac
done

case "${1:-start}" in
  start) need_root ;;
  stop) echo "apptainer: nothing to stop"; exit 0 ;;
  clean) need_root; rm -f "$SIF" "$BIN"; echo "apptainer cleaned: $SIF $BIN"; exit 0 ;;
  *) die "usage: $0 [start|stop|clean]" ;;
esac

T0=$(now_ms)
trixie_lock
trixie_ensure
SID=$TRIXIE/etc/apt/sources.list.d/xqueue-sid.sources
if [ ! -f "$SID" ]; then
  mirror=$(debian_mirror)
  printf 'Types: deb\nURIs: %s\nSuites: sid\nComponents: main\nCheck-Valid-Until: no\n' "$mirror" > "$SID"
  printf 'Package: *\nPin: release n=sid\nPin-Priority: 1\n' > "$TRIXIE/etc/apt/preferences.d/xqueue-sid"
fi
trixie_apt apptainer/sid
T_INSTALL=$(( $(now_ms) - T0 ))

# ---------------------------------------------------------------- the host command
mkdir -p "$SHARED" "$IMGDIR" "${BIN%/*}" "$TRIXIE$SHARED" "$TRIXIE$IMGDIR" "$TRIXIE/.oldroot"
[ -d "$SHARED" ] && [ "$(stat -c %a "$SHARED")" != 1777 ] && chmod 1777 "$SHARED"
NEW=$(mktemp); trap 'rm -f "$NEW"' EXIT
cat > "$NEW" <<WRAPPER
#!/bin/bash
# Written by xqueue ci/apptainer.sh: runs the apptainer installed in $TRIXIE (Debian trixie
# with apptainer from sid), in a private mount namespace that vanishes when it exits, with
# $SHARED and $IMGDIR bound at the same paths. Arguments and exit status are apptainer's own.
exec unshare --mount --propagation private /bin/bash -c '
  R=\$1; shift
  mount --bind "\$R" "\$R" && mount -t proc proc "\$R/proc" && mount --rbind /dev "\$R/dev" \\
    && mount --rbind /sys "\$R/sys" && mount -t tmpfs tmpfs "\$R/run" \\
    && mount --bind "$SHARED" "\$R$SHARED" && mount --bind "$IMGDIR" "\$R$IMGDIR" \\
    && cd "\$R" && pivot_root . .oldroot || { echo "xq apptainer wrapper: cannot enter \$R" >&2; exit 255; }
  exec /usr/sbin/chroot . /bin/sh -c "umount -l /.oldroot && cd / && exec apptainer \\"\\\$@\\"" apptainer "\$@"
' xq-apptainer "$TRIXIE" "\$@"
WRAPPER
if ! cmp -s "$NEW" "$BIN"; then
  log "installing $BIN"
  install -m 755 "$NEW" "$BIN"
fi
trixie_unlock

# ---------------------------------------------------------------- the image
[ -s "$TAR" ] || bash "$HERE/images.sh" >&2
if [ ! -s "$SIF" ] || [ "$TAR" -nt "$SIF" ]; then
  log "building $SIF from $TAR"
  W=$(mktemp -d "$SHARED/.build.XXXXXX")
  tar -C "$W" -xf "$TAR" || die "cannot unpack $TAR"
  rc=0; "$BIN" -s build --force "$SIF.tmp" "$W" >&2 || rc=$?
  rm -rf "$W"
  [ "$rc" = 0 ] || die "apptainer build failed (rc $rc)"
  mv "$SIF.tmp" "$SIF"
fi

# ---------------------------------------------------------------- one real container
rc=0
out=$("$BIN" exec --no-privs --containall --cleanenv "$SIF" /bin/sh -c 'echo apptainer-ok; exit 3' 2>&1) || rc=$?
if [ "$rc" != 3 ] || [ "$out" != apptainer-ok ]; then die "test container failed (rc $rc, expected 3): $out"; fi
version=$("$BIN" --version 2>/dev/null | awk '{print $NF}')
echo "apptainer ready: apptainer $version (in $TRIXIE) through $BIN, image $SIF, shared $SHARED and $IMGDIR; setup $(( T_INSTALL / 1000 )) s"
