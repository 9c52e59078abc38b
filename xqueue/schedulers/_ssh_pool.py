"""Connections to one SSH server: multiplexed channels, session limits, reconnects.

This module is asyncio code (asyncssh runs on asyncio only); the scheduler calls it
through ``AsyncioBridge``. It knows nothing about jobs: it runs short shell scripts on a
server and reports what came back, or why the server could not be reached.

- One connection carries up to ``max_sessions`` channels at once (OpenSSH's MaxSessions
  defaults to 10; the 11th channel is refused with "open failed"). Beyond that another
  connection is opened, up to ``max_connections``; past that callers queue. A server
  whose real limit is lower than configured refuses a channel: that connection's limit
  is lowered to what it carried and the command retried elsewhere, so a wrong
  ``max_sessions`` costs a refused channel or two, not a failed job. A first refusal is
  tried again after a pause before anything is learnt: a loaded sshd may still count a
  session whose channel just closed, and its limit would be learnt one too low for good.
- Connecting is serialised per server and rate-limited by an exponential backoff. After
  ``reconnect_attempts`` failures in a row the server is marked *down*; it is probed
  again every ``down_retry`` seconds and comes back into rotation when a probe succeeds.
- A refused host key or login is not retried: it is a configuration problem.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import socket
import time
from typing import Any

import asyncssh

from .._suggest import did_you_mean_any
from ..errors import SchedulerOptionError
from ..options import seconds

log = logging.getLogger("xqueue.ssh")
# Seconds a refused channel waits before it is tried once more (``ServerPool.run``).
_SESSION_SETTLE = 0.1

_SERVER_KEYS = (
    "host",
    "port",
    "user",
    "keyfile",
    "known_hosts",
    "verify_host_keys",
    "max_sessions",
    "max_connections",
    "remote_workdir",
    "connect_timeout",
)
# Keys of xqute's server entries that have no meaning when speaking SSH in-process.
_IGNORED_KEYS = ("ctrl_persist", "ctrl_dir", "ssh")


def _check_file(where: str, what: str, path: str, hint: str = "") -> None:
    """A file option names a plain file: ``/dev/null`` (OpenSSH's idiom for no known
    hosts) exists, and was said not to."""
    if os.path.isfile(path):
        return
    if not os.path.exists(path):
        raise SchedulerOptionError(f"{where}: {what} {path!r} does not exist")
    raise SchedulerOptionError(f"{where}: {what} {path!r} is not a regular file{hint}")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """One entry of ``servers``: where to log in and how hard to load the connection."""

    name: str
    host: str
    port: int = 22
    user: str | None = None
    keyfile: tuple[str, ...] | None = None
    known_hosts: str | None = None
    verify_host_keys: bool = True
    max_sessions: int = 10
    max_connections: int = 4
    remote_workdir: str | None = None
    connect_timeout: float = 10.0

    @property
    def address(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}:{self.port}"

    @classmethod
    def parse(
        cls, scheduler: str, name: str, raw: Any, others: tuple[str, ...] = ()
    ) -> ServerConfig:
        """``others``: keys the caller reads itself (a server's capacity), accepted here."""
        where = f"{scheduler}: server {name!r}"
        if not isinstance(raw, dict):
            raise SchedulerOptionError(
                f"{where} must be a mapping like {{'host': ..., 'user': ..., 'keyfile': ...}}"
            )
        unknown = [k for k in raw if k not in (*_SERVER_KEYS, *_IGNORED_KEYS, *others)]
        if unknown:
            raise SchedulerOptionError(
                f"{where} does not accept {', '.join(map(repr, unknown))}"
                f"{did_you_mean_any(unknown, (*_SERVER_KEYS, *others))}; accepted: "
                f"{', '.join((*_SERVER_KEYS, *others))}"
                + (" (passwords are not supported: use a key)" if "password" in unknown else "")
            )
        for key in _IGNORED_KEYS:
            if key in raw:
                log.warning(
                    "%s: option %r has no effect (xqueue speaks SSH itself, over one "
                    "multiplexed connection)",
                    where,
                    key,
                )
        if not raw.get("host"):
            raise SchedulerOptionError(f"{where} needs a 'host'")
        kw: dict[str, Any] = {"name": name, "host": str(raw["host"])}
        for key, kind in (
            ("port", int),
            ("max_sessions", int),
            ("max_connections", int),
            ("connect_timeout", seconds),
        ):
            if key in raw:
                try:
                    kw[key] = kind(raw[key])
                    if kind is seconds and not 0 < kw[key] < math.inf:  # nan too
                        raise ValueError(raw[key])
                except (TypeError, ValueError, OverflowError):  # int() named no key
                    what = (
                        "a whole number"
                        if kind is int
                        else "a finite number of seconds > 0 (or with a unit: 90s, 5m)"
                    )
                    raise SchedulerOptionError(
                        f"{where}: {key!r} must be {what}, got {raw[key]!r}"
                    ) from None
        for key in ("user", "known_hosts", "remote_workdir"):
            if raw.get(key) is not None:
                kw[key] = str(raw[key])
        if "verify_host_keys" in raw:
            value = raw["verify_host_keys"]
            if isinstance(value, str):
                value = value.strip().lower() not in ("0", "false", "no", "off")
            kw["verify_host_keys"] = bool(value)
        keyfile = raw.get("keyfile")
        if keyfile:
            files = (keyfile,) if isinstance(keyfile, (str, os.PathLike)) else tuple(keyfile)
            kw["keyfile"] = tuple(os.path.expanduser(str(f)) for f in files)
            for f in kw["keyfile"]:
                _check_file(where, "keyfile", f)
        if kw.get("known_hosts"):
            kw["known_hosts"] = os.path.expanduser(kw["known_hosts"])
            no_check = "; to skip host key checks, set verify_host_keys false"
            _check_file(where, "known_hosts file", kw["known_hosts"], no_check)
        config = cls(**kw)
        if not 1 <= config.port <= 65535:
            raise SchedulerOptionError(f"{where}: port must be 1..65535, got {config.port}")
        if config.max_sessions < 1 or config.max_connections < 1:
            raise SchedulerOptionError(f"{where}: max_sessions and max_connections must be >= 1")
        if not config.verify_host_keys:
            log.warning(
                "%s (%s): host key verification is OFF (verify_host_keys=false); "
                "anyone on the network path can impersonate this server",
                where,
                config.address,
            )
        return config


@dataclasses.dataclass(frozen=True)
class ReconnectPolicy:
    attempts: int = 5
    backoff: float = 0.5
    max_delay: float = 10.0
    down_retry: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.backoff * 2 ** max(failures - 1, 0), self.max_delay))


