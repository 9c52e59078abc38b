"""Shell lines run around a job's command: ``prescript``/``postscript`` and the jobcmd hooks.

A pipeline framework wraps each command: load a module, activate an environment, copy
outputs back, tail a log. Those lines are shell text by design (the user's own), but
the job's command, arguments and environment must stay data, and a fragment that is
not well-formed shell (an unclosed quote, a heredoc without its end, a stray ``)``)
must not take the wrapper apart so that the job's return code is lost or another
fragment is swallowed. So no fragment is pasted into a script: each is a single-quoted
word (``_text.quote``) handed to ``eval``, inside a function so that its ``set --`` or
``shift`` cannot touch the command's own arguments. A fragment that does not parse
makes the shell exit with status 2 (and its message in the job's stderr): the job
fails, nothing else runs in its place.

The lines run in the job's own shell, in this order, with their output in the job's
stdout and stderr::

    on_jobcmd_init hook text, prescript, on_jobcmd_prep hook text
    the command
    XQUEUE_JOB_RC=<the command's exit status>
    postscript, on_jobcmd_end hook text
    exit "$XQUEUE_JOB_RC"

so an ``export`` or ``cd`` before the command applies to it, the lines after it can
read ``$XQUEUE_JOB_RC``, and an ``exit N`` in any of them ends the job with status N.

Where the command runs from a wrapper script (Slurm, SGE, SSH, containers) the block is
a subshell of that script (``render_script``). The local backend starts an argv with no
script; a wrapped local job is ``/bin/sh -c <block> xqueue-job <argv...>``: the argv
stays separate words, run as ``(exec "$@")`` (``program_line``), never quoted into
shell text (an argument of 100 KB still fits, as unwrapped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._text import check_text, quote
from .errors import ConfigError, PluginError

if TYPE_CHECKING:
    from .hooks import Hooks

SHELL = "/bin/sh"
ARGV0 = "xqueue-job"
"""``$0`` of a wrapped local job's shell (its error messages start with it)."""
BEFORE_HOOKS = ("on_jobcmd_init", "on_jobcmd_prep")
AFTER_HOOK = "on_jobcmd_end"
_EVAL = 'xqueue_eval() { xqueue_text=$1; shift; eval "$xqueue_text"; }'


@dataclass(frozen=True)
class Wrap:
    """One attempt's fragments of shell, in the order they run."""

    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    def lines(self, command: str) -> list[str]:
        """The block that runs ``command`` (one line of shell) between the fragments."""
        return [
            _EVAL,
            *(f"xqueue_eval {quote(text)}" for text in self.before),
            command,
            "XQUEUE_JOB_RC=$?",
            *(f"xqueue_eval {quote(text)}" for text in self.after),
            'exit "$XQUEUE_JOB_RC"',
        ]

    def argv(self, command: Sequence[str]) -> tuple[str, ...]:
        """The argv that runs ``command`` (an argv, unchanged) inside the block."""
        line = program_line(command[0], '"$@"')
        return (SHELL, "-c", "\n".join(self.lines(line)), ARGV0, *command)


def program_line(program: str, line: str) -> str:
    """``line``, a line of shell that runs an argv whose first word is ``program``, made
    to run the program of that name found on PATH, as exec does for an unwrapped argv.

    A shell runs its own builtin of a name before any program (``echo``, ``printf``,
    ``test``, ``kill``, ``pwd``, ``true``): dash's ``echo`` turns ``\\t`` into a tab and stops
    at ``\\c``, so a list command printed one thing run directly and another from a
    wrapper script (SSH, Slurm, SGE) or with shell lines around it. ``exec`` runs only
    programs; in a subshell of its own, the line after it still runs (a shell forks for
    a program anyway: it costs no process more). It also keeps a first word such as
    ``X=/opt/tool`` (which quoting leaves bare) a program's name: first on a line, the
    shell took it for an assignment and ran the second word. A name that starts with
    ``-`` is left as it is: bash would read it as exec's option (and dash reads ``--`` as
    a name), and a shell reads no such word as anything but a command's name."""
    if program.startswith("-"):
        return line
    return f"(exec {line})"


def check_fragment(text: Any, what: str) -> str:
    """A fragment as given, or ConfigError: a string a script can carry (no NUL)."""
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be shell text (a string), not {type(text).__name__}")
    return check_text(text, what)


def _fragment(plugin: str, hook: str, result: Any) -> str:
    if result is None:
        return ""
    try:
        return check_fragment(result, f"the text returned by {hook}")
    except ConfigError as exc:
        raise PluginError(plugin, hook, exc) from exc


async def build(
    hooks: Hooks,
    prescript: str,
    postscript: str,
    kwargs: dict[str, Any],
    timeout: float | None = None,
) -> Wrap | None:
    """The wrap of one attempt: the scheduler's lines and the hooks' text; None if empty.

    The hooks are called once per attempt, before it is submitted, and their text is
    fixed from then on (a script is written once and never rewritten while it may run).
    """

    async def texts(hook: str) -> list[str]:
        results = await hooks.call(hook, timeout=timeout, **kwargs)
        return [_fragment(plugin, hook, result) for plugin, result in results]

    init, prep = [await texts(hook) for hook in BEFORE_HOOKS]
    end = await texts(AFTER_HOOK)
    before = tuple(t for t in (*init, prescript, *prep) if t.strip())
    after = tuple(t for t in (postscript, *end) if t.strip())
    if not before and not after:
        return None
    return Wrap(before, after)
