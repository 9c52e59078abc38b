"""Parameter sweeps: a TOML file of sections of groups, each group a grid of points.

::

    [slots]                      # the queue's slot axes (optional)
    machine = [0, 1]
    gpu = [0, 1]

    [[section]]                  # sections run one after another
    name = "train"

    [[section.group]]            # the groups of a section run at once
    name = "fit"
    command = ["python3", "fit.py", "--decay", "{decay}", "--gpu", "{gpu}"]
    slots = ["machine", "gpu"]   # each point holds one (machine, gpu) pair while it runs
    params.decay = [0.1, 0.01]   # every combination of the lists runs once
    params.epoch = [10, 20]

A group runs a command template (see ``_template`` for how fields are filled safely)
or a Python function (``call = "module:function"``, its point as keyword arguments,
through ``Xqueue.submit_call``). Its points are the cartesian product of ``params``
(later keys vary faster), times the rows of ``zip`` (lists of one length, taken
together) if there is one.

How it maps onto the queue, so that nothing here is a scheduler of its own:

- every point is one job, fed with its point as ``params`` (recorded in its spec:
  ``xqueue status --param`` filters on it) and, for a command, in its environment as
  ``XQUEUE_PARAM_<NAME>``;
- slot values are given by the queue's admission when the job starts (``Xqueue(slots=)``,
  ``resources={"slots": [...]}``), so two running points never hold the same value;
- a section's jobs are fed ``after=`` every job of the section before: they start once
  all of those succeeded, and end SKIPPED if one did not. A section with
  ``continue_on_failure = true`` lets the next one start when its jobs have *ended*,
  however: that barrier is this controller waiting for them before it feeds the next
  section (a dependency that does not require success is not something ``after=`` means);
- the groups of a section are fed interleaved, one point of each in turn, so that none
  waits behind another's whole grid for a free fork.

The order jobs are fed in depends only on the file, so a sweep run again on the same
workdir gives every point the index and spec it had: points that succeeded are not run
again (the queue's resume), the others are, and so are the points of later sections that
run ``after=`` one of those.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _template as template
from ._text import check_envs
from .capacity import check_axes, slot_variable
from .errors import ConfigError, QueueStateError
from .job import check_name, normalize_command
from .params import NAME, check_value, text
from .resources import Resources

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from .job import Job
    from .queue import Xqueue

    Feed = Callable[[Xqueue, list[Job] | None], Awaitable[Job]]
    """Feeds one point to a queue, after the jobs given."""

__all__ = ["Group", "Point", "Section", "Sweep", "SweepJob", "param_variable", "run_sweep"]

_SWEEP_KEYS = ("slots", "section")
_SECTION_KEYS = ("name", "continue_on_failure", "group")
_GROUP_KEYS = ("name", "command", "call", "params", "zip", "slots", "resources", "envs")
_NAME_SHOWN = 32  # characters of a value shown in a job's name
MAX_POINTS = 10_000_000
"""The most points one group of a sweep may have (each one a job of the run)."""
POINT_BYTES = 3000
"""What the controller holds for each point of a running sweep, about (its job, name,
parameters and environment): 310 MB for 100,000 points, measured."""


def _memory() -> int:
    """This machine's memory, in bytes (0 if it cannot be known)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0


def param_variable(name: str) -> str:
    """The environment variable that holds parameter ``name`` for a command."""
    return f"XQUEUE_PARAM_{name.upper()}"


@dataclass(frozen=True)
class Group:
    """Points run at once with the other groups of their section: one job each."""

    name: str
    command: str | tuple[str, ...] | None  # a shell string or an argv template
    call: str | None  # "module:function"
    params: tuple[tuple[str, tuple[Any, ...]], ...]  # crossed, in the order written
    zipped: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # taken together, row by row
    slots: tuple[str, ...] = ()
    resources: Mapping[str, Any] = field(default_factory=dict)
    envs: Mapping[str, str] = field(default_factory=dict)

    def size(self) -> int:
        """Its number of points; ConfigError for a grid too big to be a run."""
        size = math.prod(len(values) for _, values in self.params)
        if self.zipped:
            size *= len(self.zipped[0][1])
        if size > MAX_POINTS:
            raise ConfigError(
                f"group {self.name!r} has {size:,} points (the product of its parameters' "
                f"numbers of values); a group may have at most {MAX_POINTS:,}: give fewer values"
            )
        return size

    def points(self) -> list[dict[str, Any]]:
        """Every point of the grid, once each, in a fixed order. A grid too big to be
        a run is refused before it is built: seven parameters of forty values made
        1.6e11 points, and the listing grew until the memory ran out."""
        self.size()
        names = [n for n, _ in self.params]
        rows: list[tuple[Any, ...]] = [()]
        if self.zipped:
            rows = list(zip(*(values for _, values in self.zipped), strict=True))
        znames = [n for n, _ in self.zipped]
        return [
            {**dict(zip(names, combo, strict=True)), **dict(zip(znames, row, strict=True))}
            for combo in itertools.product(*(values for _, values in self.params))
            for row in rows
        ]

    def varying(self) -> list[str]:
        """The parameters with more than one value: those a job's name shows."""
        return [n for n, values in (*self.params, *self.zipped) if len(values) > 1]


