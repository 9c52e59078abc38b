"""The accepted name closest to one that was refused: a typo is why most names are unknown."""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'slurm'?)`` for the choice closest to ``word``, or "" if none is
    close. Only on the way to an error: difflib is imported then."""
    import difflib

    matches = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""
