"""mkdocs hook: the command-line reference is the parser's own help, so it cannot drift.

``<!-- xqueue-cli -->`` in a page becomes one section per subcommand with the text
``xqueue SUBCOMMAND --help`` prints.
"""

from __future__ import annotations

import argparse
from typing import Any

MARKER = "<!-- xqueue-cli -->"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from xqueue.cli.commands import _parser

    parser = _parser()
    parts = ["```text", parser.format_help().rstrip(), "```"]
    for name, sub in _subcommands(parser).items():
        sub.prog = f"xqueue {name}"
        parts += [f"## xqueue {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return markdown.replace(MARKER, "\n".join(parts))