@dataclass(frozen=True)
class Section:
    """Groups that run at once, after the section before has ended."""

    name: str
    groups: tuple[Group, ...]
    continue_on_failure: bool = False


@dataclass(frozen=True)
class Point:
    """One job of a sweep: its group's ``number``-th point, ``params``."""

    section: Section
    group: Group
    number: int
    params: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The job's name: the group's, and the parameters that vary in it."""
        shown = [f"{n}={_short(self.params[n])}" for n in self.group.varying()]
        return " ".join([self.group.name, *shown])

    def command(self) -> tuple[str | tuple[str, ...], dict[str, str]]:
        """The command and environment of a command group's point (see ``_template``)."""
        group, params = self.group, self.params
        if group.command is None:
            raise ConfigError(f"group {group.name!r} runs a call, not a command")
        envs = {**group.envs, **{param_variable(n): text(v) for n, v in params.items()}}
        slots = {a: slot_variable(a) for a in group.slots}
        if isinstance(group.command, str):
            pieces = template.parse(group.command, _known(group), _what(group))
            variables = {**{n: param_variable(n) for n in params}, **slots}
            return template.shell(pieces, variables), envs
        elements = [template.parse(e, _known(group), _what(group)) for e in group.command]
        values = {n: text(v) for n, v in params.items()}
        return template.argv(elements, values, slots), envs


@dataclass(frozen=True)
class SweepJob:
    """A point and the job that ran it."""

    point: Point
    job: Job


