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
fork, before anything is sent back: ``<server> <pid> <start time>``. It finds a job whose
id never came back (the connection or the controller died in between)."""

# Lines around the status script's answer: text a login adds (a ~/.ssh/rc that prints)
# is left out, and an answer cut short is told from "none of these processes exist".
_BEGIN, _END = "xqueue-stat-begin", "xqueue-stat-end"

# Exit codes of the submit script for problems found on the server before the fork.
NO_SCRIPT, NO_SETSID, NO_CWD = 95, 96, 97

# The submit script's first line out: what comes before it is the login's, and an
# answer without it, whose exit status came back, is from a script that never ran.
SUBMIT_BEGIN = "xqueue-submit-begin"


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


def parse_pid_file(text: str) -> tuple[str, int, str] | None:
    """(server, pid, start time) from a pid file; a file of old holds no start time."""
    words = text.strip().rsplit(" ", 2)
    if len(words) == 3 and words[1].isdigit() and words[2].isdigit():
        return words[0], int(words[1]), words[2]
    server, _, pid = text.strip().rpartition(" ")
    return (server, int(pid), "") if server and pid.isdigit() else None


_GROUP = "xqueue-group"
# awk over /proc/*/stat lines: the fields after the command name (which may hold spaces).
_FIELDS = '{ s = $0; sub(/^.*\\) /, "", s); split(s, f, " "); '
# Exits 0 if a process of group ``g`` is alive (not a zombie: init may reap one late).
_LIVE_MEMBER = (
    "BEGIN { found = 0 } "
    + _FIELDS
    + 'if (f[3] == g && f[1] != "Z") { found = 1; exit } } END { exit !found }'
)


def status_script(pids: Sequence[int]) -> str:
    """Each job leader's /proc stat line, and ``xqueue-group <pid>`` for a leader that is
    gone (or a zombie) while a live process is left in its group: killed from outside,
    it left the rest of its job running, which must end before the job is failed (and
    tried again beside it). Members are read from /proc, as in ``kill_script``: a group
    of zombies only, which a wrapper leaves until they are reaped, is no group."""
    listed = " ".join(map(str, sorted(set(pids))))
    files = " ".join(f"{pid}/stat" for pid in sorted(set(pids)))
    state = shlex.quote(_FIELDS + "print f[1] }")
    return (
        f"echo {_BEGIN}\ncd /proc && cat {files} 2>/dev/null\n"
        f"for p in {listed}; do\n"
        f'  st=$(awk {state} "$p/stat" 2>/dev/null)\n'
        '  [ -z "$st" ] || [ "$st" = Z ] || continue\n'
        f'  cat [0-9]*/stat 2>/dev/null | awk -v g="$p" {shlex.quote(_LIVE_MEMBER)} &&'
        f' echo "{_GROUP} $p"\n'
        "done\n"
        f"echo {_END}\nexit 0\n"
    )


def parse_stats(stdout: str) -> dict[int, tuple[str, str]]:
    """pid -> (state, start time) from the status script's answer; ValueError if garbled.

    A process that is gone has no line (cat skips its file): only the lines between
    the markers count, and each must be a /proc stat line (or a group's, ``parse_groups``).
    """
    stats: dict[int, tuple[str, str]] = {}
    for line in _answer(stdout):
        if line.startswith(f"{_GROUP} "):
            continue
        parsed = parse_stat(line)
        if parsed is None:
            raise ValueError(f"not a /proc stat line: {line[:80]!r}")
        stats[parsed[0]] = (parsed[1], parsed[2])
    return stats


def parse_groups(stdout: str) -> set[int]:
    """The job leaders' pids whose process groups still have a process, from the same
    answer (already checked by ``parse_stats``)."""
    head = f"{_GROUP} "
    return {int(line[len(head) :]) for line in _answer(stdout) if line.startswith(head)}


def _answer(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    if _BEGIN not in lines or _END not in lines[lines.index(_BEGIN) :]:
        raise ValueError("the status script's answer is cut short (no end marker)")
    first = lines.index(_BEGIN) + 1
    return lines[first : lines.index(_END, first)]


def alive(stats: dict[int, tuple[str, str]], pid: int, start: str) -> bool:
    found = stats.get(pid)
    return found is not None and found[0] != "Z" and (not start or found[1] == start)


def submit_script(server: str, jobdir: str, attempt: int, cwd: str | None) -> str:
    """Start the attempt's wrapper detached; write its pid file, then print pid and stat
    (after ``SUBMIT_BEGIN``, printed first).

    The pid file is written (atomically) before the answer is printed, and a dropped
    connection (SIGHUP, SIGPIPE on the first echo) does not stop the script: a job that
    started always leaves its pid file, so a submission whose answer was lost is found
    where it runs instead of being started again on another server.
    """
    q = shlex.quote
    script = q(f"{jobdir}/{attempt_file(SCRIPT, attempt)}")
    pid_file = q(f"{jobdir}/{attempt_file(PID, attempt)}")
    lines = [
        "trap '' HUP PIPE",
        # On a line of its own: a login's greeting without a newline (a terminal title
        # from ~/.bashrc) glued to it read as a script that never ran.
        f"printf '\\n{SUBMIT_BEGIN}\\n'",
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
        # The start time is the 20th field after the command name, which may hold spaces.
        "set -f; set -- ${st##*) }; start=${20}",
        f'printf \'%s %s %s\\n\' {q(server)} "$p" "$start" > {pid_file}.tmp &&'
        f" mv -f {pid_file}.tmp {pid_file}",
        'echo "pid $p"',
        'echo "$st"',
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def submit_answer(stdout: str) -> list[str] | None:
    """The lines the submit script printed after its first; None if it never printed it:
    it never ran (a login shell that runs no command, nologin, says why instead)."""
    lines = stdout.splitlines()
    for at, line in enumerate(lines):
        if line.endswith(SUBMIT_BEGIN):
            return lines[at + 1 :]
    return None


def read_pid_file_script(jobdir: str, attempt: int) -> str:
    """Print the attempt's pid file as the server itself sees it (no shared-FS lag)."""
    return f"cat {shlex.quote(f'{jobdir}/{attempt_file(PID, attempt)}')} 2>/dev/null\nexit 0\n"


def parse_kill(stdout: str) -> str:
    """What the kill script found: gone, dead or survived; ValueError for anything else."""
    words = stdout.split()
    if not words or words[-1] not in ("gone", "dead", "survived"):
        raise ValueError("the kill script gave no verdict")
    return words[-1]


def kill_script(pgid: int, grace: float, start: str = "", jobdir: str = "") -> str:
    """TERM, wait up to ``grace``, KILL, and say whether anything of the group survived.

    The group is killed only if it is still the job's: its leader has the recorded start
    time, or a live member carries the job's ``XQUEUE_JOB_DIR``. Once a job has ended its
    group id can be reused by any process of the server (pid wrap-around), and killing
    that group would take down something else entirely.

    Every value is single-quoted into the script (``shlex.quote``); a job folder with a
    newline in its path is not used as a marker (see below). A process's variables are
    split at their NULs, each newline inside a value turned into a \\001 first: a value
    holding a line ``XQUEUE_JOB_DIR=...`` (an environment dump kept in a variable) is
    not the variable.

    A group member in state Z is dead (the server's init may reap it late), so liveness
    is read from /proc rather than from ``kill -0``. The command name in a stat line may
    hold spaces: the fields are split after its closing parenthesis.
    """
    tenths = max(int(grace * 10), 1)
    awk = _LIVE_MEMBER
    members = _FIELDS + 'if (f[3] == g && f[1] != "Z") print $1 }'
    leader = _FIELDS + "print f[20] }"
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
    tr '\\n\\0' '\\001\\n' < /proc/$p/environ 2>/dev/null | grep -qxF {marker} && return 0
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
