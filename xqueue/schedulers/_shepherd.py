"""The shepherd: one process per local run that starts the run's jobs and reaps them.

It runs as a script of its own (``python -I -S _shepherd.py``: standard library only, no
site packages, so it starts in milliseconds) and is never imported by xqueue. Three jobs:

- A job's exit status outlives its controller. The shepherd appends every job's return
  code to the workdir's ``exits.jsonl`` (its descriptor is the script's argument) when it
  reaps it, before it tells the controller, and lives until its last job has ended even
  when the controller is gone (SIGKILLed, say), as HTCondor's starter and Slurm's
  slurmstepd outlive their schedulers. It ignores the signals a terminal or a
  ``kill`` of the controller sends, and sits in a session of its own.
- A job's processes end with it. Each job leads a session and process group of its own;
  when its first process ends, whatever it left in the group is SIGKILLed, unless the
  controller is stopping the job (it said so first; the stop gives the group its grace)
  or, once the controller is gone, a stop's signal ended it.
- Starting processes costs the controller nothing but a message. Forking, and creating
  each job's output files (on a disk, creating a file costs far more than appending a
  line), are the bulk of a local run's cost; done here they run on another core, from a
  process far smaller than the controller, so each fork is cheaper too.

Protocol, on a Unix stream socket at descriptor 0:

- controller to shepherd: frames of a 4-byte big-endian length and NUL-separated fields
  (job arguments and environment values cannot hold a NUL: feed() refuses them); a
  frame ``K, pid`` says the controller is about to stop that job; any other is a job:
  ``key, cwd ("" for none), exit line tail, stdout path, stderr path, argument count,
  arguments..., NAME=value...`` (the tail ends the job's ``exits.jsonl`` line: ``,
  "attempt": n, "dir": "folder"}``), many frames to a write.
- shepherd to controller: lines ``S key pid start`` (started; ``start`` is ``b``, the
  seconds since boot and ``~`` with the boot's id when the controller asks for it with
  the second argument ``boot-clock`` (the third is the boot's id, the fourth what its
  time namespace adds to the boot clock), else seconds since the
  epoch: a controller of an earlier version, in a process that imported xqueue before
  it was upgraded, reads no other), ``E key
  message`` (could not start), ``F key code stream`` (its stdout or stderr file was
  refused: ``code`` is an errno, or -1 for a file with a second hard link, -2 for one
  that is not a plain file; the controller words the error) and ``X key rc`` (ended;
  ``128 + signal`` for a job a signal ended, as a shell reports it).

Output files are opened as the controller's ``workdir.open_plain`` does, refusing what
someone may have planted at the name: never through a link (``O_NOFOLLOW``), never a
FIFO or device, never a file with a second hard link; emptied only once it passed.

End of the controller's stream: start nothing more, reap the rest, exit.

Only modules that load in microseconds are imported (no json, no subprocess, not even
``socket`` or ``signal``, whose enums cost more than the rest of the start: ``_socket``
and ``_signal`` are their C halves): a run waits for this.
"""

from __future__ import annotations

import _socket
import os
import select
import stat
import sys
import time

TYPE_CHECKING = False  # typing's own costs a start more than all of the above
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # signal's C half (see above): the same names, as ints

BOOT_CLOCK = "boot-clock"  # the argument that asks for starts since boot (then the boot)

# What a job starts with whatever the shepherd itself does with these signals: the
# default action (Python ignores SIGPIPE and SIGXFSZ; the shepherd ignores the rest).
_DEFAULT = {
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGCHLD,
}
_INT = 4
_OUTPUT = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_HARD_LINK, _NOT_PLAIN = -1, -2


class Refused(Exception):
    def __init__(self, code: int, stream: str) -> None:
        self.code, self.stream = code, stream


def _open_output(path: bytes, stream: str) -> int:
    try:
        fd = os.open(path, _OUTPUT, 0o644)
    except OSError as exc:
        raise Refused(exc.errno or 0, stream) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(_NOT_PLAIN, stream)
        if info.st_nlink > 1:
            raise Refused(_HARD_LINK, stream)
        if info.st_size:
            os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
    except OSError as exc:
        os.close(fd)
        raise Refused(exc.errno or 0, stream) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _decode(field: bytes) -> str:
    return field.decode("utf-8", "surrogateescape")


