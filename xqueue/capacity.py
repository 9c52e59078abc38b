"""What hosts can run at once, and the claims that running jobs hold on them.

A scheduler that knows its machines (local: this one; SSH: each server) reports a
``Capacity`` per host: CPUs, memory, GPU device ids, each ``None`` when not counted.
A queue may also have named *slots*: axes of values (``{"machine": [0, 1], "gpu":
[0, 1]}``) of which a job asks one value per axis it names.

A job's request is reduced to a ``Need``; the ``Pool`` grants it a ``Claim`` (a host,
concrete GPU ids, slot values) only when it fits in what the claims already held leave
free, and takes it back when the job leaves the active set. Everything here is plain
synchronous bookkeeping: the engine calls it from its decision step, never across an
``await``, so a claim can never be granted twice.

Slot values: two jobs running at once never hold the same values on the axes they both
name. A job naming ``machine`` and ``gpu`` holds one (machine, gpu) pair: another pair
with the same machine may run beside it, a job naming ``machine`` alone may not (it
holds the whole machine). Axes no job names together are independent pools.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .resources import Resources

GPU_ENV = ("CUDA_VISIBLE_DEVICES",)
"""The variables a job's GPU ids are given in unless a host says otherwise (``gpu_env``)."""
_AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Combinations tried when looking for free slot values, or the best one to reserve.
_MAX_COMBINATIONS = 100_000


def _mib(mb: int) -> str:
    return f"{mb / 1024:.4g}G" if mb >= 1024 else f"{mb}M"


@dataclass(frozen=True)
class Capacity:
    """What one host can run at once; a ``None`` resource is not counted (unbounded).

    ``gpus`` are the device ids handed out (``("0", "1")``), ``()`` for a host with none;
    a job given some finds them in each variable of ``gpu_env``.
    """

    cpus: int | None = None
    memory_mb: int | None = None
    gpus: tuple[str, ...] | None = None
    gpu_env: tuple[str, ...] = GPU_ENV

    def holds(self, need: Need) -> bool:
        """Whether ``need`` fits in this capacity when nothing else runs."""
        return (
            (self.cpus is None or need.cpus <= self.cpus)
            and (self.memory_mb is None or need.memory_mb <= self.memory_mb)
            and (self.gpus is None or need.gpus <= len(self.gpus))
        )

    def describe(self) -> str:
        parts = [
            "CPUs not counted" if self.cpus is None else f"{self.cpus} CPU(s)",
            "memory not counted" if self.memory_mb is None else f"{_mib(self.memory_mb)} memory",
        ]
        if self.gpus is None:
            parts.append("GPUs not counted")
        else:
            parts.append(f"GPUs [{', '.join(self.gpus)}]" if self.gpus else "no GPU")
        return ", ".join(parts)


@dataclass(frozen=True)
class Need:
    """What a job takes from a host while it runs, and the slot axes it asks values of."""

    cpus: int = 0
    memory_mb: int = 0
    gpus: int = 0
    axes: tuple[str, ...] = ()

    @classmethod
    def of(cls, resources: Resources | None) -> Need:
        """A resource left unset takes nothing: only what a job asks for is counted."""
        if resources is None:
            return NOTHING
        r = resources
        return cls(r.cpus or 0, r.memory_mb or 0, r.gpus or 0, r.slots or ())

    def __bool__(self) -> bool:
        return bool(self.cpus or self.memory_mb or self.gpus or self.axes)

    def describe(self) -> str:
        parts = []
        if self.cpus:
            parts.append(f"{self.cpus} CPU(s)")
        if self.memory_mb:
            parts.append(f"{_mib(self.memory_mb)} memory")
        if self.gpus:
            parts.append(f"{self.gpus} GPU(s)")
        if self.axes:
            parts.append(f"slots {', '.join(self.axes)}")
        return ", ".join(parts) or "nothing"


NOTHING = Need()


