"""Functions that tests/test_sweep.py runs as the calls of a sweep's groups.

Importable where the jobs run, and light to import: cloudpickle sends them by reference.
"""

from __future__ import annotations

import os
from typing import Any


def train(**point: Any) -> dict[str, Any]:
    """What a call of a sweep was given: its point, and the slot values as keywords."""
    return {"point": point, "pid": os.getpid()}


def echo(v: str) -> str:
    return v