@dataclass(frozen=True)
class Sweep:
    """A sweep read from a file (``from_file``) or from data (``from_dict``)."""

    sections: tuple[Section, ...]
    slots: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Sweep:
        """Read a TOML sweep file; ConfigError says what is wrong in it, and where."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read sweep file {os.fspath(path)!r}: {exc.strerror}"
            ) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{os.fspath(path)} is not UTF-8 text, as TOML is: {exc}") from None
        return cls.from_text(text, os.fspath(path))

    @classmethod
    def from_text(cls, text: str, source: str = "<sweep>") -> Sweep:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sweep:
        """A sweep from the data of a file (as ``tomllib`` reads it)."""
        _keys(data, _SWEEP_KEYS, "the sweep")
        axes = check_axes(data.get("slots"))
        sections = data.get("section")
        if not isinstance(sections, list) or not sections:
            raise ConfigError("a sweep needs at least one [[section]] with a [[section.group]]")
        parsed = tuple(_section(i, s, axes) for i, s in enumerate(sections, 1))
        _unique([s.name for s in parsed], "section")
        total = sum(group.size() for section in parsed for group in section.groups)
        memory = _memory()
        if memory and total * POINT_BYTES > memory:
            # Allowed by the per-group limit, a sweep the controller cannot hold ran for a
            # minute, its memory growing past the machine's, until it was killed.
            raise ConfigError(
                f"the sweep has {total:,} points: its controller would hold about "
                f"{total * POINT_BYTES / 2**30:,.1f} GiB for them, more than this machine's "
                f"{memory / 2**30:,.1f} GiB of memory; split it into smaller sweeps (each in a "
                "workdir of its own)"
            )
        return cls(parsed, axes)

    def check(self, source: str, axes: Mapping[str, Any]) -> None:
        """Refuse now, naming ``source``, the section and the group, what feeding would
        refuse once the queue and its workdir are made: slot axes a queue of ``axes``
        does not have, a ``call`` that cannot be loaded. For a caller that makes the
        queue itself, before it does (the command line: its queue has the file's
        ``[slots]`` and no others)."""
        for section in self.sections:
            for group in section.groups:
                where = f"{source}: group {group.name!r} of section {section.name!r}"
                missing = [axis for axis in group.slots if axis not in axes]
                if missing:
                    table = "the [slots] table" if axes else "a [slots] table, which it lacks"
                    raise ConfigError(f"{where}: slot axes {missing} must be in {table}")
                if group.call is not None:
                    _resolve(group, where)
        for point in self.points():
            _check_point(point, source)

    def points(self) -> Iterator[Point]:
        """Every point, in the order its job is fed (which resuming relies on)."""
        for section in self.sections:
            yield from _interleaved(section)

    async def run(self, queue: Xqueue | None = None, **options: Any) -> list[SweepJob]:
        """``run_sweep(self, queue, **options)``."""
        return await run_sweep(self, queue, **options)


async def run_sweep(
    sweep: Sweep | str | os.PathLike[str], queue: Xqueue | None = None, **options: Any
) -> list[SweepJob]:
    """Run every point of ``sweep`` (a ``Sweep`` or a file's path) and return its jobs.

    ``queue``: an ``Xqueue`` to run on; one not running yet is run (``async with``) and
    closed at the end, one already running (inside your ``async with``) is only fed.
    Without one, a queue is made from ``options`` (``Xqueue``'s arguments: ``workdir``,
    ``forks``, ``scheduler``...) with the file's ``[slots]`` and, unless given,
    ``error_strategy="ignore"``: a failed point does not stop the others.

    Returns when every job of the sweep has ended, in the order they were fed. Everything
    that can be refused (the file, a template, a function that cannot be imported) is
    refused before the first job is fed.
    """
    if not isinstance(sweep, Sweep):
        import anyio.to_thread

        sweep = await anyio.to_thread.run_sync(Sweep.from_file, sweep)
    feeds = [
        (section, [(p, _prepare(p, sweep.slots)) for p in _interleaved(section)])
        for section in sweep.sections
    ]
    if queue is None:
        from .queue import Xqueue

        if "slots" in options and sweep.slots:
            raise ConfigError("the sweep has a [slots] table: do not pass slots= as well")
        queue = Xqueue(**{"error_strategy": "ignore", "slots": sweep.slots, **options})
    elif options:
        raise ConfigError(f"pass either a queue or its options, not both: {sorted(options)}")
    if queue.is_feeding():
        return await _feed(queue, feeds, owned=False)
    async with queue:
        return await _feed(queue, feeds, owned=True)


async def _feed(
    queue: Xqueue, feeds: list[tuple[Section, list[tuple[Point, Feed]]]], *, owned: bool
) -> list[SweepJob]:
    """Feed each section after the one before; ``owned``: the queue's block is ours."""
    done: list[SweepJob] = []
    previous: list[Job] = []  # the jobs of the section before
    tolerant = False  # whether that section has continue_on_failure
    for section, points in feeds:
        after: list[Job] | None = previous or None
        if tolerant:
            for job in previous:  # the barrier that does not require success
                await job.wait()
            after = None
            if not queue.is_feeding():
                # The run stopped meanwhile (a signal, a cancel, a halt): its own error
                # is the one to tell, which leaving our block raises (a feed now was
                # refused with "takes no more jobs", and exit code 2). In a caller's
                # block, the sweep did not run whole, and must not return as if it had.
                if owned:
                    break
                raise QueueStateError(
                    f"the queue's run stopped before section {section.name!r} of the sweep "
                    "could be fed; its earlier sections' jobs have ended"
                )
        previous = []
        for point, feed in points:
            job = await feed(queue, after)
            previous.append(job)
            done.append(SweepJob(point, job))
        tolerant = section.continue_on_failure
    for item in done:
        await item.job.wait()
    return done


# -- what each point is fed as --------------------------------------------------------------
def _check_point(
    point: Point, source: str = "", made: tuple[str | tuple[str, ...], dict[str, str]] | None = None
) -> None:
    """Refuse, naming the group and section, what ``feed`` would refuse of the point's
    job: its command empty or holding a NUL once the template is filled in (a parameter
    ``""`` as the program), a name or environment no script can hold. Found at feed, it
    came after earlier sections had run, in words that named neither. ``made``: the
    point's ``command()``, when the caller has it already."""
    try:
        check_name(point.name)
        if point.group.command is not None:
            command, envs = made or point.command()
            normalize_command(command)
            check_envs(envs)
    except ConfigError as exc:
        where = f"group {point.group.name!r} of section {point.section.name!r}"
        raise ConfigError(f"{source}: {where}: {exc}" if source else f"{where}: {exc}") from None


def _prepare(point: Point, axes: Mapping[str, tuple[Any, ...]]) -> Feed:
    """How to feed ``point``, made before anything is fed (so refused before, too)."""
    group, params = point.group, dict(point.params)
    resources = dict(group.resources)
    if group.slots:
        resources["slots"] = list(group.slots)
    if group.call is not None:
        fn = _resolve(group)
        if group.slots:  # slot values are known only where it runs: read them there
            typed = {a: {str(v): v for v in axes.get(a, ())} for a in group.slots}
            fn = functools.partial(_call_with_slots, fn, typed)

        async def call(queue: Xqueue, after: list[Job] | None) -> Job:
            return await queue.submit_call(
                fn, (), params, name=point.name, envs=group.envs or None,
                resources=resources or None, after=after, params=params,
            )  # fmt: skip

        _check_point(point)
        return call
    command, envs = point.command()
    _check_point(point, made=(command, envs))

    async def feed(queue: Xqueue, after: list[Job] | None) -> Job:
        return await queue.feed(
            command, envs, name=point.name, resources=resources or None, after=after,
            params=params,
        )  # fmt: skip

    return feed


def _call_with_slots(
    fn: Callable[..., Any], values: Mapping[str, Mapping[str, Any]], /, **params: Any
) -> Any:
    """Where a call runs: ``fn`` with its point and the slot values it was given, as the
    values of the ``[slots]`` table (``gpu=1``, not the text ``"1"`` of the variable)."""
    slots = {}
    for axis, known in values.items():
        given = os.environ[slot_variable(axis)]
        slots[axis] = known.get(given, given)
    return fn(**params, **slots)


def _resolve(group: Group, where: str | None = None) -> Callable[..., Any]:
    assert group.call is not None
    where = where or _what(group)
    module, sep, qualname = group.call.partition(":")
    if not sep or not module or not qualname:
        raise ConfigError(f"{where}: call = {group.call!r} is not 'module:function'")
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: cannot load {group.call!r}: {exc}") from None
    except SystemExit as exc:  # a script's `sys.exit()` (argparse's too) at import
        raise ConfigError(
            f"{where}: cannot load {group.call!r}: importing {module!r} called "
            f"sys.exit({exc.code!r})"
        ) from None
    except Exception as exc:  # its own error at import, a SyntaxError: one line, exit 2
        raise ConfigError(
            f"{where}: cannot load {group.call!r}: importing {module!r} raised "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not callable(target):
        raise ConfigError(f"{where}: {group.call!r} is not callable")
    return target  # type: ignore[no-any-return]


def _interleaved(section: Section) -> Iterator[Point]:
    """The points of a section's groups, one of each group in turn."""
    grids = [[Point(section, g, i, p) for i, p in enumerate(g.points())] for g in section.groups]
    for row in itertools.zip_longest(*grids):
        yield from (p for p in row if p is not None)


# -- reading a file ---------------------------------------------------------------------------
def _section(i: int, data: Any, axes: Mapping[str, tuple[Any, ...]]) -> Section:
    where = f"section {i}"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} is not a table: write [[section]]")
    _keys(data, _SECTION_KEYS, where)
    name = _name(data, f"section{i}", where)
    where = f"section {name!r}"
    cont = data.get("continue_on_failure", False)
    if not isinstance(cont, bool):
        raise ConfigError(f"{where}: continue_on_failure is true or false, not {cont!r}")
    groups = data.get("group")
    if not isinstance(groups, list) or not groups:
        raise ConfigError(f"{where} has no group: add a [[section.group]] after it")
    parsed = tuple(_group(j, g, axes, where) for j, g in enumerate(groups, 1))
    _unique([g.name for g in parsed], f"group of {where}")
    return Section(name, parsed, cont)


def _group(j: int, data: Any, axes: Mapping[str, tuple[Any, ...]], section: str) -> Group:
    where = f"group {j} of {section}"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} is not a table: write [[section.group]]")
    _keys(data, _GROUP_KEYS, where)
    name = _name(data, f"group{j}", where)
    where = f"group {name!r} of {section}"
    has_command, has_call = "command" in data, "call" in data
    if has_command == has_call:
        raise ConfigError(f"{where} needs either a command or a call (one of them)")
    slots = _slots(data.get("slots", []), axes, where)
    params = _grid(data.get("params", {}), "params", where)
    zipped = _grid(data.get("zip", {}), "zip", where)
    if zipped and len({len(values) for _, values in zipped}) > 1:
        lengths = {n: len(values) for n, values in zipped}
        raise ConfigError(f"{where}: the lists of zip must be of one length, not {lengths}")
    if zipped:
        # A row twice ran its point twice, under one name, as a value twice in params did.
        first: dict[tuple[str, ...], int] = {}
        for i, values in enumerate(zip(*(v for _, v in zipped)), 1):
            row = first.setdefault(tuple(_full_text(v) for v in values), i)
            if row != i:
                raise ConfigError(
                    f"{where}: zip's row {i} repeats row {row} (as the job names and "
                    "commands show it): give each row once"
                )
    names = [n for n, _ in (*params, *zipped)]
    _unique([param_variable(n) for n in names], f"parameter of {where} (ignoring case)")
    clash = sorted(set(names) & set(slots))
    if clash:
        raise ConfigError(f"{where}: {clash} is both a parameter and a slot axis")
    resources = _resources(data.get("resources", {}), slots, where)
    envs = _table(data.get("envs", {}), "envs", where)
    try:
        envs = check_envs(envs)
    except ConfigError as exc:  # named with its group, as every other error of one
        raise ConfigError(f"{where}: {exc}") from None
    taken = sorted({param_variable(n) for n in names} & set(envs))
    if taken:
        raise ConfigError(f"{where}: envs sets {taken}, which hold its parameters")
    call = data.get("call")
    if has_call and not isinstance(call, str):
        raise ConfigError(f"{where}: call is a 'module:function' string, not {call!r}")
    group = Group(name, _command(data.get("command"), where), call, params, zipped, slots,
                  resources, envs)  # fmt: skip
    if group.command is not None:
        _check_command(group, where)
    return group


