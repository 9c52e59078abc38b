"""Command templates of a sweep: ``{name}`` fields filled so that no value becomes code.

Two kinds of template, two rules, each safe whatever the values hold (spaces, quotes,
``$(...)``, backquotes, newlines):

- **an argv list**: each element is filled on its own and passed to the program as one
  argument, never read by a shell. A field of a *slot* axis cannot be filled when the
  job is fed (its value is chosen when it starts), so a list that names one becomes a
  shell command: every literal part quoted (``_text.quote``), every slot field the
  double-quoted variable the job is given (``"$XQUEUE_SLOT_GPU"``).
- **a shell string**: the template is the user's shell code, so no value is pasted into
  it. Every field becomes a double-quoted variable expansion (``"$XQUEUE_PARAM_DECAY"``,
  ``"$XQUEUE_SLOT_GPU"``) and the job gets the values in its environment. A shell never
  reads the result of an expansion as code (quotes, a here-document, ``eval`` aside), so
  a value is inert by construction, not by escaping it right for the context the field
  happens to be in; save bash's arithmetic contexts (``$(( ))``, ``[[ -eq ]]``, array
  subscripts), which evaluate a variable's text as an expression whose subscripts can
  run commands (docs/sweeps.md says so). Written bare (``--decay {decay}``), a field is
  exactly one word with the value.

Fields: ``{name}`` of a parameter or a slot axis; ``{{`` and ``}}`` are literal braces;
``${...}`` is left to the shell, and so are braces around anything but a word (``{}``,
``{a,b}``). A word that names neither is refused (a typo would otherwise run every point
with the literal text), as is a format spec (``{x:.2f}``): the value is used as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._text import quote
from .errors import ConfigError

_TOKEN = re.compile(r"\{\{|\}\}|\$\{[^{}]*\}|\{([A-Za-z_][A-Za-z0-9_]*)([:!][^{}]*)?\}")


@dataclass(frozen=True)
class Field:
    """A ``{name}`` of a template."""

    name: str


Piece = str | Field


def parse(template: str, known: Sequence[str], what: str) -> list[Piece]:
    """``template`` as literal text and fields; ConfigError naming ``what`` for an unknown
    field or a format spec."""
    pieces: list[Piece] = []
    at = 0
    for m in _TOKEN.finditer(template):
        literal = template[at : m.start()]
        at = m.end()
        token = m[0]
        if token in ("{{", "}}"):
            literal += token[0]
        elif m[1] is None:  # ${...}: the shell's own
            if token[2:-1] in known:
                raise ConfigError(
                    f"{what}: {token} is a shell variable, not the field: write {token[1:]}"
                )
            literal += token
        _append(pieces, literal)
        if m[1] is None or token in ("{{", "}}"):
            continue
        if m[2]:
            raise ConfigError(
                f"{what}: {token} has a format spec or conversion, which templates do not "
                f"take: write {{{m[1]}}} and give the value as it should appear"
            )
        if m[1] not in known:
            names = ", ".join(known) or "none"
            raise ConfigError(
                f"{what}: {token} names no parameter or slot axis of its group (it has: "
                f"{names}); write {{{{{m[1]}}}}} for literal braces"
            )
        pieces.append(Field(m[1]))
    _append(pieces, template[at:])
    return pieces


def _append(pieces: list[Piece], literal: str) -> None:
    if not literal:
        return
    if pieces and isinstance(pieces[-1], str):
        pieces[-1] += literal
    else:
        pieces.append(literal)


def fields(pieces: Sequence[Piece]) -> set[str]:
    return {p.name for p in pieces if isinstance(p, Field)}


def shell(pieces: Sequence[Piece], variables: Mapping[str, str]) -> str:
    """A shell template's command: each field the double-quoted expansion of its variable."""
    return "".join(p if isinstance(p, str) else f'"${variables[p.name]}"' for p in pieces)


def argv(
    elements: Sequence[Sequence[Piece]], values: Mapping[str, str], variables: Mapping[str, str]
) -> str | tuple[str, ...]:
    """An argv template's command: fields of ``values`` filled in as text; a field of
    ``variables`` (a slot axis, known only when the job starts) makes it a shell command
    in which it is the quoted expansion and everything else is quoted text."""
    if not any(isinstance(p, Field) and p.name in variables for e in elements for p in e):
        return tuple("".join(_text(p, values) for p in element) for element in elements)
    words = []
    for element in elements:
        parts: list[str] = []
        literal = ""
        for p in element:
            if isinstance(p, Field) and p.name in variables:
                if literal:
                    parts.append(quote(literal))
                literal = ""
                parts.append(f'"${variables[p.name]}"')
            else:
                literal += _text(p, values)
        if literal or not parts:
            parts.append(quote(literal))
        words.append("".join(parts))
    return " ".join(words)


def _text(piece: Piece, values: Mapping[str, str]) -> str:
    return piece if isinstance(piece, str) else values[piece.name]
