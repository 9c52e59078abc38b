"""The accepted name closest to one that was refused: a typo is why most names are unknown."""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'slurm'?)`` for the choice closest to ``word``, or "" if none is
    close. Case does not count ('SGE' is 'sge'). Not for what is no string at all: the
    type is what is wrong then (``['halt']`` is not a typo of 'halt')."""
    if not isinstance(word, str):
        return ""
    folded = {choice.lower(): choice for choice in choices}
    best = _closest(word.lower(), list(folded))
    return f" (did you mean {folded[best]!r}?)" if best is not None else ""


def did_you_mean_any(words: Iterable[object], choices: Iterable[str]) -> str:
    """``did_you_mean`` for the first of several refused keys that is a string (keys of a
    dict from TOML or Python may be of any type: only a name can be a typo)."""
    return did_you_mean(next((w for w in words if isinstance(w, str)), None), choices)


# Longer than any name: a word past it gets no guess (the comparison is quadratic).
_LONGEST = 64
# difflib's likeness a word must reach where no slip explains it ('on_start' for
# 'on_job_started' is 0.73); 'gpus' for 'bogus' is 0.67, what the old cutoff let through.
_LIKE = 0.7


def _closest(word: str, choices: list[str]) -> str | None:
    """The choice the fewest slips of the keyboard away (a letter wrong, missing, extra,
    or two swapped), at most one per three letters of the word (so a word of one or two
    letters only by its case); else the choice difflib finds most alike above ``_LIKE``
    ('on_start': 'on_job_started'); else the one choice holding the word ('mem' for
    'memory', 'time' for 'walltime'). difflib alone, with its default cutoff, offered
    'gpus' for 'bogus', two letters in common."""
    if len(word) > _LONGEST:
        return None
    best, bound = None, len(word) // 3 + 1
    for choice in choices:
        slips = _slips(word, choice, bound)
        if slips < bound:
            best, bound = choice, slips
    if best is not None:
        return best
    import difflib  # on the way to an error only

    alike = difflib.get_close_matches(word, choices, n=1, cutoff=_LIKE)
    if alike:
        return alike[0]
    if len(word) >= 3:
        holding = [choice for choice in choices if word in choice]
        if len(holding) == 1:
            return holding[0]
    return None


def _slips(a: str, b: str, bound: int) -> int:
    """The optimal string alignment distance of ``a`` and ``b``, or ``bound`` if it is
    at least that (the caller wants nothing farther)."""
    if abs(len(a) - len(b)) >= bound:
        return bound
    before: list[int] = []
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        earlier, before, row = before, row, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(before[j] + 1, row[j - 1] + 1, before[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], earlier[j - 2] + 1)
        if min(row) >= bound:
            return bound
    return min(row[-1], bound)
