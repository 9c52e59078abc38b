"""The call file's format: what the controller (``calls``) writes into a call's folder
and its job's runner (``_callrun``) reads back, and the digest that names a call.

Both sides import it, and the runner imports little else: it is the first thing a
Python call's job loads (once per call, before the call runs), so it stays standard
library only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

CALL_FILE = "call.pkl"
RESULT = "result"  # the kind of ``job.<attempt>.result`` (``Job.attempt_path``)
FORMAT = 3
"""The call file's format: 2 is the first that names the xqueue that wrote it, and the
first a runner checks (a newer one is refused by name, instead of taken for another
call). The code version (``calls.code_version``) joined the digest before, under 1. 3 names
the call by its place-free pickle (``calls.place_free``) and carries that name and the SHA-256
of the pickle it holds, which the runner checks."""
PROTOCOL = 5  # read from Python 3.8 on; cloudpickle's own default


def digest(call: bytes, trackers: Sequence[str] = (), code: str = "") -> str:
    """What names a call: the SHA-256 of its pickle, with ``trackers`` (cloudpickle's
    ids of the classes it sends by value) replaced by their order in it, and the
    ``code_version`` of a function the pickle names only. cloudpickle draws such an id
    at random once a process (``__main__`` dataclasses, enums, named tuples, and
    functions that name them): with it in the digest, every run of the same script gave
    the same call another name, and ran it again."""
    for n, tracker in enumerate(sorted(trackers, key=lambda t: call.find(t.encode()))):
        call = call.replace(tracker.encode(), f"xqueue-class-{n:019d}".encode())
    return hashlib.sha256(call + code.encode()).hexdigest()
