"""Sessions: ``nox`` runs lint, typecheck, docs and tests (starting the services they need).

nox                 # the whole suite, as CI runs it
nox -s tests        # tests only (services are started when we are root with apt)
nox -s bench        # benchmarks, not part of the default run

XQUEUE_TEST_WORKERS=N (default 3) sets how many pytest-xdist workers run the tests; 0 runs
them all in this one process, one at a time.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["lint", "typecheck", "docs", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11" if shutil.which("python3.11") else None


def _can_start_services() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")  # pinned: a new release may reformat or add rules
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[lint]")
    session.run("mypy")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """All tests. Real services are installed and started by ci/services.sh first."""
    session.install("-e", ".[test]")
    for plugin in sorted(os.listdir("plugins")):  # the plugin distributions, tested too
        session.install("-e", f"plugins/{plugin}")
    if os.environ.get("XQUEUE_SKIP_SERVICES"):
        session.log("XQUEUE_SKIP_SERVICES is set: service tests will be skipped")
    elif _can_start_services():
        session.run("bash", "ci/services.sh", external=True)
        session.env["XQUEUE_REQUIRE_SERVICES"] = "1"
    else:
        session.log("not root with apt-get: tests that need Slurm, SGE, sshd or containers skip")
    targets = session.posargs or ["tests", *_plugin_tests()]
    workers = os.environ.get("XQUEUE_TEST_WORKERS", "3")
    if workers == "0":
        session.run("pytest", "-n", "0", *targets)
        return
    # Most tests wait on something (a cluster's poll, a sleeping job, ssh), so several
    # workers overlap the waits even on 2 cores; the tests of one service stay on one
    # worker (loadgroup, tests/conftest.py says why). The tests marked `serial` stop a
    # service others use or time what a loaded machine slows (pyproject.toml's markers
    # say which and why): they run first, one at a time, with nothing else running.
    # Either phase may find none of its tests in a selection given as posargs (exit 5);
    # with no posargs both always have some. Later posargs win (`-- -n 0`).
    nothing = [0, 5] if session.posargs else [0]
    session.run("pytest", "-n", "0", *_marked(targets, "serial"), success_codes=[0, 5])
    parallel = ["-n", workers, "--dist", "loadgroup"]
    session.run("pytest", *parallel, *_marked(targets, "not serial"), success_codes=nothing)


def _marked(args: list[str], expr: str) -> list[str]:
    """``args`` selecting only the tests ``expr`` matches, within their own ``-m`` if any
    (pytest keeps only the last ``-m``, so the two are joined into one)."""
    rest: list[str] = []
    own: str | None = None
    words = iter(args)
    for word in words:
        if word == "-m":
            own = next(words, "")
        elif word.startswith("-m"):  # -mEXPR, -m=EXPR (pytest has no other option -m...)
            own = word[2:].removeprefix("=")
        else:
            rest.append(word)
    return [*rest, "-m", expr if own is None else f"({own}) and ({expr})"]


def _plugin_tests() -> list[str]:
    return [f"plugins/{p}/tests" for p in sorted(os.listdir("plugins"))]


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "-d", os.path.join(session.create_tmp(), "site"))


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    session.install("-e", ".")
    session.run("python", "benchmarks/local_throughput.py", *session.posargs)
