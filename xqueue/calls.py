"""Python callables as jobs: ``job = await q.submit(fn, *args)``, then ``await job.result()``.

A call is a job like any other, so everything the engine does for commands (forks,
retries, kills, resume, every backend) applies to it unchanged. Its command is an
interpreter running ``xqueue._callrun``, which loads the call from the job's folder,
runs it and leaves its outcome there; this module is the controller's side.

The call is pickled (cloudpickle: lambdas, closures and functions of ``__main__`` go by
value, so scripts and notebooks work) when ``submit`` is called, so a function that
cannot be sent fails there, with the reason, instead of in a job later. The pickle is
written to a staged file in a worker thread (it may be large) and renamed into the
job's folder when the folder is made.

Resume: the command names the pickle's SHA-256, and a job's folder is kept across runs
only when its spec (command included) is the same. So a call submitted again at the same
position with the same name, function and arguments is the same job: if it succeeded in
an earlier run it is not run again and ``result()`` reads the earlier result. Any change
gives a new pickle and the call runs afresh. Identical calls at *different* positions
are not merged: each ``submit`` is a job of its own, as each ``feed`` is (a function may
have side effects, and two equal calls are what the caller asked for).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import os
import pickle
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import anyio

from ._callfile import CALL_FILE, FORMAT, PROTOCOL, RESULT, digest
from ._files import READ_FLAGS, read_bytes
from .errors import CallError, ConfigError, WorkdirError
from .job import Job
from .states import JobStatus

if TYPE_CHECKING:
    from .engine import Engine
    from .resources import Resources
    from .scheduler import Scheduler
    from .workdir import Workdir

T = TypeVar("T")

__all__ = ["CALL_FILE", "RESULT", "CallJob", "RemoteTraceback"]

RUNNER = "xqueue._callrun"  # never imported here: ``python -m`` runs it as __main__
_STDERR_TAIL = 600  # bytes of a job's stderr quoted when it left no result


class RemoteTraceback(Exception):
    """The traceback, as text, of an exception raised where a call ran.

    ``CallJob.result()`` raises the call's own exception with one of these as its
    ``__cause__``, so a printed traceback shows the remote frames first, then the
    controller's (as ``concurrent.futures.ProcessPoolExecutor`` does). ``text`` holds it.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return '\n"""\n' + self.text.rstrip("\n") + '\n"""'


class CallJob(Job, Generic[T]):
    """A job that runs a Python call (made by ``Xqueue.submit``); ``result()`` gives its value."""

    __slots__ = ()

    async def result(self) -> T:
        """Wait for the job, then return the call's value or raise its exception.

        The exception is the one the call raised, rebuilt here, with the remote traceback
        as its ``__cause__`` (a ``RemoteTraceback``). ``CallError`` says why there is
        neither: the job was killed or skipped, vanished, could not start, or its outcome
        cannot be loaded in this environment. Each call reads the job's result file again
        (in a worker thread), so it also works on a job resumed from an earlier run.
        """
        await self.wait()
        ok, outcome = await anyio.to_thread.run_sync(read_outcome, self)
        if not ok:
            raise outcome
        return cast(T, outcome)


async def submit(
    engine: Engine,
    fn: Callable[..., T],
    args: Iterable[Any],
    kwargs: Mapping[str, Any] | None,
    *,
    name: str | None,
    envs: Mapping[str, Any] | None,
    resources: Resources | dict[str, Any] | None,
    python: str | None,
    after: tuple[Job, ...] = (),
    params: dict[str, Any] | None = None,
) -> CallJob[T]:
    """``Xqueue.submit_call``: check, pickle, stage the pickle, then add the job.

    Everything that can be refused is refused before anything is written; the workdir
    is locked before the pickle is staged there, so a refused controller changes nothing.
    """
    engine.check_can_feed()
    call, trackers = pickle_call(fn, args, kwargs)
    code = code_version(fn)
    call_digest = digest(place_free(fn, args, kwargs, call), trackers, code)
    argv = command(interpreter(engine.scheduler, python), call_digest)
    job: CallJob[T] = CallJob(0, argv, envs=envs, name=name or label(fn), resources=resources)
    job.after, job.params = after, params
    workdir = engine.workdir
    turn = engine.take_turn()  # numbered in the order submitted, whatever the staging takes
    try:
        await workdir.lock_async()
        staged = {
            CALL_FILE: await anyio.to_thread.run_sync(
                _stage, workdir, call, trackers, code, call_digest
            )
        }
    except BaseException:
        engine.leave_turn(turn)
        raise
    try:
        await engine.add(job, staged, turn)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(workdir.discard, staged)
        raise
    return job


