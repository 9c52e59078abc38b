#!/usr/bin/env bash
# Installs (apt-get, as root) and starts every real service the xqueue test suite can use:
#
#   ci/services.sh                    all of: slurm sge ssh images charliecloud podman docker
#                                     htcondor apptainer
#   ci/services.sh slurm ssh          only those, in that order
#   ci/services.sh stop [NAME...]     stop all (or the named ones), in reverse order
#
# Each service is handled by ci/<name>.sh (see the header of each for what it sets up and why).
# A failing service does not stop the others; the summary lists each with its wall-clock time,
# and the exit status is non-zero if any failed. Safe to run repeatedly: a re-run on a machine
# where everything is up takes a few seconds. On a fresh machine `apt-get update` runs once (the
# first script that needs a package does it; the others see a fresh stamp, see ci/lib.sh).
# Environment knobs are passed through to the scripts (XQ_SLURM_ACCOUNTING, XQ_SLURM_MINJOBAGE,
# XQ_SGE_SLOTS, XQ_SSH_DIR, XQ_IMAGE_DIR, XQ_CONDOR_*, ...). htcondor and apptainer share one
# Debian trixie chroot (ci/lib-trixie.sh): the first of them to run builds it (~55 s, once).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=services
. "$HERE/lib.sh"

ALL=(slurm sge ssh images charliecloud podman docker htcondor apptainer)
ACTION=start
if [ "${1:-}" = stop ] || [ "${1:-}" = start ]; then ACTION=$1; shift; fi
NAMES=("$@"); [ ${#NAMES[@]} -gt 0 ] || NAMES=("${ALL[@]}")
for n in "${NAMES[@]}"; do
  [ -f "$HERE/$n.sh" ] && [[ " ${ALL[*]} " == *" $n "* ]] || die "unknown service '$n' (known: ${ALL[*]})"
done
need_root
if [ "$ACTION" = stop ]; then   # reverse order
  rev=(); for ((i=${#NAMES[@]}-1; i>=0; i--)); do rev+=("${NAMES[i]}"); done; NAMES=("${rev[@]}")
fi

failed=(); summary=()
t_all=$(now_ms)
for n in "${NAMES[@]}"; do
  echo "==> $n $ACTION" >&2
  t0=$(now_ms); rc=0
  bash "$HERE/$n.sh" "$ACTION" || rc=$?
  ms=$(( $(now_ms) - t0 ))
  secs=$(printf '%d.%01d' $((ms / 1000)) $((ms % 1000 / 100)))
  if [ "$rc" = 0 ]; then summary+=("  $n: ok (${secs} s)"); else summary+=("  $n: FAILED rc=$rc (${secs} s)"); failed+=("$n"); fi
  echo "<== $n: $([ "$rc" = 0 ] && echo ok || echo "FAILED (rc $rc)") in ${secs} s" >&2
done
ms=$(( $(now_ms) - t_all ))
echo "services $ACTION summary (total $((ms / 1000)).$((ms % 1000 / 100)) s):"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then echo "services: FAILED: ${failed[*]}" >&2; exit 1; fi
