"""Retry policies: what a failed attempt's class (``FailureClass``) leads to.

``Xqueue(retry_policy=...)`` maps classes to rules, written as plain data::

    {"OOM": {"memory": 1.5, "max_memory": "64G"},
     "TIMEOUT": {"walltime": 2, "max_walltime": "2h"},
     "PREEMPTED": "requeue",
     "NONZERO_EXIT": "stop"}

and validated once, when the queue is made, so a typo fails before any job runs. A rule
is an action, a bound and growth:

- ``"retry"``: run it again. Its retries come out of the queue's ``num_retries``, shared
  with every other class so bounded, unless the rule gives ``retries`` (then that many,
  of this class alone, not counted against ``num_retries``).
- ``"requeue"``: run it again as it is, not counted against ``num_retries``: the job was
  not at fault (preempted, its node failed). At most ``retries`` times, ``num_retries``
  by default.
- ``"stop"``: the failure is final.
- ``memory`` / ``walltime``: multiply the job's request by this factor for the next
  attempt, up to ``max_memory`` / ``max_walltime``. A request already at its cap is
  not retried (it would fail the same way); a job with no request to grow is retried
  as it is (the walltime grown is the scheduler's ``timeout`` option when the job has
  none of its own).

Classes the policy does not name get what ``error_strategy`` gives: "retry" retries
them from ``num_retries``, "halt" and "ignore" do not. Without a policy, ``num_retries``
and ``error_strategy`` work as they always have. A failure the backend marks as not
retryable (running it again could repeat work already done) is never retried.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ._suggest import did_you_mean
from .errors import ConfigError
from .failures import FailureClass
from .resources import Resources, parse_memory, parse_walltime

ACTIONS = ("retry", "requeue", "stop")
_KEYS = ("action", "retries", "memory", "max_memory", "walltime", "max_walltime")


@dataclass(frozen=True)
class RetryRule:
    """What one failure class leads to (see the module's documentation)."""

    action: str = "retry"
    retries: int | None = None
    """The most retries for this class, counted alone; None: see ``action``."""
    memory: float | None = None
    """Factor (> 1) the memory request grows by for the next attempt."""
    max_memory_mb: int | None = None
    walltime: float | None = None
    """Factor (> 1) the walltime grows by for the next attempt."""
    max_walltime_s: int | None = None

    def __post_init__(self) -> None:
        # A rule made directly (not parsed) is held to the same rules as a parsed one, and
        # its action spelt as the policy compares it ("STOP" was taken for "retry").
        object.__setattr__(self, "action", _action("RetryRule.action", self.action))
        _retries("RetryRule.retries", self.retries)
        _factor("RetryRule.memory", self.memory)
        _factor("RetryRule.walltime", self.walltime)
        if (self.memory or self.walltime) and self.action != "retry":
            raise ConfigError("RetryRule: growing memory or walltime needs the action 'retry'")
        if self.retries and self.action == "stop":  # 0 says the same as 'stop': kept
            raise ConfigError("RetryRule: 'retries' with the action 'stop', which retries nothing")
        for cap, factor, value in (
            ("max_memory_mb", self.memory, self.max_memory_mb),
            ("max_walltime_s", self.walltime, self.max_walltime_s),
        ):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RetryRule.{cap} must be a whole number >= 1, got {value!r}")
            if factor is None:
                raise ConfigError(f"RetryRule: {cap!r} without the factor it caps")

    @property
    def own_budget(self) -> bool:
        """Whether its retries are counted apart from ``num_retries``."""
        return self.action == "requeue" or self.retries is not None

    @classmethod
    def parse(cls, where: str, value: Any) -> RetryRule:
        """A rule from ``"retry"``/``"requeue"``/``"stop"`` or a dict; ConfigError naming
        ``where`` (``retry_policy['OOM']``) and the bad key otherwise."""
        if isinstance(value, RetryRule):
            return value
        if isinstance(value, str):
            return cls(action=_action(where, value))
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{where} must be one of {', '.join(map(repr, ACTIONS))} or a dict such as "
                f"{{'memory': 1.5, 'max_memory': '64G'}}, not {type(value).__name__}"
            )
        for key in value:
            if key not in _KEYS:
                raise ConfigError(
                    f"{where}: unknown key {key!r}{did_you_mean(key, _KEYS)}; "
                    f"accepted: {', '.join(_KEYS)}"
                )
        action = _action(f"{where}['action']", value.get("action", "retry"))
        grows = value.get("memory") is not None or value.get("walltime") is not None
        if grows and action != "retry":
            raise ConfigError(
                f"{where}: growing memory or walltime needs the action 'retry', not {action!r}"
            )
        for factor, cap in (("memory", "max_memory"), ("walltime", "max_walltime")):
            if value.get(cap) is not None and value.get(factor) is None:
                raise ConfigError(f"{where}: {cap!r} without {factor!r} (the factor it caps)")
        if value.get("retries") and action == "stop":
            raise ConfigError(f"{where}: 'retries' with the action 'stop', which retries nothing")
        return cls(
            action=action,
            retries=_retries(f"{where}['retries']", value.get("retries")),
            memory=_factor(f"{where}['memory']", value.get("memory")),
            max_memory_mb=_cap(where, "max_memory", value, parse_memory),
            walltime=_factor(f"{where}['walltime']", value.get("walltime")),
            max_walltime_s=_cap(where, "max_walltime", value, parse_walltime),
        )


