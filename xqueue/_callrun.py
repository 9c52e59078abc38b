"""Run one pickled Python call where a job runs: ``python -m xqueue._callrun <digest>``.

``Xqueue.submit`` makes this the job's command. The call is read from ``call.pkl`` in the
job's folder (``XQUEUE_JOB_DIR``, which every backend sets, as the executing host sees
it) and must hash to ``<digest>``: the command line names the call, so a resumed run
that finds a different pickle in the folder refuses it instead of running it. Its
outcome goes to ``job.<attempt>.result`` (``XQUEUE_JOB_ATTEMPT``), written to a temporary
name and renamed, so the controller never reads half of one and a late earlier attempt
never overwrites a retry's.

Both files hold a plain ``pickle`` of builtin types (dict, bytes, str) around the
payloads (cloudpickle's, or a plain pickle where that is the same: ``_dumps``): the
controller can always read the envelope, including the
remote traceback as text, even when the exception or value inside cannot be rebuilt
there (a class its environment lacks). Nothing of xqueue imports this module (``-m``
runs it as ``__main__``, and runpy warns of one imported before): what both sides share
lives in ``_callfile``.

Exit status: 0 when the call returned, 1 when it raised (or its return value cannot be
pickled), 2 when the call could not be loaded or the outcome not written; so a failed
call is a failed job, and the engine's retry and failure handling apply unchanged.
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import os
import pickle
import sys
import traceback
import types
from typing import Any

from xqueue import __version__
from xqueue._callfile import CALL_FILE, FORMAT, PROTOCOL, RESULT, digest

RAISED = 1
NOT_RUN = 2


def _load(jobdir: str, expected: str) -> Any:
    from xqueue._files import read_bytes  # refuses a link planted at the name

    path = os.path.join(jobdir, CALL_FILE)
    data = read_bytes(path)
    if data is None:
        raise FileNotFoundError(f"{path} is missing: the call cannot be run")
    envelope = pickle.loads(data)
    theirs = str(envelope.get("xqueue") or "of an earlier version")
    made = envelope.get("format", 1)
    if type(made) is not int or made > FORMAT:
        raise RuntimeError(
            f"{CALL_FILE} in {jobdir} was written by xqueue {theirs} (call format {made}), "
            f"which the xqueue {__version__} installed here cannot read (format {FORMAT} at "
            f"most): install the controller's xqueue for {sys.executable}"
        )
    call = envelope["call"]
    if "name" in envelope:  # format 3: named by its place-free pickle, checked by its own
        whole = hashlib.sha256(call).hexdigest() == envelope.get("sha256")
        found = str(envelope["name"]) if whole else "that of another pickle"
    else:
        found = digest(call, envelope.get("trackers", ()), envelope.get("code", ""))
    if found != expected:
        other = (
            f"; the controller runs xqueue {theirs} and this host {__version__}"
            if theirs != __version__
            else ""
        )
        raise RuntimeError(
            f"{CALL_FILE} in {jobdir} is not the call this job was submitted with "
            f"(its digest is {found}, the command names {expected}{other})"
        )
    # The controller's import path, after this interpreter's own: a function pickled by
    # reference (its module importable there) is found here too when the file system is
    # shared, as multiprocessing's spawn does; entries that do not exist here are inert.
    sys.path.extend(p for p in envelope.get("sys_path", ()) if p not in sys.path)
    # cloudpickle's loads is pickle's: a call sent by value names cloudpickle's own
    # functions in its pickle, which imports cloudpickle then, and only then.
    return pickle.loads(call)


def _method(method: types.MethodType) -> tuple[Any, tuple[Any, Any]]:
    return types.MethodType, (method.__func__, method.__self__)


def _dumps(value: Any) -> bytes:
    """``value`` pickled by plain pickle if it can be (a value of importable types: most
    results), by cloudpickle if not.

    Importing cloudpickle took 15-20 ms of CPU in each call's job, more than anything
    else it loads; a short call paid it on top of everything else. Plain pickle refuses
    what it cannot find again here by its name (a lambda, a class made in the call: it
    checks that the name leads back to the same object), and what it finds cloudpickle
    too sends by name (bound methods aside: below). Except for ``__main__``: here
    that is this runner, and what a call put in it would be looked for in the
    controller's; cloudpickle sends such objects by value. A value that goes to
    cloudpickle is pickled twice (its ``__reduce__`` runs twice): the price of not
    loading cloudpickle for the others."""
    try:
        out = io.BytesIO()
        pickler = pickle.Pickler(out, protocol=PROTOCOL)
        # Plain pickle writes a bound method as getattr(obj, its function's name): one
        # reached by another name (made by a factory, wrapped by a decorator without
        # functools.wraps) came back as another method, or not at all. It goes as its
        # function and object, as cloudpickle sends it. (Made at each dump: what the
        # call's modules registered with copyreg counts, as for pickle.dumps.)
        pickler.dispatch_table = {**copyreg.dispatch_table, types.MethodType: _method}
        pickler.dump(value)
        data = out.getvalue()
        if b"__main__" not in data:  # (a value holding that text just goes the long way)
            return data
        del data, out
    except Exception:
        pass
    import cloudpickle

    whole: bytes = cloudpickle.dumps(value, protocol=PROTOCOL)
    return whole


def _describe(exc: BaseException, own_frames: int) -> dict[str, Any]:
    """The envelope of a raised exception: always its text; the object when it survives.

    ``own_frames`` of the traceback are this module's, left out of the text."""
    cls = type(exc)
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    record: dict[str, Any] = {
        "format": FORMAT,
        "ok": False,
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": message,
        "traceback": "".join(traceback.format_exception(cls, exc, _skip(exc, own_frames))),
        "exception": None,
        "why": "",
    }
    try:
        data = _dumps(exc)
        pickle.loads(data)  # many exception classes pickle but cannot be rebuilt
        record["exception"] = data
    except Exception as err:
        record["why"] = f"{type(err).__name__}: {err}"
    return record


