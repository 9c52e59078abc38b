"""Named profiles: scheduler options kept in a config file and picked by name.

Two files are read, when they exist::

    ./xqueue.toml                                   the project's (current directory)
    $XDG_CONFIG_HOME/xqueue/xqueue.toml             the user's (~/.config/xqueue/...)

Each holds ``[profiles.<scheduler>.<name>]`` tables of that scheduler's options, and
optionally a ``resources`` sub-table of per-job defaults. A profile of the project file
replaces the user's profile of the same name whole (keys are not merged across files),
so the profile a reader sees in one file is all of it. A run uses the scheduler's
``default`` profile, then the profile it names on top, then its own ``scheduler_opts``.

A config file is checked when it is read, and every error is one line naming the file
and the key: the options of every profile of the run's scheduler go through that
scheduler's own option parsing, key by key (checks across options, such as a required
option, apply to the options a run ends up with).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from ._suggest import did_you_mean
from .errors import ConfigError, SchedulerOptionError
from .options import NATIVE
from .resources import Resources
from .scheduler import Scheduler

log = logging.getLogger("xqueue")

FILE_NAME = "xqueue.toml"
DEFAULT = "default"
RESOURCES = "resources"
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Profile:
    """One ``[profiles.<scheduler>.<name>]`` table and the file it was read from."""

    scheduler: str
    name: str
    options: Mapping[str, Any]
    resources: Mapping[str, Any]
    path: Path

    def where(self, *keys: str) -> str:
        """``<file>: profiles.<scheduler>.<name>[.<key>...]``, for messages."""
        return f"{self.path}: {_dotted('profiles', self.scheduler, self.name, *keys)}"


def config_files() -> list[Path]:
    """The config files that may hold profiles, the one that wins first."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: an unset, empty or relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".config")
    return [Path.cwd() / FILE_NAME, Path(base) / "xqueue" / FILE_NAME]


def profiles_of(scheduler: str) -> tuple[dict[str, Profile], list[Path]]:
    """Every profile of one scheduler (the project's over the user's) and the files read."""
    found: dict[str, Profile] = {}
    read: list[Path] = []
    for path in reversed(config_files()):  # the user's first, so the project's replace them
        data = _read(path)
        if data is None:
            continue
        read.insert(0, path)
        tables = _profiles(path, data)
        found.update(tables.get(scheduler, {}))
        for name in tables:
            if name != scheduler:
                _note_stray(path, name)
    return found, read


_noted: set[tuple[Path, str]] = set()


def _note_stray(path: Path, name: str) -> None:
    """Warn, once, of a ``[profiles.<name>]`` that names no installed scheduler: a typo
    (``profiles.slrum``) left every profile in it unused, without a word. Not an error:
    a shared file may hold the profiles of a plugin's scheduler installed elsewhere."""
    if name in registry.BUILT_IN or (path, name) in _noted:
        return
    known = registry.available()  # reads the entry points: only for a name not built in
    if name in known:
        return
    _noted.add((path, name))
    # A name from a file someone handed over (a cloned project) is shown, not obeyed: a
    # terminal's escape sequences in it are written out escaped.
    table = _dotted("profiles", name) if name.isprintable() else f"profiles.{name!r}"
    log.warning(
        "%s: %s names no installed scheduler%s; its profiles are not used",
        path,
        table,
        did_you_mean(name, known),
    )


@dataclass(frozen=True)
class Selection:
    """What the profiles a run uses give it, with the caller's options applied last."""

    options: dict[str, Any]
    resources: Resources | None
    applied: tuple[Profile, ...]


def select(
    cls: type[Scheduler], profile: str | None, explicit: Mapping[str, Any] | None
) -> Selection:
    """The options of ``default``, then of ``profile``, then ``explicit``, for ``cls``.

    Raises ConfigError for an unknown profile (listing the known ones and the files
    read) and SchedulerOptionError, naming the file and key, for an option the
    scheduler does not accept.
    """
    if profile is not None and (not isinstance(profile, str) or not profile):
        raise ConfigError(f"profile must be a profile's name, not {profile!r}")
    found, read = profiles_of(cls.name)
    for p in found.values():  # key by key, so a typo fails even in a profile not used now
        _check_options(cls, p)
    if profile is not None and profile not in found:
        raise ConfigError(_unknown(cls.name, profile, found, read))
    names = [DEFAULT] + ([profile] if profile not in (None, DEFAULT) else [])
    applied = tuple(found[n] for n in names if n in found)
    options: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    for p in applied:
        _merge(options, p.options)
        resources.update(p.resources)
    _merge(options, explicit or {})
    defaults = Resources.from_value(resources) if resources else None
    return Selection(options, defaults, applied)


def resolve(
    scheduler: str | type[Scheduler] | Scheduler,
    profile: str | None,
    options: dict[str, Any] | None,
) -> tuple[Scheduler, Resources | None]:
    """``registry.resolve`` with the profiles applied; also the jobs' default resources."""
    if isinstance(scheduler, str):
        cls = registry.scheduler_class(scheduler)
    elif isinstance(scheduler, type) and issubclass(scheduler, Scheduler):
        cls = scheduler
    else:  # an instance has its options already: no profile applies to it
        if profile is not None and isinstance(scheduler, Scheduler):
            raise ConfigError(
                "profile cannot be combined with a scheduler instance; give the "
                "scheduler's name or class instead"
            )
        return registry.resolve(scheduler, options), None
    chosen = select(cls, profile, options)
    try:
        return registry.resolve(cls, chosen.options), chosen.resources
    except SchedulerOptionError as exc:
        if not chosen.applied:
            raise
        # A check across options failed (a missing directory, a required option): the
        # key is in the message; say which profiles took part.
        froms = ", ".join(p.where() for p in chosen.applied)
        raise SchedulerOptionError(f"{exc} (with options from {froms})") from exc


