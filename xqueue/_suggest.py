"""The accepted name closest to one that was refused: a typo is why most names are unknown."""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'slurm'?)`` for the choice closest to ``word``, or "" if none is
    close. Case does not count ('SGE' is 'sge'). Not for what is no string at all: the
    type is what is wrong then (``['halt']`` is not a typo of 'halt'). Only on the way to
    an error: difflib is imported then."""
    if not isinstance(word, str):
        return ""
    import difflib

    folded = {choice.lower(): choice for choice in choices}
    matches = difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.6)
    return f" (did you mean {folded[matches[0]]!r}?)" if matches else ""


def did_you_mean_any(words: Iterable[object], choices: Iterable[str]) -> str:
    """``did_you_mean`` for the first of several refused keys that is a string (keys of a
    dict from TOML or Python may be of any type: only a name can be a typo)."""
    return did_you_mean(next((w for w in words if isinstance(w, str)), None), choices)
