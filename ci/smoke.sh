#!/usr/bin/env bash
# Quick end-to-end check of the services started by ci/services.sh, with each system's own CLI
# (no Python needed). Runs one real job/login/container per service and checks its exit code.
#
#   ci/smoke.sh                 all of: slurm sge ssh podman docker charliecloud
#   ci/smoke.sh ssh docker      only those
#
# Prints one line per service with its time; exit status non-zero if any check failed.
# Takes ~3 s when everything is up. (Check functions run with errexit off, so every step that
# matters checks its own status.)
# shellcheck disable=SC2329  # the small check functions are called through wait_for
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=smoke
. "$HERE/lib.sh"

ALL=(slurm sge ssh podman docker charliecloud)
NAMES=("$@"); [ ${#NAMES[@]} -gt 0 ] || NAMES=("${ALL[@]}")
W=$(mktemp -d /tmp/xq-smoke.XXXXXX); trap 'rm -rf "$W"' EXIT
chmod 755 "$W"

smoke_slurm() {
  local j
  j=$(cd "$W" && sbatch --parsable -o "$W/slurm-%j.out" --wrap 'echo hi; exit 3') || { echo "sbatch failed"; return 1; }
  job_done() { scontrol show job -o "$j" | has -E 'JobState=(FAILED|COMPLETED|CANCELLED)'; }
  wait_for 30 job_done || { echo "job $j did not finish: $(scontrol show job -o "$j")"; return 1; }
  scontrol show job -o "$j" | has 'ExitCode=3:0' || { echo "job $j: wrong exit code"; return 1; }
  [ "$(cat "$W/slurm-$j.out")" = hi ] || { echo "job $j: wrong output"; return 1; }
  if scontrol show config | has -E 'AccountingStorageType *= *accounting_storage/slurmdbd'; then
    acct_ok() { [ "$(sacct -n -X -P -j "$j" --format=State,ExitCode)" = "FAILED|3:0" ]; }
    wait_for 15 acct_ok || { echo "sacct for $j: '$(sacct -n -X -P -j "$j" --format=State,ExitCode 2>&1)'"; return 1; }
  fi
}

smoke_sge() {
  local j o
  printf '#!/bin/sh\n#$ -S /bin/sh\necho hi\nexit 3\n' > "$W/job.sh"
  j=$(cd "$W" && qsub -terse -cwd -j y -o "$W/sge.out" "$W/job.sh") || { echo "qsub failed"; return 1; }
  acct() { o=$(qacct -j "$j" 2>/dev/null); }
  wait_for 60 acct || { echo "no qacct record for job $j"; return 1; }
  grep -qE '^exit_status +3' <<<"$o" || { echo "job $j: wrong exit status"; return 1; }
  [ "$(cat "$W/sge.out")" = hi ] || { echo "job $j: wrong output"; return 1; }
}

smoke_ssh() {
  local env=${XQ_SSH_DIR:-/tmp/xqueue-sshd}/env p who
  [ -f "$env" ] || { echo "no $env"; return 1; }
  # shellcheck disable=SC1090
  . "$env"
  for p in $XQ_SSH_PORT $XQ_SSH_PORT2; do
    who=$(ssh -i "$XQ_SSH_KEY" -p "$p" -o UserKnownHostsFile="$XQ_SSH_KNOWN_HOSTS" -o StrictHostKeyChecking=yes \
              -o BatchMode=yes -o ControlMaster=no -o ControlPath=none -o ConnectTimeout=5 \
              "$XQ_SSH_USER@$XQ_SSH_HOST" 'id -un; exit 3') && { echo "port $p: exit 0, expected 3"; return 1; }
    [ "$who" = "$XQ_SSH_USER" ] || { echo "port $p: got '$who'"; return 1; }
  done
}

smoke_podman() {
  local rc=0
  podman run --rm localhost/xq-busybox:latest sh -c 'exit 3' || rc=$?
  [ "$rc" = 3 ] || { echo "podman run: rc $rc, expected 3"; return 1; }
  curl -sf --unix-socket /run/podman/podman.sock http://d/_ping >/dev/null || { echo "podman API socket does not answer"; return 1; }
}

smoke_docker() {
  local rc=0
  docker -H unix:///run/docker.sock run --rm --network none xq-busybox:latest sh -c 'exit 3' || rc=$?
  [ "$rc" = 3 ] || { echo "docker run: rc $rc, expected 3"; return 1; }
}

smoke_charliecloud() {
  local rc=0 dir=${XQ_IMAGE_DIR:-/var/tmp/xqueue-images}/busybox-chrun
  USER=${USER:-$(id -un)} ch-run "$dir" -- sh -c 'exit 3' || rc=$?
  [ "$rc" = 3 ] || { echo "ch-run: rc $rc, expected 3"; return 1; }
}

failed=()
for n in "${NAMES[@]}"; do
  declare -F "smoke_$n" >/dev/null || die "unknown service '$n' (known: ${ALL[*]})"
  t0=$(now_ms); rc=0
  msg=$( "smoke_$n" 2>&1 ) || rc=$?
  ms=$(( $(now_ms) - t0 ))
  if [ "$rc" = 0 ]; then echo "smoke $n: ok ($ms ms)"; else echo "smoke $n: FAILED ($ms ms): $msg"; failed+=("$n"); fi
done
[ ${#failed[@]} -eq 0 ] || { echo "smoke: FAILED: ${failed[*]}" >&2; exit 1; }