def _skip(exc: BaseException, frames: int) -> types.TracebackType | None:
    tb = exc.__traceback__
    for _ in range(frames):
        if tb is None or tb.tb_next is None:
            break
        tb = tb.tb_next
    return tb


def _write(path: str, record: dict[str, Any]) -> None:
    from xqueue._files import atomic_write

    atomic_write(path, pickle.dumps(record, protocol=PROTOCOL))


def _fail(
    path: str, exc: BaseException, code: int, own_frames: int = 0, *, loaded: bool = True
) -> int:
    """``loaded``: False when the call itself could not be loaded here (its module not
    importable, an argument that cannot be rebuilt): the function never ran, and the
    controller must not take the error for one the function raised."""
    record = _describe(exc, own_frames)
    record["loaded"] = loaded
    sys.stderr.write(record["traceback"])
    try:
        _write(path, record)
    except Exception as err:
        sys.stderr.write(f"xqueue: cannot write the call's outcome to {path}: {err}\n")
        return NOT_RUN
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    jobdir = os.environ.get("XQUEUE_JOB_DIR", "")
    attempt = os.environ.get("XQUEUE_JOB_ATTEMPT", "")
    if len(args) != 1 or not jobdir or not attempt.isdigit():
        sys.stderr.write(
            "usage: python -m xqueue._callrun DIGEST, as the command of a job made by "
            "Xqueue.submit (it needs XQUEUE_JOB_DIR and XQUEUE_JOB_ATTEMPT)\n"
        )
        return NOT_RUN
    path = os.path.join(jobdir, f"job.{attempt}.{RESULT}")
    try:  # an earlier run's attempt of this number: never let it pass for this one's
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        sys.stderr.write(f"xqueue: cannot remove the stale {path}: {exc}\n")
        return NOT_RUN
    try:
        fn, fargs, fkwargs = _load(jobdir, args[0])
    except BaseException as exc:
        return _fail(path, exc, NOT_RUN, loaded=False)
    try:
        value = fn(*fargs, **fkwargs)
    except BaseException as exc:
        return _fail(path, exc, RAISED, own_frames=1)  # from the function's frame on
    try:
        data = _dumps(value)
    except BaseException as exc:
        try:
            raise TypeError(f"the return value ({type(value).__name__}) cannot be pickled") from exc
        except TypeError as err:
            return _fail(path, err, RAISED)
    try:
        _write(path, {"format": FORMAT, "ok": True, "value": data})
    except Exception as err:
        sys.stderr.write(f"xqueue: cannot write the call's result to {path}: {err}\n")
        return NOT_RUN
    return 0


if __name__ == "__main__":
    sys.exit(main())