class Unreachable(Exception):
    """The server could not be reached, or the connection dropped.

    ``maybe_started`` is True when the command was sent before the failure, so it may
    have run; False when it certainly did not (no channel was opened).
    """

    def __init__(self, message: str, *, maybe_started: bool = False) -> None:
        super().__init__(message)
        self.maybe_started = maybe_started


class Refused(Exception):
    """The server refused us for good (host key not trusted, login denied)."""


@dataclasses.dataclass(frozen=True)
class Result:
    exit_status: int
    stdout: str
    stderr: str


async def _communicate(process: Any, script: str) -> tuple[str, str]:
    """Send ``script`` on the process's stdin; what it wrote once it has ended.

    A remote command may end before the script is sent: a login shell that runs no
    command (nologin) prints why and exits at once. Its channel is then closed for
    sending, which is no lost connection: its exit status and output say why, as those
    of any script that fails do. (Without one, the connection went: the error stands.)
    """
    try:
        process.stdin.write(script)
        process.stdin.write_eof()
    except BrokenPipeError:
        await process.wait_closed()
        if process.exit_status is None and process.exit_signal is None:
            raise
    stdout, stderr = await process.communicate()
    return str(stdout), str(stderr)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):  # its errno is getaddrinfo's: strerror has no word
        return f"its name does not resolve ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    return str(exc) or type(exc).__name__


