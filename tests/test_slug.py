"""Job folders are named by python-slugify's slug, whichever path computes it."""

from __future__ import annotations

import random
import string

import pytest
from slugify import slugify

from xqueue.workdir import slug

ALPHABET = string.ascii_letters + string.digits + " \t./:=_+@%^*()[]{}<>|;!?~#$-'&,\"\\é€\n"


# Mostly what the fast path takes (no quote, "&", comma, backslash, newline or non-ASCII),
# with a few of those, and any ASCII at all: each way out of the fast path is taken.
PLAIN = string.ascii_letters + string.digits + " \t./:=_+@%^*()[]{}<>|;!?~#$-"
ALPHABETS = [ALPHABET, PLAIN * 20 + "'&,\"\\\n\x0bé", "".join(map(chr, range(128)))]


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("alphabet", range(len(ALPHABETS)))
def test_the_fast_path_names_folders_as_slugify_does(seed: int, alphabet: int) -> None:
    """Folders of earlier runs are found again by their names: a slug that differed
    from slugify's for any name would make a resumed run miss them and rerun jobs."""
    rng = random.Random(seed)
    chars = ALPHABETS[alphabet]
    for _ in range(10_000):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 90)))
        assert slug(text) == (slugify(text, max_length=40, word_boundary=True) or "job"), text


@pytest.mark.parametrize(
    "text",
    ["true 1", "echo 3 >> /tmp/x/ledger; sleep 0.014", "A" * 41, "a-" * 30, "--", "", "1,000"],
)
def test_edge_cases(text: str) -> None:
    assert slug(text) == (slugify(text, max_length=40, word_boundary=True) or "job")
