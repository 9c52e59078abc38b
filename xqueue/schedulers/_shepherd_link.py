"""The controller's end of a local run's shepherd process (see ``_shepherd.py``).

Requests go out as frames, a batch to a write; replies come back as lines, read by one
task (``serve``, run by the engine for the whole run) that hands each to the request it
answers. A request is a ``Ticket``: awaited once for the start,
then, by the job's waiter, for the exit.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.lowlevel

from ..errors import SchedulerError
from ._proc import wait_exit

SCRIPT = str(Path(__file__).with_name("_shepherd.py"))
SHEPHERD_NAME = b"_shepherd.py"  # in a shepherd's command line: how /proc tells one
# The shepherd's BOOT_CLOCK: job starts in seconds since boot (``local._parse_jid``).
BOOT_CLOCK = "boot-clock"
# A shepherd that reads nothing of what is sent to it for this long is taken for gone.
_SEND_WAIT = 30.0


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass
class Request:
    """One job for the shepherd: what to run, where, and the paths of its output files
    (the shepherd creates them, with the workdir's checks against planted files)."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None
    exit_tail: str  # the end of the job's exits.jsonl line (see _shepherd.py)
    stdout: str
    stderr: str

    def frame(self, key: int) -> bytes:
        fields = [str(key), self.cwd or "", self.exit_tail, self.stdout, self.stderr]
        fields += [str(len(self.argv)), *self.argv]
        fields += [f"{name}={value}" for name, value in self.env.items()]
        body = b"\0".join(map(_encode, fields))
        return len(body).to_bytes(4, "big") + body


class Flag:
    """A flag set once, whose event is made only if someone waits before it is set: a
    job's start is usually answered before it is awaited, and its end watched rather
    than awaited (``Ticket.watcher``); two events a job showed in a run's profile."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Return at once if set (without yielding to other tasks, unlike an event)."""
        if self._set:
            # No yield, but a cancelled caller still raises here, as at any await
            # (a cancelled submission's tickets go to ``_unanswered``).
            await anyio.lowlevel.checkpoint_if_cancelled()
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


class Ticket:
    """One job handed to the shepherd: its pid once started, its return code once ended."""

    __slots__ = ("ended", "error", "pid", "rc", "refused", "start", "started", "watcher")

    def __init__(self) -> None:
        self.pid = 0
        self.start = ""  # as the job's id gives it (``local._jid``)
        self.error: str | None = None
        # (code, "stdout" or "stderr"): the shepherd refused that output file.
        self.refused: tuple[int, str] | None = None
        self.rc: int | None = None
        self.started = Flag()
        self.ended = Flag()
        # Called with the return code once the job has ended (None: its shepherd is gone,
        # and how it ended must be found out another way), if someone watches for that.
        self.watcher: Callable[[int | None], None] | None = None

    def end(self, rc: int | None) -> None:
        self.rc = rc
        self.ended.set()
        watcher, self.watcher = self.watcher, None  # once: an X read after _lost is not news
        if watcher is not None:
            watcher(rc)


class ShepherdLink:
    """A running shepherd, and the tickets it has not answered yet."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self._tickets: dict[int, Ticket] = {}
        self._next = 0
        self._send_lock = anyio.Lock()
        self._gone: str | None = None
        self._buf = b""  # a line not yet whole (kept across a cancelled serve())

    @staticmethod
    def launch(
        env: dict[str, str], exits: int, boot: str = "", offset: float = 0.0
    ) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """Start a shepherd that appends the exits it reaps to descriptor ``exits``, and
        names a job's start in seconds since boot, ``boot`` (``_proc.boot_id``) the boot,
        less ``offset`` (``_proc.boot_offset``: the machine's boot clock). Blocking (it
        forks): a worker thread; the link itself is made on the loop, with its lock."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Its own session: Ctrl-C on the controller's terminal, or a signal to the
            # controller's process group, does not reach it. Neither of the controller's
            # output streams: a pipe (`xqueue run 2>&1 | tee log`) stayed open while the
            # shepherd outlived its controller, and the pipeline waited for the last job.
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", SCRIPT, str(exits), BOOT_CLOCK, boot, repr(offset)],
                stdin=theirs.fileno(),
                pass_fds=(exits,),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return proc, ours

    async def spawn(self, requests: Sequence[Request]) -> list[Ticket]:
        """Hand jobs to the shepherd; the caller closes their descriptors once this
        returns. Each ticket's ``started`` is set when the shepherd answers."""
        tickets: list[Ticket] = []
        async with self._send_lock:
            self._check()
            frames = []
            for request in requests:
                key = self._next
                self._next += 1
                ticket = self._tickets[key] = Ticket()
                tickets.append(ticket)
                frames.append(request.frame(key))
            # Whole, even for a cancelled run: a frame cut short would garble every
            # later one, and the jobs of the frames sent start whatever happens here.
            with anyio.CancelScope(shield=True):
                await self._send(b"".join(frames))
        return tickets

    async def stopping(self, pids: Sequence[int]) -> None:
        """Tell the shepherd these jobs are being stopped, before they are signalled: what
        they leave in their groups is then the stop's to end, after its grace, and not
        SIGKILLed the moment their first process exits (a leader that traps SIGTERM and
        exits would cut its children's grace short). A frame ``K`` and a pid."""
        if not pids or self.failure() is not None:
            return
        frames = [b"K\0" + str(pid).encode() for pid in pids]
        async with self._send_lock:
            with anyio.CancelScope(shield=True):  # whole, as ``spawn``'s
                await self._send(b"".join(len(f).to_bytes(4, "big") + f for f in frames))

    async def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                # It reads as it starts jobs (a batch of thousands takes seconds, more
                # on a slow disk): only no progress at all for this long means it is gone.
                with anyio.move_on_after(_SEND_WAIT) as waiting:
                    await anyio.wait_writable(self.sock)
                if waiting.cancelled_caught:
                    self._lost(f"it took nothing sent to it for {_SEND_WAIT:.0f} s")
                    self._check()
            except OSError as exc:
                self._lost(f"writing to it failed: {exc}")
                self._check()

    async def serve(self) -> None:
        """Read the shepherd's answers and wake whoever waits on them, for as long as the
        run lasts. Cancelled at the end of the run's loop; restartable. Raises when the
        shepherd is gone: no job can be started or heard of any more."""
        while self._gone is None:
            await anyio.wait_readable(self.sock)
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._lost(f"reading from it failed: {exc}")
                break
            if not data:
                self._lost("it exited")
                break
            *lines, self._buf = (self._buf + data).split(b"\n")
            for line in lines:
                self._answer(line)
        raise SchedulerError(f"{self._gone}; the run stops")

    def _answer(self, line: bytes) -> None:
        kind, key_text, rest = line.decode().split(" ", 2)
        key = int(key_text)
        ticket = self._tickets.get(key)
        if ticket is None:
            return
        if kind == "S":
            pid, start = rest.split()
            ticket.pid, ticket.start = int(pid), start
            ticket.started.set()
        elif kind in ("E", "F"):
            if kind == "E":
                ticket.error = rest
            else:
                code, stream = rest.split(" ", 1)
                ticket.refused = (int(code), stream)
            del self._tickets[key]
            ticket.started.set()
            ticket.ended.set()
        else:
            del self._tickets[key]
            ticket.end(int(rest))

    def _lost(self, why: str) -> None:
        if self._gone is not None:
            return
        self._gone = f"the local run's shepherd process (pid {self.proc.pid}) is gone: {why}"
        for ticket in self._tickets.values():
            ticket.started.set()
            ticket.end(None)

    def _check(self) -> None:
        if self._gone is not None:
            raise SchedulerError(self._gone)

    def failure(self) -> str | None:
        """Why the link broke, if it did."""
        return self._gone

    async def close(self, wait: float) -> bool:
        """End the request stream; wait up to ``wait`` s for the shepherd to exit, which
        it does once its last job has ended. True if it exited and was reaped."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.close()
        if self.proc.poll() is None and wait > 0:
            with anyio.move_on_after(wait):
                await wait_exit(self.proc.pid)
        return self.proc.poll() is not None
