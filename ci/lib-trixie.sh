# shellcheck shell=bash
# A Debian trixie root filesystem that ci/htcondor.sh and ci/apptainer.sh run their programs in.
# Sourced after ci/lib.sh, never run directly.
#
# Why a chroot at all: HTCondor (trixie's `condor`) and apptainer (only in sid) are not packaged
# for Debian 12, and their binaries need glibc >= 2.38, which Debian 12 lacks. So they are
# installed with apt into a trixie tree made by debootstrap (~55 s, once), and run there:
#   * everything runs in a private mount namespace (`unshare --mount --propagation private`):
#     /proc, /dev, /sys and a tmpfs /run are mounted for it, and all of it vanishes when the last
#     process of the namespace exits, so nothing is left mounted on the host;
#   * the folders the host must share with the programs inside (the jobs' folders, the images)
#     are bind-mounted at the SAME path inside, so a path means the same file on both sides;
#   * apptainer refuses a plain chroot ("weak chrooted environment"): trixie_pivot enters the
#     tree with pivot_root instead (ROOT bind-mounted onto itself so it is a mount point).
# The mirror is the one this machine's own apt sources name (never a hard-coded host); set
# XQ_DEBIAN_MIRROR to override it.

TRIXIE=${XQ_TRIXIE_ROOT:-/var/tmp/xqueue-trixie}
TRIXIE_LOCK=/var/tmp/xqueue-ci/trixie.lock

# debian_mirror: the URI of this machine's Debian archive, read from its apt sources (deb822
# .sources files and one-line .list files): the entry that carries the host's own codename.
debian_mirror() {
  if [ -n "${XQ_DEBIAN_MIRROR:-}" ]; then echo "$XQ_DEBIAN_MIRROR"; return 0; fi
  local codename f uri=""
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || die "cannot tell this machine's Debian codename from /etc/os-release"
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk -v want="$codename" '
      function flush() { if (ok && u != "") { print u; found = 1; exit } ok = 0; u = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^URIs:/ { u = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want) ok = 1 }
      END { if (!found) flush() }' "$f")
    [ -z "$uri" ] || break
  done
  if [ -z "$uri" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      uri=$(awk -v want="$codename" '
        $1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                      if ($(i + 1) == want) { print $i; exit } }' "$f")
      [ -z "$uri" ] || break
    done
  fi
  [ -n "$uri" ] || die "no Debian mirror for '$codename' in /etc/apt/sources.list{,.d/*}; set XQ_DEBIAN_MIRROR"
  echo "${uri%/}"
}

# trixie_lock: serialise work on the tree (two scripts installing into it at once would fight
# over dpkg's lock). Held until the calling script exits.
trixie_lock() {
  mkdir -p "${TRIXIE_LOCK%/*}"
  exec {XQ_TRIXIE_FD}>"$TRIXIE_LOCK"
  flock -w 600 "$XQ_TRIXIE_FD" || die "another ci script holds $TRIXIE_LOCK for over 10 minutes"
}
# trixie_unlock: let go of it before starting anything long-lived (a daemon would inherit the
# descriptor and hold the lock for as long as it runs).
trixie_unlock() { if [ -n "${XQ_TRIXIE_FD:-}" ]; then exec {XQ_TRIXIE_FD}>&-; XQ_TRIXIE_FD=; fi; }

# trixie_ensure: the tree exists and is complete (debootstrap once; a marker file says it
# finished, so an interrupted run starts over instead of using half a tree).
trixie_ensure() {
  if [ ! -f "$TRIXIE/.xqueue-complete" ]; then
    ensure_pkgs debootstrap
    local mirror t0; mirror=$(debian_mirror); t0=$(now_ms)
    log "debootstrap trixie into $TRIXIE from $mirror (about a minute, once)"
    rm -rf "$TRIXIE.tmp"
    debootstrap --variant=minbase trixie "$TRIXIE.tmp" "$mirror" >"$TRIXIE.log" 2>&1 \
      || die "debootstrap failed (last lines of $TRIXIE.log: $(tail -n 3 "$TRIXIE.log" | tr '\n' ' '))"
    # No package may start a service inside (there is no init; a daemon would grab a port).
    printf '#!/bin/sh\n# from xqueue ci/lib-trixie.sh: never start services\nexit 101\n' \
      > "$TRIXIE.tmp/usr/sbin/policy-rc.d"
    chmod 755 "$TRIXIE.tmp/usr/sbin/policy-rc.d"
    rm -rf "$TRIXIE"; mv "$TRIXIE.tmp" "$TRIXIE"
    touch "$TRIXIE/.xqueue-complete"
    log "debootstrap took $(( ($(now_ms) - t0) / 1000 )) s"
  fi
  # The machine's name must resolve inside as outside (daemons look themselves up), and apt
  # inside needs the host's resolver: refreshed on every start, the machine may have changed.
  cmp -s /etc/hosts "$TRIXIE/etc/hosts" || cp /etc/hosts "$TRIXIE/etc/hosts"
  cmp -s /etc/resolv.conf "$TRIXIE/etc/resolv.conf" 2>/dev/null \
    || cp -L /etc/resolv.conf "$TRIXIE/etc/resolv.conf" 2>/dev/null || true
}

# trixie_run CMD...: run CMD chrooted in the tree, in a private mount namespace with /proc,
# /dev and a tmpfs /run. For installing and configuring; nothing is shared with the host.
trixie_run() {
  # shellcheck disable=SC2016  # expanded by the inner bash
  unshare --mount --propagation private bash -c '
    R=$1; shift
    mount -t proc proc "$R/proc" && mount --rbind /dev "$R/dev" && mount -t tmpfs tmpfs "$R/run" \
      && mkdir -p "$R/run/lock" || exit 1
    exec chroot "$R" "$@"
  ' _ "$TRIXIE" "$@"
}

trixie_pkg_installed() {
  # shellcheck disable=SC2016  # a dpkg-query format, not a shell expansion
  [ "$(chroot "$TRIXIE" dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# trixie_apt [-t RELEASE] PKG...: apt-get install inside the tree whatever is missing (the lists
# are refreshed first, once per script run). PKG may be NAME/RELEASE (e.g. apptainer/sid).
XQ_TRIXIE_UPDATED=0
trixie_apt() {
  local missing=() p t0
  for p in "$@"; do trixie_pkg_installed "${p%%/*}" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  t0=$(now_ms)
  if [ "$XQ_TRIXIE_UPDATED" = 0 ]; then
    log "apt-get update (in $TRIXIE)"
    trixie_run apt-get update -qq >>"$TRIXIE.log" 2>&1 \
      || die "apt-get update inside $TRIXIE failed (see $TRIXIE.log)"
    XQ_TRIXIE_UPDATED=1
  fi
  log "apt-get install ${missing[*]} (in $TRIXIE)"
  trixie_run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" \
    >>"$TRIXIE.log" 2>&1 || die "apt-get install ${missing[*]} inside $TRIXIE failed (see $TRIXIE.log)"
  log "installed ${missing[*]} in $(( ($(now_ms) - t0) / 1000 )) s"
}

# trixie_user NAME UID: an unprivileged account inside the tree (jobs may not run as root).
trixie_user() {
  chroot "$TRIXIE" getent passwd "$1" >/dev/null && return 0
  chroot "$TRIXIE" useradd -u "$2" -U -m -s /bin/sh "$1" || die "cannot create user $1 in $TRIXIE"
}