def _command(value: Any, where: str) -> str | tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError(f"{where}: the command is empty")
        return value
    if isinstance(value, list) and value:
        return tuple(text(v) if not isinstance(v, str) else v for v in value)
    raise ConfigError(f"{where}: command is a shell string or a list of arguments, not {value!r}")


def _check_command(group: Group, where: str) -> None:
    """Fields name parameters or slot axes, and every value can be written in a command."""
    assert group.command is not None
    elements = [group.command] if isinstance(group.command, str) else group.command
    for element in elements:
        template.parse(element, _known(group), where)
    for name, values in (*group.params, *group.zipped):
        for value in values:
            try:
                text(value)
            except ConfigError as exc:
                raise ConfigError(f"{where}: parameter {name!r}: {exc}") from None


def _grid(value: Any, key: str, where: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """A ``params`` or ``zip`` table: names to lists of values (a scalar is one value)."""
    table = _table(value, key, where)
    grid = []
    for name, values in table.items():
        if not NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: parameter name {name!r} must be a word (letters, digits, _)"
            )
        if not isinstance(values, list):
            if key == "zip":
                raise ConfigError(f"{where}: zip.{name} must be a list")
            values = [values]
        if not values:
            raise ConfigError(f"{where}: {key}.{name} is an empty list, so the group has no point")
        checked = tuple(check_value(v, f"{where}: {key}.{name}") for v in values)
        if key == "params":
            # A value twice ran its points twice, under one name (so did 1 and "1", which
            # a name and a command show alike); zip's columns may repeat a value.
            shown = [_full_text(v) for v in checked]
            twice = sorted({t for t in shown if shown.count(t) > 1})
            if twice:
                raise ConfigError(
                    f"{where}: params.{name} lists {', '.join(twice)} more than once (as the "
                    "job names and commands show it): give each value once"
                )
        grid.append((name, checked))
    return tuple(grid)