def _rules(value: Any) -> dict[FailureClass, RetryRule]:
    """``RetryPolicy.rules`` from a mapping of classes (or their names, any case) to rules
    (or what ``RetryRule.parse`` reads); ConfigError naming what is wrong."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            "retry_policy must be a dict of failure classes to rules, such as "
            f"{{'OOM': {{'memory': 2}}, 'NONZERO_EXIT': 'stop'}}, not {type(value).__name__}"
        )
    rules: dict[FailureClass, RetryRule] = {}
    for key, rule in value.items():
        try:
            failure = FailureClass.parse(key)
        except ValueError:
            names = ", ".join(c.name for c in FailureClass)
            raise ConfigError(
                f"retry_policy: unknown failure class {key!r}"
                f"{did_you_mean(key, [c.name for c in FailureClass])}; "
                f"choose from {names}"
            ) from None
        if failure in rules:
            raise ConfigError(f"retry_policy: {failure.name} is given twice ({key!r})")
        rules[failure] = RetryRule.parse(f"retry_policy[{key!r}]", rule)
    return rules


def _action(where: str, value: Any) -> str:
    action = str(value).strip().lower() if isinstance(value, str) else None
    if action not in ACTIONS:
        raise ConfigError(
            f"{where}: unknown action {value!r}{did_you_mean(value, ACTIONS)}; "
            f"choose one of {', '.join(ACTIONS)}"
        )
    return action


def _retries(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be an integer >= 0, got {value!r}")
    return value


def _factor(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number > 1 (the factor it grows by), got {value!r}")
    if not math.isfinite(value) or value <= 1:
        raise ConfigError(f"{where} must be a number > 1 (the factor it grows by), got {value!r}")
    return float(value)


def _cap(where: str, key: str, value: Mapping[str, Any], parse: Any) -> int | None:
    raw = value.get(key)
    if raw is None:
        return None
    try:
        return int(parse(raw))
    except ConfigError as exc:
        raise ConfigError(f"{where}['{key}']: {exc}") from None


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one failed attempt."""

    retry: bool
    resources: Resources | None = None
    """The request of the next attempt, when it grew (None: unchanged)."""
    note: str = ""
    """What grew, or why it is not retried (appended to the job's reason)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Rules by failure class; build it from plain data with ``RetryPolicy.parse``."""

    rules: Mapping[FailureClass, RetryRule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Made directly, it is read as ``parse`` reads a mapping: a key spelt as a string
        # never matched a class (its rule ignored), a rule given as a string crashed the
        # run at the first failure.
        object.__setattr__(self, "rules", _rules(self.rules))

    @classmethod
    def parse(cls, value: RetryPolicy | Mapping[Any, Any] | None) -> RetryPolicy | None:
        """A policy from a mapping of class names (any case) to rules; None stays None."""
        if value is None or isinstance(value, RetryPolicy):
            return value
        return cls(value)

    def rule(self, failure: FailureClass, error_strategy: str) -> RetryRule:
        """The rule of a class; one the policy does not name follows ``error_strategy``."""
        found = self.rules.get(failure)
        if found is not None:
            return found
        return RetryRule("retry" if error_strategy == "retry" else "stop")

    def decide(
        self,
        failure: FailureClass,
        *,
        failures: Mapping[FailureClass, int],
        attempts: int,
        num_retries: int,
        error_strategy: str,
        resources: Resources | None,
        walltime: float | None,
    ) -> Decision:
        """Whether to run a failed job again, and with what request.

        ``failures``: the job's failed attempts by class in this run, this one included;
        ``attempts``: its attempts in this run, this one included; ``walltime``: its
        limit in seconds (its own, or the scheduler's ``timeout``), if any.
        """
        rule = self.rule(failure, error_strategy)
        if rule.action == "stop":
            return Decision(False)
        if rule.own_budget:
            budget = num_retries if rule.retries is None else rule.retries
            if failures.get(failure, 0) > budget:
                return Decision(False, note=f"{failure.name} retried {budget} time(s) already")
        else:
            own = sum(n for c, n in failures.items() if self.rule(c, error_strategy).own_budget)
            if attempts - own > num_retries:
                return Decision(False)
        return _grow(rule, resources, walltime)


def _grow(rule: RetryRule, resources: Resources | None, walltime: float | None) -> Decision:
    base = resources or Resources()
    grown: dict[str, int] = {}
    capped: list[str] = []
    for name, factor, current, cap, unit in (
        ("memory_mb", rule.memory, base.memory_mb, rule.max_memory_mb, "MiB"),
        (
            "walltime_s",
            rule.walltime,
            base.walltime_s or _whole(walltime),
            rule.max_walltime_s,
            "s",
        ),
    ):
        if factor is None or current is None:
            continue
        what, product = name.split("_")[0], current * factor
        if math.isfinite(product):
            new = min(math.ceil(product), cap or math.inf)
        elif cap:
            new = cap
        else:
            # A float's end (a factor of 1e308, or many retries): ceil() of it raised
            # in the run's loop, and the whole run died with every job running.
            capped.append(f"{what} cannot grow {factor:g} times from {current} {unit}")
            continue
        if new > current:
            grown[name] = int(new)
        else:
            capped.append(f"{what} is already at its cap of {cap} {unit}")
    if capped and not grown:
        return Decision(False, note="not retried: " + "; ".join(capped))
    if not grown:
        return Decision(True)
    note = ", ".join(f"{k.split('_')[0]} {v}" for k, v in grown.items())
    changes: dict[str, Any] = dict(grown)  # memory_mb / walltime_s only
    return Decision(True, replace(base, **changes), f"next attempt with {note}")


def _whole(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, math.ceil(seconds))
