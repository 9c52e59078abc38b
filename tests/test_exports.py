"""The public surface: __all__ is exact and importing xqueue stays light."""

from __future__ import annotations

import ast
import subprocess
import sys

import xqueue


def test_all_names_exist_and_are_sorted() -> None:
    assert sorted(xqueue.__all__) == xqueue.__all__
    for name in xqueue.__all__:
        assert hasattr(xqueue, name), name
    assert sorted(xqueue._HOMES) == xqueue.__all__  # each public name has its module
    public = {n for n in dir(xqueue) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(xqueue, n)).__name__ == "module"}
    assert public - modules == set(xqueue.__all__)


def loaded_after(imports: str, modules: list[str]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after ``import <imports>``."""
    code = f"import sys, {imports}; print([m for m in {modules!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    found: list[str] = ast.literal_eval(out.stdout)
    return found


def test_import_does_not_load_backends_or_ui() -> None:
    heavy = ["rich", "asyncssh", "aiodocker", "google.cloud", "slugify", "trio"]
    assert loaded_after("xqueue", [*heavy, "xqueue.schedulers.local"]) == []


def test_importing_the_package_loads_no_engine() -> None:
    """A Python call's job imports the package (``python -m xqueue._callrun``), once per
    call, and the ``xqueue`` command imports it before it can handle a Ctrl-C: each
    paid about 50 ms for the whole engine when the package loaded its public names."""
    engine = ["anyio", "pluggy", "xqueue.queue", "xqueue.engine", "xqueue.calls"]
    engine += ["xqueue.records", "xqueue.workdir", "xqueue.cli.commands", "cloudpickle"]
    assert loaded_after("xqueue, xqueue.cli, xqueue._callrun", engine) == []


def test_a_public_name_is_loaded_when_asked_for() -> None:
    code = (
        "import sys, xqueue; assert 'xqueue.queue' not in sys.modules; "
        "from xqueue import Xqueue; from xqueue.queue import Xqueue as Home; "
        "assert Xqueue is Home and xqueue.Xqueue is Home; "
        "assert 'Xqueue' in dir(xqueue)\n"
        "assert xqueue.schedulers.BatchScheduler and xqueue.errors.XqueueError\n"
        "try:\n    xqueue.NoSuchName\nexcept AttributeError as exc:\n    print(exc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "module 'xqueue' has no attribute 'NoSuchName'"