class Claim:
    """What one job holds while it is active: a host, GPU ids, slot values."""

    __slots__ = ("cpus", "gpu_env", "gpus", "held", "host", "memory_mb", "on_gpu_host", "slots")

    def __init__(
        self,
        host: str,
        need: Need,
        gpus: tuple[str, ...] = (),
        slots: Mapping[str, Any] | None = None,
        gpu_env: tuple[str, ...] = GPU_ENV,
        on_gpu_host: bool = False,
    ) -> None:
        self.host = host
        self.cpus, self.memory_mb = need.cpus, need.memory_mb
        self.gpus = gpus
        self.slots: dict[str, Any] = dict(slots or {})
        self.gpu_env = gpu_env
        # Whether its host hands out GPUs: a job given none there must see none.
        self.on_gpu_host = on_gpu_host or bool(gpus)
        self.held = False  # set by the pool while it counts this claim

    def environment(self) -> dict[str, str]:
        """The variables a job started with this claim gets: its GPU ids and slot values.

        On a host that hands out GPUs, a job given none gets the ``gpu_env`` variables
        empty: it inherited the whole pool (the controller's CUDA_VISIBLE_DEVICES, or
        every device when that is unset), and ran on the GPUs other jobs were given."""
        env: dict[str, str] = {}
        if self.gpus or self.on_gpu_host:
            ids = ",".join(self.gpus)
            env.update(dict.fromkeys(self.gpu_env, ids))
        if self.gpus:
            env["XQUEUE_GPUS"] = ",".join(self.gpus)
        for axis, value in self.slots.items():
            env[slot_variable(axis)] = str(value)
        return env

    def record(self) -> dict[str, Any] | None:
        """The claim for the job's durable record; None when it holds nothing to give back."""
        if not (self.cpus or self.memory_mb or self.gpus or self.slots):
            return None
        return {
            "host": self.host,
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "gpus": list(self.gpus),
            "slots": dict(self.slots),
        }

    def __repr__(self) -> str:
        return f"<Claim {self.host!r} gpus={list(self.gpus)} slots={self.slots}>"


@dataclass(frozen=True)
class Earmark:
    """What is set aside on one host for the job that waited longest (see ``admission``)."""

    host: str
    cpus: int = 0
    memory_mb: int = 0
    gpus: int = 0
    slots: Mapping[str, str] | None = None  # the slot values (as text) it is to get


def slot_variable(axis: str) -> str:
    return f"XQUEUE_SLOT_{axis.upper()}"


def fill_slots(template: str, slots: Mapping[str, Any]) -> str:
    """``template`` with each ``{axis}`` field of an assigned axis replaced by its value.

    Other braces are left as they are, so a shell command's ``${HOME}`` or ``{a,b}``
    survives; ``job.slots`` is the assignment of a running job.
    """
    return _FIELD.sub(lambda m: str(slots[m[1]]) if m[1] in slots else m[0], template)


def check_axes(axes: Mapping[str, Iterable[Any]] | None) -> dict[str, tuple[Any, ...]]:
    """The queue's slot axes, checked: names usable in a variable, distinct plain values."""
    if axes is None:
        return {}
    if not isinstance(axes, Mapping):
        raise ConfigError(f"slots must map axis names to lists of values, got {axes!r}")
    checked: dict[str, tuple[Any, ...]] = {}
    variables: set[str] = set()
    for name, values in axes.items():
        if not isinstance(name, str) or not _AXIS.match(name):
            raise ConfigError(f"slot axis name {name!r} must be a word (letters, digits, _)")
        if slot_variable(name) in variables:
            raise ConfigError(f"slot axes {name!r} and another differ only by case")
        variables.add(slot_variable(name))
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ConfigError(f"slot axis {name!r} must be a list of values, got {values!r}")
        values = tuple(values)
        if not values:
            raise ConfigError(f"slot axis {name!r} has no value")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ConfigError(f"slot axis {name!r}: values are strings or integers: {value!r}")
        if len({str(v) for v in values}) != len(values):
            raise ConfigError(f"slot axis {name!r} lists a value twice: {list(values)!r}")
        checked[name] = values
    return checked


class _Host:
    """One host's capacity and what the claims on it hold."""

    __slots__ = ("cap", "cpus", "gpus", "jobs", "memory_mb", "name", "offered")

    def __init__(self, name: str, cap: Capacity, offered: bool) -> None:
        self.name, self.cap, self.offered = name, cap, offered
        self.cpus = self.memory_mb = self.jobs = 0
        self.gpus: set[str] = set()

    def free_gpus(self) -> list[str]:
        return [g for g in self.cap.gpus or () if g not in self.gpus]

    def shortfall(self, need: Need) -> float:
        """How far the host is from fitting ``need`` now, as a share of its capacity."""
        cap, short = self.cap, 0.0
        if cap.cpus:
            short += max(0, need.cpus - (cap.cpus - self.cpus)) / cap.cpus
        if cap.memory_mb:
            short += max(0, need.memory_mb - (cap.memory_mb - self.memory_mb)) / cap.memory_mb
        if cap.gpus:
            short += max(0, need.gpus - len(self.free_gpus())) / len(cap.gpus)
        return short

    def could_ever(self, need: Need) -> bool:
        return self.cap.holds(need)

    def fits(self, need: Need, mark: Earmark | None) -> bool:
        cap = self.cap
        mark = mark if mark is not None and mark.host == self.name else None
        cpus = self.cpus + (mark.cpus if mark else 0)
        mem = self.memory_mb + (mark.memory_mb if mark else 0)
        gpus = len(self.free_gpus()) - (mark.gpus if mark else 0)
        # Only what is asked for is checked: a host over-committed by restored claims
        # still takes jobs that ask for none of what it lacks.
        return (
            _within(need.cpus, cap.cpus, cpus)
            and _within(need.memory_mb, cap.memory_mb, mem)
            and (not need.gpus or cap.gpus is None or need.gpus <= gpus)
        )