class _Conn:
    __slots__ = ("conn", "in_use", "limit")

    def __init__(self, conn: asyncssh.SSHClientConnection, limit: int) -> None:
        self.conn = conn
        self.in_use = 0
        self.limit = limit

    @property
    def closed(self) -> bool:
        return self.conn.is_closed()


class ServerPool:
    """Every connection to one server, and whether the server is up."""

    def __init__(self, config: ServerConfig, policy: ReconnectPolicy) -> None:
        self.config = config
        self.policy = policy
        self._conns: list[_Conn] = []
        # Every connection ever opened, dropped ones too, so close() waits for all of them.
        self._opened: list[asyncssh.SSHClientConnection] = []
        self._opening = False
        self._room: asyncio.Event | None = None
        self.failures = 0
        self.next_try = 0.0
        self.down = False
        self.down_since = 0.0
        self.last_error = ""

    @property
    def name(self) -> str:
        return self.config.name

    def available(self, now: float) -> bool:
        """Whether a new command may be sent now (connected, or a connect attempt is due)."""
        if any(not c.closed for c in self._conns):
            return True
        if self.down:
            return now >= self.down_since + self.policy.down_retry
        return now >= self.next_try

    # -- connecting ------------------------------------------------------------------
    def _connect_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        kw: dict[str, Any] = {
            "port": cfg.port,
            "keepalive_interval": 15,
            "keepalive_count_max": 3,
            # Never fall back to typing a password, and never prompt.
            "password": None,
            "kbdint_auth": False,
        }
        if cfg.user:
            kw["username"] = cfg.user
        if cfg.keyfile:
            kw["client_keys"] = list(cfg.keyfile)
        if not cfg.verify_host_keys:
            kw["known_hosts"] = None
        elif cfg.known_hosts:
            kw["known_hosts"] = cfg.known_hosts
        return kw

    async def _open_connection(self) -> asyncssh.SSHClientConnection:
        now = time.monotonic()
        where = f"server {self.name!r} ({self.config.address})"
        if self.down and now < self.down_since + self.policy.down_retry:
            raise Unreachable(f"{where} is down: {self.last_error}")
        if now < self.next_try:
            raise Unreachable(
                f"{where} is unreachable ({self.last_error}); next attempt in "
                f"{self.next_try - now:.1f}s"
            )
        try:
            kwargs = self._connect_kwargs()
            if isinstance(kwargs.get("known_hosts"), str):
                # Given a path, asyncssh reads the file during the handshake, on the event
                # loop: read it in a worker thread first (afresh for every connection, so
                # a key added after a refusal counts).
                kwargs["known_hosts"] = await asyncio.get_running_loop().run_in_executor(
                    None, asyncssh.read_known_hosts, kwargs["known_hosts"]
                )
            conn = await asyncio.wait_for(
                asyncssh.connect(self.config.host, **kwargs), self.config.connect_timeout
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            self._mark_down(f"host key not trusted: {_describe(exc)}")
            source = self.config.known_hosts or "~/.ssh/known_hosts"
            raise Refused(
                f"{where}: its host key is not in {source} ({_describe(exc)}); add it with "
                f"`ssh-keyscan -p {self.config.port} {self.config.host} >> {source}` after "
                "checking its fingerprint, or set known_hosts to a file that has it"
            ) from exc
        except asyncssh.KeyImportError as exc:  # a ValueError: not an asyncssh.Error
            self._mark_down(f"key not usable: {exc}")
            raise Refused(
                f"{where}: its 'keyfile' ({', '.join(self.config.keyfile or ())}) is not a usable "
                f"private key "
                f"({exc}); give an unencrypted private key (ssh-keygen -t ed25519 -N '')"
            ) from exc
        except asyncssh.PermissionDenied as exc:
            self._mark_down(f"login refused: {_describe(exc)}")
            raise Refused(
                f"{where}: login refused ({_describe(exc)}); check 'user' and 'keyfile' "
                "(only key authentication is used)"
            ) from exc
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            self._failed(_describe(exc))
            raise Unreachable(f"cannot connect to {where}: {_describe(exc)}") from exc
        if self.failures or self.down:
            log.warning("ssh: %s is reachable again", where)
        self.failures, self.down, self.last_error = 0, False, ""
        return conn

    def _failed(self, why: str) -> None:
        now = time.monotonic()
        self.failures += 1
        self.last_error = why
        self.next_try = now + self.policy.delay(self.failures)
        if self.down:
            self.down_since = now
        elif self.failures >= self.policy.attempts:
            self._mark_down(why)
        else:
            log.info(
                "ssh: server %r unreachable (%s), attempt %d of %d",
                self.name,
                why,
                self.failures,
                self.policy.attempts,
            )

    def _mark_down(self, why: str) -> None:
        self.last_error = why
        if not self.down:
            # A refusal (host key, login) comes at the first attempt: no count to give.
            after = f" after {self.failures} failed attempts" if self.failures > 1 else ""
            log.warning(
                "ssh: server %r (%s) is down%s: %s; taken out of rotation, probed again every %gs",
                self.name,
                self.config.address,
                after,
                why,
                self.policy.down_retry,
            )
        self.down, self.down_since = True, time.monotonic()

    def note_dropped(self, why: str) -> None:
        """A command lost its connection: the next connect goes through the backoff."""
        if self.failures == 0:
            self.last_error = why

    # -- channels ------------------------------------------------------------------------
    def _pick(self) -> _Conn | None:
        self._conns = [c for c in self._conns if not c.closed]
        free = [c for c in self._conns if c.in_use < c.limit]
        return min(free, key=lambda c: c.in_use) if free else None

    def _wake(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    async def _acquire(self) -> _Conn:
        while True:
            conn = self._pick()
            if conn is None and len(self._conns) < self.config.max_connections:
                if not self._opening:
                    self._opening = True
                    try:
                        opened = await self._open_connection()
                        self._opened.append(opened)
                        conn = _Conn(opened, self.config.max_sessions)
                    finally:
                        self._opening = False
                        self._wake()
                    self._conns.append(conn)
            if conn is not None:
                conn.in_use += 1
                return conn
            if self._room is None:
                self._room = asyncio.Event()
            await self._room.wait()

    def _release(self, conn: _Conn) -> None:
        conn.in_use -= 1
        self._wake()

    async def run(self, script: str, *, timeout: float) -> Result:
        """Run a POSIX sh script (sent on stdin, so the login shell never parses it)."""
        paused = pause = False
        for _ in range(self.config.max_connections * 2 + 3):
            if pause:  # after the channel was released, so no other caller counts it
                pause = False
                await asyncio.sleep(_SESSION_SETTLE)
            conn = await self._acquire()
            started = False
            try:
                process = await conn.conn.create_process("sh -s", encoding="utf-8")
                started = True
                stdout, stderr = await asyncio.wait_for(_communicate(process, script), timeout)
                status = process.exit_status
                return Result(-1 if status is None else status, str(stdout), str(stderr))
            except asyncssh.ChannelOpenError as exc:
                if not conn.closed and conn.in_use > 1 and not paused:
                    # A channel that just closed may hold its session on a loaded server
                    # for a moment longer: a refusal then says nothing of MaxSessions.
                    # Once, after a pause, it is tried again before anything is learnt.
                    paused = pause = True
                    continue
                if not conn.closed and conn.in_use > 1:
                    # Refused again: the server's MaxSessions is lower than we assumed.
                    conn.limit = conn.in_use - 1
                    log.info(
                        "ssh: server %r refused channel %d on a connection; using at most %d",
                        self.name,
                        conn.in_use,
                        conn.limit,
                    )
                    continue
                conn.conn.close()
                self.note_dropped(_describe(exc))
                continue
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
                conn.conn.close()
                self.note_dropped(_describe(exc))
                raise Unreachable(
                    f"lost the connection to server {self.name!r} ({self.config.address}): "
                    f"{_describe(exc)}",
                    maybe_started=started,
                ) from exc
            finally:
                self._release(conn)
        raise Unreachable(f"server {self.name!r} refused every channel we opened")

    async def close(self) -> None:
        conns, self._conns, self._opened = self._opened, [], []
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()