def with_defaults(resources: Resources | None, defaults: Resources | None) -> Resources | None:
    """A job's resources, each one it leaves unset taken from a profile's defaults."""
    if defaults is None or resources is None:
        return resources or defaults
    return dataclasses.replace(defaults, **resources.to_dict())


def _merge(into: dict[str, Any], layer: Mapping[str, Any]) -> None:
    # A key set again moves to the end: a scheduler that reads two spellings of one
    # option (Slurm's ``t`` and ``time``) keeps the last one it sees, so the later
    # layer must also come later in the dict.
    # A ``native`` table adds to the one below it, flag by flag, as ``native.<flag>`` keys do.
    for key, value in layer.items():
        below = into.pop(key, None)
        if key == NATIVE and isinstance(below, Mapping) and isinstance(value, Mapping):
            value = {**below, **value}
        into[key] = value


def _check_options(cls: type[Scheduler], profile: Profile) -> None:
    for key, value in profile.options.items():
        try:
            cls.Options.parse_option(cls.name, key, value)
        except SchedulerOptionError as exc:
            raise SchedulerOptionError(f"{profile.where(key)}: {exc}") from exc
    if profile.resources:
        try:
            Resources.from_value(dict(profile.resources))
        except ConfigError as exc:
            raise ConfigError(f"{profile.where(RESOURCES)}: {exc}") from exc


def _read(path: Path) -> dict[str, Any] | None:
    """The parsed file, or None when there is none."""
    try:
        with open(path, "rb") as fh:
            _check_owner(path, os.fstat(fh.fileno()))
            data = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    import tomllib  # only a run that finds a config file pays for the import

    try:
        return tomllib.loads(data.decode())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def _check_owner(path: Path, info: os.stat_result) -> None:
    """Refuse a file someone else could have written: its options choose the programs
    run (``sbatch = ...``) and where jobs go, so it is as sensitive as a script."""
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise ConfigError(
            f"{path}: not read, it belongs to uid {info.st_uid}, not to you (uid {me}); "
            "a config file sets the programs xqueue runs"
        )
    if info.st_mode & stat.S_IWOTH:
        raise ConfigError(
            f"{path}: not read, every user can write to it (chmod o-w fixes that); "
            "a config file sets the programs xqueue runs"
        )


def _profiles(path: Path, data: Mapping[str, Any]) -> dict[str, dict[str, Profile]]:
    """The file's profiles by scheduler and name; its whole layout is checked."""
    for key in data:
        if key != "profiles":
            raise ConfigError(
                f"{path}: unknown key {_dotted(key)}; this file holds only "
                "[profiles.<scheduler>.<name>] tables"
            )
    result: dict[str, dict[str, Profile]] = {}
    for scheduler, table in _tables(path, data.get("profiles", {}), "profiles"):
        for name, body in _tables(path, table, "profiles", scheduler):
            options = {k: v for k, v in body.items() if k != RESOURCES}
            resources = body.get(RESOURCES, {})
            if not isinstance(resources, dict):
                where = _dotted("profiles", scheduler, name, RESOURCES)
                raise ConfigError(f"{path}: {where} must be a table (cpus, memory, gpus, walltime)")
            result.setdefault(scheduler, {})[name] = Profile(
                scheduler, name, options, resources, path
            )
    return result


def _tables(path: Path, value: Any, *keys: str) -> Iterable[tuple[str, dict[str, Any]]]:
    """The sub-tables of a table; anything else in it is an error naming its key."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {_dotted(*keys)} must be a table")
    for key, sub in value.items():
        if not isinstance(sub, dict):
            what = "a profile" if len(keys) == 2 else "a table of profiles"
            raise ConfigError(
                f"{path}: {_dotted(*keys, key)} must be {what} ([{_dotted(*keys, key)}])"
            )
        yield key, sub


def _unknown(scheduler: str, profile: str, found: Mapping[str, Profile], read: list[Path]) -> str:
    if not read:
        looked = " or ".join(str(p) for p in config_files())
        return f"unknown profile {profile!r}: no config file found ({looked})"
    known = ", ".join(f"{n} ({found[n].path})" for n in sorted(found))
    if not known:
        files = ", ".join(str(p) for p in read)
        return f"unknown profile {profile!r}: no profiles for scheduler {scheduler!r} in {files}"
    return (
        f"unknown profile {profile!r} for scheduler {scheduler!r}"
        f"{did_you_mean(profile, found)}; known profiles: {known}"
    )


def _dotted(*keys: str) -> str:
    """Keys as TOML spells a dotted key (a key that is not bare is quoted)."""
    return ".".join(k if _BARE_KEY.match(k) else '"' + k.replace('"', '\\"') + '"' for k in keys)
