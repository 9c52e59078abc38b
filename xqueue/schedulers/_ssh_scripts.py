"""The shell scripts the SSH scheduler runs on a server, and the parsers of their output.

Every script is POSIX sh, sent on stdin to ``sh -s`` (the login shell never parses it),
and reads process state from /proc: the servers must be Linux.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ..job import SCRIPT, attempt_file

PID = "ssh"
"""The kind of the attempt file (``job.<n>.ssh``) written on the server right after the
fork: ``<server> <pid>``; finds a job whose id was never recorded (the connection or the
controller died in between)."""

# Exit codes of the submit script for problems found on the server before the fork.
NO_SCRIPT, NO_SETSID, NO_CWD = 95, 96, 97


def parse_jid(jid: str | None) -> tuple[str, int, str] | None:
    """(server, pid, start time) from ``server:pid:start``; the server name may hold ':'."""
    if not jid:
        return None
    server, _, rest = jid.rpartition(":")
    server, _, pid = server.rpartition(":")
    if not server or not pid.isdigit():
        return None
    return server, int(pid), rest


def parse_stat(line: str) -> tuple[int, str, str] | None:
    """(pid, state, start time) from one /proc/<pid>/stat line."""
    head, _, tail = line.rpartition(")")
    fields = tail.split()
    pid = head.split(" ", 1)[0]
    if not pid.isdigit() or len(fields) < 20:
        return None
    return int(pid), fields[0], fields[19]


def status_script(pids: Sequence[int]) -> str:
    files = " ".join(f"{pid}/stat" for pid in sorted(set(pids)))
    return f"cd /proc && cat {files} 2>/dev/null\nexit 0\n"


def alive(stats: dict[int, tuple[str, str]], pid: int, start: str) -> bool:
    found = stats.get(pid)
    return found is not None and found[0] != "Z" and (not start or found[1] == start)


def submit_script(server: str, jobdir: str, attempt: int, cwd: str | None) -> str:
    """Start the attempt's wrapper detached; print its pid and its /proc stat line."""
    q = shlex.quote
    script = q(f"{jobdir}/{attempt_file(SCRIPT, attempt)}")
    pid_file = q(f"{jobdir}/{attempt_file(PID, attempt)}")
    lines = [
        f"[ -r {script} ] || exit {NO_SCRIPT}",
        f"command -v setsid >/dev/null 2>&1 || exit {NO_SETSID}",
    ]
    if cwd:
        lines.append(f"cd {q(cwd)} || exit {NO_CWD}")
    lines += [
        f"setsid sh {script} </dev/null >/dev/null 2>&1 &",
        "p=$!",
        # Builtins only until the start time is read: waiting for an external command
        # lets the shell reap a job that already ended, and its /proc entry with it.
        "read -r st < /proc/$p/stat",
        'echo "pid $p"',
        'echo "$st"',
        f"printf '%s %s\\n' {q(server)} \"$p\" > {pid_file}.tmp && mv -f {pid_file}.tmp {pid_file}",
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def kill_script(pgid: int, grace: float, start: str = "", jobdir: str = "") -> str:
    """TERM, wait up to ``grace``, KILL, and say whether anything of the group survived.

    The group is killed only if it is still the job's: its leader has the recorded start
    time, or a live member carries the job's ``XQUEUE_JOB_DIR``. Once a job has ended its
    group id can be reused by any process of the server (pid wrap-around), and killing
    that group would take down something else entirely.

    Every value is single-quoted into the script (``shlex.quote``); a job folder with a
    newline in its path is not used as a marker (see below).

    A group member in state Z is dead (the server's init may reap it late), so liveness
    is read from /proc rather than from ``kill -0``. The command name in a stat line may
    hold spaces: the fields are split after its closing parenthesis.
    """
    tenths = max(int(grace * 10), 1)
    awk = (
        'BEGIN { found = 0 } { s = $0; sub(/^.*\\) /, "", s); split(s, f, " "); '
        'if (f[3] == g && f[1] != "Z") { found = 1; exit } } END { exit !found }'
    )
    members = (
        '{ s = $0; sub(/^.*\\) /, "", s); split(s, f, " "); '
        'if (f[3] == g && f[1] != "Z") print $1 }'
    )
    leader = '{ s = $0; sub(/^.*\\) /, "", s); split(s, f, " "); print f[20] }'
    if "\n" in jobdir:
        # grep -F reads a pattern with a newline as several patterns, any of which could
        # match another process's variable: without an exact marker, trust the start time.
        jobdir = ""
    marker = shlex.quote(f"XQUEUE_JOB_DIR={jobdir}")
    return f"""g={pgid}
alive() {{
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$g" {shlex.quote(awk)}
}}
ours() {{
  st=$(awk {shlex.quote(leader)} /proc/$g/stat 2>/dev/null)
  [ -n {shlex.quote(start)} ] && [ "$st" = {shlex.quote(start)} ] && return 0
  [ -n {shlex.quote(jobdir)} ] || return 1
  for p in $(cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$g" {shlex.quote(members)}); do
    tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep -qxF {marker} && return 0
  done
  return 1
}}
alive || {{ echo gone; exit 0; }}
ours || {{ echo gone; exit 0; }}
kill -TERM -$g 2>/dev/null
i=0
while alive && [ $i -lt {tenths} ]; do sleep 0.1; i=$((i + 1)); done
if alive; then
  kill -KILL -$g 2>/dev/null
  i=0
  while alive && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
fi
if alive; then echo survived; else echo dead; fi
"""