def _stage(workdir: Workdir, call: bytes, trackers: list[str], code: str, name: str) -> str:
    return workdir.stage(call_file(call, trackers, code, name))


def place_free(
    fn: Callable[..., Any], args: Iterable[Any], kwargs: Mapping[str, Any] | None, call: bytes
) -> bytes:
    """The pickle of the call that names it: ``call`` itself, but for code sent by value
    (a lambda, a closure, a ``__main__`` function), pickled again with what says where
    its file is left out: each code object's first line number, and the script's
    ``__file__``, which cloudpickle sends with a function's module name (as the script
    was typed: ``./job.py`` is another than ``job.py``). A comment added at the top of a
    script, or the script run by another path or renamed, named each of its calls anew,
    and a resume ran them all again. The job still gets ``call``, whose tracebacks show
    the real lines, and whose functions see their ``__file__``.
    """
    if DYNAMIC_CODE not in call:  # no code of its own: named by reference
        return call
    import io

    out = io.BytesIO()
    try:
        _place_free_pickler()(out, protocol=PROTOCOL).dump((fn, tuple(args), dict(kwargs or {})))
    except Exception:  # whatever cloudpickle's internals became: named as before
        return call
    return out.getvalue()


@functools.cache
def _place_free_pickler() -> Any:
    """cloudpickle's pickler with each code object's first line number set to 1, and no
    ``__file__`` among the module attributes it sends with a function; made once (not a
    class made for every call submitted)."""
    import cloudpickle

    reduce_code = cloudpickle.Pickler.dispatch_table[types.CodeType]

    class PlaceFree(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table = collections.ChainMap(
            {types.CodeType: lambda code: reduce_code(code.replace(co_firstlineno=1))},
            cloudpickle.Pickler.dispatch_table,
        )

        def _function_getnewargs(self, func: Any) -> tuple[Any, ...]:
            code, base_globals, *rest = super()._function_getnewargs(func)
            return (code, {k: v for k, v in base_globals.items() if k != "__file__"}, *rest)

    return PlaceFree


# cloudpickle's file name of each code object it pickles by value.
DYNAMIC_CODE = b"<dynamic-code>"


def code_version(fn: Callable[..., Any]) -> str:
    """A digest of the code of a function that the pickle names by its module (one
    importable here, not ``__main__``): its bytecode, names and constants, nested
    functions included, not its line numbers. cloudpickle sends such a function as a
    name, so a fixed bug in a module's function left the call's digest as it was, and
    a resumed run handed back the old result. "" for anything else: a ``__main__``
    function's code is in the pickle; a builtin, a class or a callable object is not
    looked into (see callables.md)."""
    target: Any = fn
    while True:
        if isinstance(target, functools.partial):
            target = target.func
        elif inspect.ismethod(target):
            target = target.__func__
        else:
            try:  # functools.wraps: the decorated body is the code that counts
                inner = inspect.unwrap(target)
            except ValueError:  # a __wrapped__ cycle
                break
            if inner is target:
                break
            target = inner
    module = getattr(target, "__module__", None)
    if not isinstance(target, types.FunctionType) or not isinstance(module, str):
        return ""
    if module == "__main__" or module not in sys.modules:
        return ""
    return _code_digest(target.__code__)


@functools.lru_cache(maxsize=256)
def _code_digest(code: types.CodeType) -> str:
    """Once per function: a thousand calls of one function read its code once."""
    found = hashlib.sha256()
    _add_code(found, code)
    return found.hexdigest()


def _add_code(found: Any, code: types.CodeType) -> None:
    found.update(code.co_code)
    found.update(repr((code.co_names, code.co_varnames, code.co_argcount)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _add_code(found, const)
        elif isinstance(const, frozenset):  # its order follows the per-process str hash
            found.update(repr(sorted(map(repr, const))).encode())
        else:
            found.update(repr(const).encode())


def class_trackers(call: bytes) -> list[str]:
    """cloudpickle's ids of the classes ``call`` sends by value (those that occur in it),
    from its registry: private to it, so none (and a digest as before) if it moved."""
    try:
        from cloudpickle import cloudpickle as inner

        ids = list(inner._DYNAMIC_CLASS_TRACKER_BY_CLASS.values())
    except Exception:
        return []
    return [i for i in ids if isinstance(i, str) and len(i) == 32 and i.encode() in call]


def label(fn: Callable[..., Any]) -> str:
    """The default job name: the function's qualified name."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if isinstance(name, str) and name:
        return name
    inner = getattr(fn, "func", None)  # functools.partial
    return label(inner) if callable(inner) else type(fn).__qualname__


def interpreter(scheduler: Scheduler, python: str | None) -> str:
    """The Python that runs calls where jobs run: ``python=``, the scheduler option, or ours."""
    chosen = python or getattr(scheduler.options, "python", "") or sys.executable
    if not chosen:
        raise ConfigError(
            "no Python interpreter to run the call: sys.executable is empty here; "
            "pass python= to submit_call or set the scheduler option 'python'"
        )
    return chosen


def pickle_call(
    fn: Callable[..., Any], args: Iterable[Any], kwargs: Mapping[str, Any] | None
) -> tuple[bytes, list[str]]:
    """The pickled call and the ids of the classes it sends by value (``digest``), read
    here, in the loop's thread, while nothing else pickles; ConfigError if it cannot
    be sent.

    Run when ``submit`` is called, so the arguments are taken as they are then.
    """
    if not callable(fn):
        raise ConfigError(f"submit() needs a callable, got {type(fn).__name__}")
    # An async function, or an instance whose class's __call__ is one.
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
        raise ConfigError(
            f"cannot submit {label(fn)!r}: it is an async function, and a job runs a plain "
            "call (its coroutine would come back unrun); submit a plain function that runs "
            "it, e.g. one that calls asyncio.run() on it"
        )
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigError(
            f"cannot submit {label(fn)!r}: it is a generator function, whose call returns "
            "a generator that cannot come back from a job; submit a function that returns "
            "its items, e.g. list(gen(...))"
        )
    import cloudpickle  # lazily: `import xqueue` stays light

    try:
        call = cloudpickle.dumps((fn, tuple(args), dict(kwargs or {})), protocol=PROTOCOL)
    except Exception as exc:
        raise ConfigError(
            f"cannot submit {label(fn)!r}: the call cannot be pickled to be sent to a job "
            f"({type(exc).__name__}: {exc}); pass what it needs as picklable arguments "
            "(paths, numbers, plain data) instead of open files, locks or connections"
        ) from exc
    return call, class_trackers(call)


def call_file(call: bytes, trackers: list[str], code: str, name: str) -> bytes:
    """The call file's content: the call, and the controller's ``sys.path`` (absolute).

    The runner appends that path to its own, so a function of a module importable here
    (pickled by reference) is found there on a shared file system. It is outside the
    digest, so the same script run from another directory still resumes its calls.
    Blocking (the working directory is asked for): for a worker thread.
    """
    cwd = os.getcwd()
    path = [p if os.path.isabs(p) else os.path.join(cwd, p) for p in sys.path]
    # The trackers and code version: for the runner to check the digest as it was made.
    from . import __version__

    envelope = {
        "format": FORMAT,
        "xqueue": __version__,  # named in the runner's errors: it may be another one
        "call": call,
        "sys_path": path,
        "trackers": trackers,
        "code": code,
        "name": name,  # what the command names the call by (``place_free``)
        "sha256": hashlib.sha256(call).hexdigest(),  # of the pickle the job runs
    }
    return pickle.dumps(envelope, protocol=PROTOCOL)


def command(python: str, call_digest: str) -> list[str]:
    return [python, "-m", RUNNER, call_digest]


class _Envelope(pickle.Unpickler):
    """Reads a result file's envelope, which holds builtin values only: nothing in it may
    name a class or function to load (the payloads inside are loaded separately)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a result envelope")


def read_outcome(job: Job) -> tuple[bool, Any]:
    """(True, value), or (False, the exception to raise); blocking, for a worker thread."""
    status = job.status
    if status not in (JobStatus.FINISHED, JobStatus.FAILED):
        why = f": {job.reason}" if job.reason else ""
        return False, CallError(
            job, f"{_job(job)} was {status.value}{why}; the call gave no result"
        )
    path = job.attempt_path(RESULT)
    try:
        data = read_bytes(path)
    except WorkdirError as exc:
        return False, CallError(job, f"{_job(job)}: {exc}")
    if data is None:
        return False, _no_result(job, path)
    import io

    try:
        record = _Envelope(io.BytesIO(data)).load()
        ok = record["ok"]
    except Exception as exc:
        return False, CallError(job, f"{_job(job)}: its result file {path} is unreadable ({exc})")
    import cloudpickle

    if ok:
        try:
            return True, cloudpickle.loads(record["value"])
        except Exception as exc:
            err = CallError(
                job,
                f"{_job(job)}: the call's return value cannot be loaded here "
                f"({type(exc).__name__}: {exc}); is this environment the one the job ran in?",
            )
            err.__cause__ = exc
            return False, err
    return False, _raised(job, record)


def _raised(job: Job, record: dict[str, Any]) -> BaseException:
    exc: Any = None
    why = str(record.get("why") or "")
    if record.get("loaded") is False:  # never ran: not an error of the function's own
        kind = str(record.get("type"))
        hint = (
            "; the function's module, and the classes of its arguments, must be importable "
            "there (or defined in the script that submits)"
            if kind.endswith(("ImportError", "ModuleNotFoundError", "AttributeError"))
            else ""
        )
        err = CallError(
            job,
            f"{_job(job)}: the call could not be loaded where it ran, so it never ran "
            f"({kind}: {record.get('message')}){hint}",
        )
        err.__cause__ = RemoteTraceback(str(record.get("traceback") or ""))
        return err
    if record.get("exception") is not None:
        import cloudpickle

        try:
            exc = cloudpickle.loads(record["exception"])
        except Exception as err:
            why = f"{type(err).__name__}: {err}"
    if not isinstance(exc, Exception):
        # Also SystemExit and KeyboardInterrupt: raised here they would stop the controller.
        rebuilt = f" (it cannot be rebuilt here: {why})" if why else ""
        exc = CallError(
            job,
            f"{_job(job)}: the call raised {record.get('type')}: {record.get('message')}{rebuilt}",
        )
    exc.__cause__ = RemoteTraceback(str(record.get("traceback") or ""))
    return exc  # type: ignore[no-any-return]


def _no_result(job: Job, path: str) -> CallError:
    rc = "no return code" if job.rc is None else f"return code {job.rc}"
    why = f" ({job.reason})" if job.reason else ""
    tail = _tail(job.stderr_path)
    said = f"; its stderr ends with:\n{tail}" if tail else ""
    return CallError(
        job,
        f"{_job(job)} {job.status.value} with {rc}{why} and left no result ({path}); "
        f"stderr: {job.stderr_path}{said}",
    )


def _tail(path: str) -> str:
    """The last few hundred bytes of a file, without reading a large one whole."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return ""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, _STDERR_TAIL, max(0, size - _STDERR_TAIL))
    except OSError:
        return ""
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


def _job(job: Job) -> str:
    return f"job {job.index} ({job.name})"