def _slots(value: Any, axes: Mapping[str, tuple[Any, ...]], where: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{where}: slots is an axis name or a list of them, not {value!r}")
    _unique(names, f"slot axis of {where}")
    unknown = [n for n in names if axes and n not in axes]
    if unknown:
        raise ConfigError(f"{where}: slot axes {unknown} are not in the [slots] table")
    return tuple(names)


def _resources(value: Any, slots: tuple[str, ...], where: str) -> dict[str, Any]:
    table = dict(_table(value, "resources", where))
    if "slots" in table:
        raise ConfigError(f"{where}: give slot axes as the group's slots, not in resources")
    try:
        Resources.from_value({**table, "slots": list(slots)} if slots else table)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return table


def _known(group: Group) -> list[str]:
    return [*(n for n, _ in (*group.params, *group.zipped)), *group.slots]


def _what(group: Group) -> str:
    return f"group {group.name!r}"


def _table(value: Any, key: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {key} must be a table, not {value!r}")
    return value


def _keys(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; it takes {', '.join(allowed)}")


def _name(data: Mapping[str, Any], default: str, where: str) -> str:
    name = data.get("name", default)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: name must be a non-empty string, not {name!r}")
    return name


def _unique(names: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    twice = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if twice:
        raise ConfigError(f"two of a {what} have the same name: {twice}")


def _short(value: Any) -> str:
    shown = _full_text(value)
    return shown if len(shown) <= _NAME_SHOWN else shown[: _NAME_SHOWN - 1] + "…"


def _full_text(value: Any) -> str:
    try:
        return text(value)
    except ConfigError:
        return json.dumps(value, separators=(",", ":"))
