#!/usr/bin/env bash
# Tools that only the benchmarks use (no test runs them): GNU parallel, the baseline that
# records a job log and each job's output, for benchmarks/cli_vs_xargs.py.
#
#   ci/bench-tools.sh        install if needed; prints the versions
#   ci/bench-tools.sh stop   nothing to stop (no daemon); accepted like the other scripts
#
# Not part of ci/services.sh: CI runs the tests, not the benchmarks.
# GNU parallel prints a citation notice on its first run unless told it was seen
# (`parallel --citation`, or --will-cite on each call): the benchmark passes --will-cite.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XQ_NAME=bench-tools
. "$HERE/lib.sh"

case "${1:-start}" in
  start) need_root ;;
  stop) echo "bench-tools: nothing to stop"; exit 0 ;;
  *) die "usage: $0 [start|stop]" ;;
esac

ensure_pkgs parallel
command -v parallel >/dev/null || die "parallel missing after install"
echo "bench-tools ready: $(parallel --version | head -n1), $(xargs --version | head -n1)"
