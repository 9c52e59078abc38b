"""Functions that tests/test_callables.py runs as jobs.

They live in a module of their own, importable where the jobs run, and light to import
(no pytest): cloudpickle sends them by reference, so each job imports this module.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Point:
    x: int
    tags: list[str] = field(default_factory=list)


class Refused(Exception):
    """An exception with an attribute of its own, rebuilt whole on the controller."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(what, code)
        self.code = code


class Stubborn(Exception):
    """Pickles, but cannot be rebuilt: its constructor does not take its own ``args``."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def combine(a: int, b: int = 0, *rest: int, scale: int = 1, **extra: Any) -> dict[str, Any]:
    return {"sum": (a + b + sum(rest)) * scale, "extra": extra}


def make_point(x: int, *tags: str) -> Point:
    return Point(x, list(tags))


def echo(value: Any) -> Any:
    return value


def square(x: int) -> int:
    return x * x


def refuse(code: int) -> None:
    inner_helper_that_raises(code)


def inner_helper_that_raises(code: int) -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        raise Refused("no way", code) from exc


def stubborn() -> None:
    raise Stubborn("x", "y")


def exit_with(code: int) -> None:
    raise SystemExit(code)


def returns_a_lock() -> Any:
    return threading.Lock()


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def count_and_return(path: str, value: Any) -> Any:
    """Appends a line to ``path`` each time it runs: how often a call really ran."""
    with open(path, "a") as fh:
        fh.write("ran\n")
    return value


def fail_first_attempt() -> int:
    attempt = int(os.environ["XQUEUE_JOB_ATTEMPT"])
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    return attempt


def environment(*names: str) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


def raise_unless(path: str) -> None:
    """Raises; once ``path`` exists, dies by SIGKILL instead, leaving no outcome."""
    if os.path.exists(path):
        os.kill(os.getpid(), signal.SIGKILL)
    raise ValueError("raised in the first run")


def modules_loaded(*names: str) -> list[str]:
    """Which of ``names`` the call's job had imported by the time the call ran."""
    return [name for name in names if name in sys.modules]


def make_doubler() -> Any:
    """A function plain pickle cannot name (a lambda): only cloudpickle sends it back."""
    return lambda x: x * 2


def _made_in_main(name: str, base: type) -> type:
    """A class the call puts in its job's ``__main__`` (the runner there): plain pickle
    names it there, and the controller's ``__main__`` has no such class."""
    made = type(name, (base,), {"__module__": "__main__", "value": 7})
    setattr(sys.modules["__main__"], name, made)
    return made


def main_class_instance() -> Any:
    return _made_in_main("Made", object)()


def raise_main_error() -> None:
    raise _made_in_main("MainError", Exception)("raised by a class of the job's __main__")


def _made_method(name: str) -> Any:
    def method(self: Widget) -> str:
        return f"{name} of {self.tag}"

    return method


def _unwrapped(fn: Any) -> Any:  # a decorator without functools.wraps
    def wrapper(*args: Any) -> Any:
        return fn(*args)

    return wrapper


class Widget:
    """Methods reached by another name than their function's: plain pickle writes a
    bound method as ``getattr(obj, function name)``."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    greet = _made_method("greet")  # its function is called "method"

    def method(self) -> str:  # what getattr(obj, "method") would find instead
        return "another method"

    @_unwrapped
    def shout(self) -> str:  # its function is called "wrapper"
        return f"shout of {self.tag}"


def bound_methods(tag: str) -> list[Any]:
    widget = Widget(tag)
    return [widget.greet, widget.shout, widget.method]
