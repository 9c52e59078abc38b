"""The public surface: __all__ is exact and importing xqueue stays light."""

from __future__ import annotations

import subprocess
import sys

import xqueue


def test_all_names_exist_and_are_sorted() -> None:
    assert sorted(xqueue.__all__) == xqueue.__all__
    for name in xqueue.__all__:
        assert hasattr(xqueue, name), name
    public = {n for n in dir(xqueue) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(xqueue, n)).__name__ == "module"}
    assert public - modules == set(xqueue.__all__)


def test_import_does_not_load_backends_or_ui() -> None:
    code = (
        "import sys, xqueue; heavy = ['rich', 'asyncssh', 'aiodocker', 'google.cloud', "
        "'slugify', 'xqueue.schedulers.local', 'trio']; "
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