class Shepherd:
    def __init__(
        self,
        sock: _socket.socket,
        exits: int,
        boot_clock: bool = False,
        boot: str = "",
        offset: float = 0.0,
    ) -> None:
        self.sock = sock
        self.exits = exits  # exits.jsonl, opened O_APPEND by the controller
        self.boot_clock = boot_clock
        # A start since boot names a process of this boot only: after a reboot another
        # process may have the same pid and start (``local._parse_jid``).
        self.boot = f"~{boot}" if boot else ""
        self.offset = offset  # the machine's boot clock is this far behind this namespace's
        self.lines: list[str] = []
        self.connected = True
        self.buf = bytearray()
        self.children: dict[int, tuple[str, str, str]] = {}  # pid -> (key, start, tail)
        self.stopping: set[int] = set()  # jobs the controller is stopping (``K`` frames)
        self.out: list[str] = []
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.environ = dict(os.environb)

    def receive(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.connected = False
            return
        self.buf += data
        while len(self.buf) >= _INT:
            size = int.from_bytes(self.buf[:_INT], "big")
            if len(self.buf) < _INT + size:
                break
            fields = bytes(self.buf[_INT : _INT + size]).split(b"\0")
            del self.buf[: _INT + size]
            if fields[0] == b"K":
                self.stopping.add(int(fields[1]))
            else:
                self.spawn(fields)

    def spawn(self, fields: list[bytes]) -> None:
        # Paths, arguments and variables stay bytes, as the system calls take them: a
        # job's fifty-odd strings decoded here were encoded again by the spawn.
        key, cwd, tail = _decode(fields[0]), fields[1], _decode(fields[2])
        try:
            out = _open_output(fields[3], "stdout")
            try:
                err = _open_output(fields[4], "stderr")
            except BaseException:
                os.close(out)
                raise
        except Refused as refused:
            self.out.append(f"F {key} {refused.code} {refused.stream}")
            return
        try:
            self.start(key, cwd, tail, fields, out, err)
        finally:
            os.close(out)
            os.close(err)

    def start(
        self, key: str, cwd: bytes, tail: str, fields: list[bytes], out: int, err: int
    ) -> None:
        nargs = int(fields[5])
        argv = fields[6 : 6 + nargs]
        env = self.environ.copy()
        for item in fields[6 + nargs :]:
            name, _, value = item.partition(b"=")
            env[name] = value
        # Taken before the spawn, which returns only once the child has exec'd (seconds,
        # on a loaded machine): a lookup compares it with the start /proc gives the
        # process, and took a job that had run on for another process. The clock is
        # /proc's own (since boot), so a step of the wall clock cannot part the two.
        if self.boot_clock:
            since = time.clock_gettime(time.CLOCK_BOOTTIME) - self.offset
            start = f"b{since:.2f}{self.boot}"
        else:
            start = f"{time.time():.2f}"
        try:
            pid = (
                self._fork_exec(argv, env, cwd, out, err)
                if cwd
                else self._spawn(argv, env, out, err)
            )
        except OSError as exc:
            message = f"{exc.strerror or exc}".replace("\n", " ")
            self.out.append(f"E {key} {message}")
            return
        self.children[pid] = (key, start, tail)
        self.out.append(f"S {key} {pid} {start}")

    def _spawn(self, argv: list[bytes], env: dict[bytes, bytes], out: int, err: int) -> int:
        return os.posix_spawnp(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, self.devnull, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, err, 2),
            ],
            setsid=True,
            setsigdef=_DEFAULT,
        )

    def _fork_exec(
        self, argv: list[bytes], env: dict[bytes, bytes], cwd: bytes, out: int, err: int
    ) -> int:
        """posix_spawn cannot change directory (before Python 3.13's chdir action)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits
            step = b""  # b"d" while entering the working directory: named apart
            try:
                os.setsid()
                for sig in _DEFAULT:
                    signal.signal(sig, signal.SIG_DFL)
                step = b"d"
                os.chdir(cwd)
                step = b""
                os.dup2(self.devnull, 0)
                os.dup2(out, 1)
                os.dup2(err, 2)
                os.execvpe(argv[0], argv, env)
            except OSError as exc:
                os.write(w, step + str(exc.errno).encode())
            finally:
                os._exit(127)
        os.close(w)
        try:
            failed = os.read(r, 64)
        finally:
            os.close(r)
        if failed:
            os.waitpid(pid, 0)
            code = int(failed.lstrip(b"d"))
            if failed.startswith(b"d"):  # not the program's fault: say which folder
                where = repr(_decode(cwd))
                raise OSError(
                    code, f"cannot enter its working directory {where}: {os.strerror(code)}"
                )
            raise OSError(code, os.strerror(code))
        return pid

    def reap(self) -> None:
        while self.children:
            try:  # which child ended, left unreaped: its pid cannot be reused meanwhile
                ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if ended is None:
                return
            pid = ended.si_pid
            if pid in self.children and self._ends_group(pid, ended):
                _end_group(pid)
            self.stopping.discard(pid)
            _, status = os.waitpid(pid, 0)
            entry = self.children.pop(pid, None)
            if entry is None:
                continue
            key, start, tail = entry
            rc = os.waitstatus_to_exitcode(status)
            rc = 128 - rc if rc < 0 else rc
            now = time.time()
            self.lines.append(f'{{"rc": {rc}, "jid": "{pid}@{start}", "time": {now:.6f}{tail}')
            self.out.append(f"X {key} {rc}")

    def _ends_group(self, pid: int, ended: os.waitid_result) -> bool:
        """Whether the rest of an ended job's group is to be SIGKILLed now: not if the
        controller is stopping the job (its stop gives the group its grace); with no
        controller, not if a stop's signal ended it (a later controller may be stopping
        it, with no way to say so). A notice sent just before the signal is read first."""
        if self.connected and _readable(self.sock):
            self.receive()
        if pid in self.stopping:
            return False
        return self.connected or not _stopped(ended)

    def flush(self) -> None:
        """Record the exits first, in one write, then tell the controller: a controller
        that hears of an exit can count on the record being there already."""
        if self.lines:
            view = memoryview(("\n".join(self.lines) + "\n").encode())
            self.lines.clear()
            try:
                while view:
                    view = view[os.write(self.exits, view) :]
            except OSError:
                pass  # a full disk: the controller still hears the codes below
        if not self.out:
            return
        data = ("\n".join(self.out) + "\n").encode()
        self.out.clear()
        if self.connected:
            try:
                self.sock.sendall(data)
            except OSError:  # the controller is gone; exits.jsonl keeps the codes
                self.connected = False


# The signals a stop sends (xqueue's kill, a terminal's Ctrl-C or hangup): their sender
# ends the rest of the group in its own time, after a grace the rest may need.
_STOPS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def _readable(sock: _socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _stopped(ended: os.waitid_result) -> bool:
    return ended.si_code in (os.CLD_KILLED, os.CLD_DUMPED) and ended.si_status in _STOPS


def _end_group(pid: int) -> None:
    """SIGKILL what a job that ended left in its process group (``cmd &``), as Slurm ends
    a step's processes when its script exits: otherwise it runs on untracked, writing
    into the job's folder while a later attempt runs. Called before the job's first
    process is reaped, while the group's id is still the job's and cannot name another
    process's group. A process that left the group (``setsid``) is no longer the job's."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:  # nothing left in the group
        pass


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    boot_clock = sys.argv[2:3] == [BOOT_CLOCK]
    boot = sys.argv[3] if boot_clock and len(sys.argv) > 3 else ""
    offset = float(sys.argv[4]) if boot_clock and len(sys.argv) > 4 else 0.0
    shepherd = Shepherd(_socket.socket(fileno=0), int(sys.argv[1]), boot_clock, boot, offset)
    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while shepherd.connected or shepherd.children:
        try:
            events = poller.poll()
        except InterruptedError:  # pragma: no cover - Python retries poll() itself
            continue
        for fd, _ in events:
            if fd == 0:
                shepherd.receive()
                if not shepherd.connected:
                    poller.unregister(0)
            else:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
        shepherd.reap()
        shepherd.flush()
    sys.exit(0)


if __name__ == "__main__":
    main()