def _within(asked: int, capacity: int | None, used: int) -> bool:
    return not asked or capacity is None or asked <= capacity - used


class Pool:
    """The claims held on the hosts of one queue, and the slot values they hold.

    Hosts not known yet (``set_hosts`` not called, or a cluster that decides by itself)
    accept anything; a queue with slot axes then still hands out slot values.
    """

    def __init__(self, axes: Mapping[str, Iterable[Any]] | None = None) -> None:
        self.axes = check_axes(axes)
        self._hosts: dict[str, _Host] = {"": _Host("", Capacity(), True)}
        self._bounded = False
        # (axes, values as text) of every slot assignment held, with how many hold it.
        self._slots: Counter[tuple[tuple[str, ...], tuple[str, ...]]] = Counter()

    @property
    def in_use(self) -> bool:
        """Whether admission has anything to count (else only ``forks`` bounds jobs)."""
        return self._bounded or bool(self.axes)

    def set_hosts(self, hosts: Mapping[str, Capacity] | None) -> None:
        """The hosts and their capacity, as the scheduler knows them now (None: unbounded).

        What claims hold is kept: claims restored before the capacity was known, or
        held by jobs left running by an earlier run of this queue, still count.
        """
        self._bounded = hosts is not None
        for known in self._hosts.values():
            known.offered = False
        for name, cap in (hosts or {"": Capacity()}).items():
            host = self._hosts.get(name)
            if host is None:
                self._hosts[name] = _Host(name, cap, True)
            else:
                host.cap, host.offered = cap, True

    def _offered(self) -> list[_Host]:
        return [h for h in self._hosts.values() if h.offered]

    def describe(self) -> str:
        hosts = self._offered()
        if len(hosts) == 1:
            return hosts[0].cap.describe()
        return "; ".join(f"{h.name}: {h.cap.describe()}" for h in hosts)

    # -- checks ----------------------------------------------------------------------
    def never_fits(self, need: Need) -> str | None:
        """Why ``need`` can never be granted (unknown axes, more than any host has), or None."""
        if not need:
            return None
        unknown = [a for a in need.axes if a not in self.axes]
        if unknown:
            have = ", ".join(self.axes) or "none (give the queue slots=...)"
            return f"asks for slot axes {unknown} that the queue does not have; its axes: {have}"
        if any(h.could_ever(need) for h in self._offered()):
            return None
        return f"asks for {need.describe()}, more than there is: {self.describe()}"

    # -- claims ----------------------------------------------------------------------
    def claim(
        self, need: Need, prefer: Collection[str] | None = None, mark: Earmark | None = None
    ) -> Claim | None:
        """A claim for ``need`` if it fits in what is free (beside ``mark``), else None.

        Only the hosts in ``prefer`` (reachable now) are considered when one of them
        could ever hold ``need``: it waits for room there rather than go where it cannot
        start. Among the hosts it fits on, the one with the fewest jobs, declaration
        order breaking ties.
        """
        slots: dict[str, Any] | None = {}
        if need.axes:
            slots = self._free_values(need.axes, mark.slots if mark else None)
            if slots is None:
                return None
        hosts = self._offered()
        if prefer is not None and any(h.could_ever(need) for h in hosts if h.name in prefer):
            hosts = [h for h in hosts if h.name in prefer]
        hosts = [h for h in hosts if h.fits(need, mark)]
        if not hosts:
            return None
        host = min(hosts, key=lambda h: h.jobs)
        gpus = tuple(host.free_gpus()[: need.gpus]) if host.cap.gpus is not None else ()
        claim = Claim(host.name, need, gpus, slots, host.cap.gpu_env, bool(host.cap.gpus))
        self._hold(claim)
        return claim

    def earmark(self, need: Need, prefer: Collection[str] | None, last: Earmark | None) -> Earmark:
        """What to set aside for ``need`` now: on ``last``'s host and slot values when it
        still has them (a reservation does not wander), else on the host closest to
        fitting it, towards the slot values held by the fewest running jobs."""
        hosts = [h for h in self._offered() if h.could_ever(need)]
        if not hosts or any(a not in self.axes for a in need.axes):
            return Earmark("")  # it can never start; the next decision refuses it
        host = next((h for h in hosts if last is not None and h.name == last.host), None)
        if host is None:
            usable = [h for h in hosts if prefer is None or h.name in prefer] or hosts
            host = min(usable, key=lambda h: h.shortfall(need))
        slots = last.slots if last is not None and last.slots is not None else None
        if need.axes and slots is None:
            slots = self._least_held(need.axes)
        cap = host.cap
        return Earmark(
            host.name,
            cpus=0 if cap.cpus is None else max(0, min(need.cpus, cap.cpus - host.cpus)),
            memory_mb=0
            if cap.memory_mb is None
            else max(0, min(need.memory_mb, cap.memory_mb - host.memory_mb)),
            gpus=min(need.gpus, len(host.free_gpus())),
            slots=slots,
        )

    def restore(self, record: Any, need: Need) -> Claim | None:
        """The claim an earlier run recorded for a job it started, held again as it was.

        The job may still run with those devices and values: they are counted whatever
        the capacity says now, so no other job is given them. A record that cannot be
        read gives the job's own need, on no host in particular.
        """
        if not isinstance(record, dict):
            return None
        host = record.get("host") if isinstance(record.get("host"), str) else ""
        gpus = record.get("gpus")
        slots = record.get("slots")
        cpus, memory = record.get("cpus"), record.get("memory_mb")
        claim = Claim(
            str(host),
            Need(
                cpus if type(cpus) is int else need.cpus,
                memory if type(memory) is int else need.memory_mb,
            ),
            tuple(str(g) for g in gpus) if isinstance(gpus, list) else (),
            {
                str(axis): self._declared(str(axis), value)
                for axis, value in (slots.items() if isinstance(slots, dict) else ())
            },
        )
        target = self._hosts.get(claim.host)
        if target is None:
            self._hosts[claim.host] = target = _Host(claim.host, Capacity(), False)
        claim.gpu_env = target.cap.gpu_env
        claim.on_gpu_host = bool(target.cap.gpus)
        self._hold(claim)
        return claim

    def release(self, claim: Claim) -> None:
        """Give back what ``claim`` holds; a claim released already is ignored."""
        if not claim.held:
            return
        claim.held = False
        host = self._hosts[claim.host]
        host.cpus -= claim.cpus
        host.memory_mb -= claim.memory_mb
        host.gpus.difference_update(claim.gpus)
        host.jobs -= 1
        if claim.slots:
            key = _slot_key(claim.slots)
            self._slots[key] -= 1
            if self._slots[key] <= 0:
                del self._slots[key]

    def _hold(self, claim: Claim) -> None:
        host = self._hosts[claim.host]
        host.cpus += claim.cpus
        host.memory_mb += claim.memory_mb
        host.gpus.update(claim.gpus)
        host.jobs += 1
        if claim.slots:
            self._slots[_slot_key(claim.slots)] += 1
        claim.held = True

    # -- slot values -----------------------------------------------------------------
    def _declared(self, axis: str, value: Any) -> Any:
        """A recorded value as the queue declares it (JSON keeps 1 and "1" apart)."""
        for declared in self.axes.get(axis, ()):
            if str(declared) == str(value):
                return declared
        return value

    def _combinations(self, axes: Sequence[str]) -> Iterable[tuple[Any, ...]]:
        return itertools.islice(itertools.product(*(self.axes[a] for a in axes)), _MAX_COMBINATIONS)

    def _conflicts(self, axes: Sequence[str], texts: Sequence[str]) -> int:
        """How many held assignments agree with this one on the axes both name."""
        mine = dict(zip(axes, texts))
        count = 0
        for (held_axes, held_texts), n in self._slots.items():
            shared = [(a, t) for a, t in zip(held_axes, held_texts) if a in mine]
            if shared and all(mine[a] == t for a, t in shared):
                count += n
        return count

    def _free_values(
        self, axes: Sequence[str], avoid: Mapping[str, str] | None
    ) -> dict[str, Any] | None:
        for values in self._combinations(axes):
            texts = [str(v) for v in values]
            if avoid is not None and _agree(dict(zip(axes, texts)), avoid):
                continue
            if not self._conflicts(axes, texts):
                return dict(zip(axes, values))
        return None

    def _least_held(self, axes: Sequence[str]) -> dict[str, str]:
        best = min(
            self._combinations(axes), key=lambda vs: self._conflicts(axes, [str(v) for v in vs])
        )
        return {a: str(v) for a, v in zip(axes, best)}


def _agree(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether two assignments name a common axis and agree on every axis both name."""
    shared = [axis for axis in a if axis in b]
    return bool(shared) and all(a[x] == b[x] for x in shared)


def _slot_key(slots: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(slots), tuple(str(v) for v in slots.values())
