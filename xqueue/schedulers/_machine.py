"""What a machine offers its jobs (CPUs, memory, GPU ids), measured or given as options.

Measured without privileges, and blocking (files, one short command): call ``measure``
in a worker thread. What cannot be measured degrades, never fails:

- CPUs: those this process may run on (``os.sched_getaffinity``), not the machine's
  count, so a ``taskset`` or a container's cpuset is respected.
- Memory: ``MemTotal`` of /proc/meminfo, or the cgroup's limit when lower (a container
  or a systemd slice sees the host's MemTotal): v2 ``memory.max`` and v1
  ``memory.limit_in_bytes`` of this process's cgroup and its ancestors.
- GPUs: the ids of ``CUDA_VISIBLE_DEVICES`` when the controller was given one (those
  are the devices its jobs may share out), else the indices ``nvidia-smi -L`` lists,
  else the ``/dev/nvidia<N>`` device files; none found is no GPU.

An SSH server is measured the same way by ``PROBE`` (``nproc``, MemTotal, nvidia-smi or
/dev), read back by ``parse_probe``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

from ..capacity import GPU_ENV, Capacity
from ..errors import ConfigError, SchedulerOptionError
from ..resources import parse_memory

_UNLIMITED = 1 << 60  # cgroup v1 spells "no limit" as a huge number
_NVIDIA_DEV = re.compile(r"^nvidia(\d+)$")
_SMI_LINE = re.compile(r"^GPU (\d+):")


def measure(want_cpus: bool = True, want_memory: bool = True, want_gpus: bool = True) -> Capacity:
    """This machine as this process sees it (blocking). A resource not wanted is None."""
    return Capacity(
        cpus=len(os.sched_getaffinity(0)) if want_cpus else None,
        memory_mb=memory_mb() if want_memory else None,
        gpus=gpu_ids() if want_gpus else None,
    )


def memory_mb() -> int | None:
    total = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) // 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_limit()
    if limit is not None:
        limit //= 1024 * 1024
        total = limit if total is None else min(total, limit)
    return total


def _cgroup_limit() -> int | None:
    """The lowest memory limit (bytes) on this process's cgroup and its ancestors."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    found: list[int] = []
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers == "":  # v2: one unified hierarchy
            found += _limits("/sys/fs/cgroup", path, "memory.max")
        elif "memory" in controllers.split(","):
            found += _limits("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
    limits = [n for n in found if 0 < n < _UNLIMITED]
    return min(limits) if limits else None


def _limits(root: str, path: str, name: str) -> list[int]:
    found = []
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        try:
            with open(os.path.join(root, *parts[:depth], name), encoding="ascii") as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():
            found.append(int(text))
    return found


def gpu_ids() -> tuple[str, ...]:
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return visible_devices(given)
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0:
            return tuple(m[1] for line in out.stdout.splitlines() if (m := _SMI_LINE.match(line)))
    try:
        names = os.listdir("/dev")
    except OSError:
        return ()
    found = sorted(int(m[1]) for name in names if (m := _NVIDIA_DEV.match(name)))
    return tuple(str(n) for n in found)


def visible_devices(value: str) -> tuple[str, ...]:
    """The ids of a CUDA_VISIBLE_DEVICES value; CUDA stops at the first invalid one
    (``-1`` hides every device), and so does this. An id given twice is one device:
    counted twice, one job was given it as two GPUs, and two jobs shared it."""
    ids: dict[str, None] = {}
    for part in value.split(","):
        part = part.strip()
        if not part or part.startswith("-") or part == "NoDevFiles":
            break
        ids[part] = None
    return tuple(ids)


# -- SSH servers ---------------------------------------------------------------------------
PROBE = r"""
echo "cpus $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)"
echo "memory_kb $(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)"
if command -v nvidia-smi >/dev/null 2>&1; then
  ids=$(nvidia-smi -L 2>/dev/null | sed -n 's/^GPU \([0-9][0-9]*\):.*/\1/p')
else
  ids=$(ls /dev 2>/dev/null | sed -n 's/^nvidia\([0-9][0-9]*\)$/\1/p' | sort -n)
fi
echo "gpus $(echo $ids | tr ' ' ',')"
"""


def parse_probe(text: str) -> Capacity:
    """What ``PROBE`` printed; a line missing or garbled leaves that resource uncounted."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        values[key] = value.strip()
    cpus = values.get("cpus", "")
    memory = values.get("memory_kb", "")
    gpus = values.get("gpus")
    return Capacity(
        cpus=int(cpus) if cpus.isdigit() and int(cpus) > 0 else None,
        memory_mb=int(memory) // 1024 if memory.isdigit() and int(memory) > 0 else None,
        gpus=None if gpus is None else tuple(g for g in gpus.split(",") if g.isdigit()),
    )


# -- options ------------------------------------------------------------------------------
def given(where: str, cpus: Any, memory: Any, gpus: Any, gpu_env: Any) -> Capacity:
    """The capacity set in options (``cpus``, ``memory``, ``gpus``: a count or a list of
    ids); what is left out is None, to be measured."""
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise SchedulerOptionError(f"{where}: cpus must be an integer >= 1, got {cpus!r}")
    try:
        memory_mb = None if memory is None else parse_memory(memory)
    except ConfigError as exc:
        raise SchedulerOptionError(f"{where}: {exc}") from None
    return Capacity(cpus, memory_mb, _gpus(where, gpus), _variables(where, gpu_env))


def _gpus(where: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # from the command line: "2", "0,1" or "[0, 1]"
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else int(text)
        except ValueError:
            if _float(text):  # "1.5", "nan", "1e3": a count mistyped, not a device's id
                raise SchedulerOptionError(
                    f"{where}: gpus must be a whole count or device ids, got {text!r}"
                ) from None
            value = [p.strip() for p in text.split(",") if p.strip()]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return tuple(str(i) for i in range(value))
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, str)) and not isinstance(v, bool) and str(v).strip() for v in value
    ):
        ids = tuple(str(v).strip() for v in value)
        if len(set(ids)) == len(ids) and not any("," in i for i in ids):
            return ids
    raise SchedulerOptionError(
        f"{where}: gpus must be a count or a list of distinct device ids, got {value!r}"
    )


def _float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _variables(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return GPU_ENV
    if isinstance(value, str):
        value = [p.strip() for p in value.split(",") if p.strip()]
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) for v in value
    ):
        return tuple(value)
    raise SchedulerOptionError(f"{where}: gpu_env must be a list of variable names, got {value!r}")


def merged(options: Capacity, measured: Capacity) -> Capacity:
    """What the options give, and what was measured for the rest."""
    return Capacity(
        options.cpus if options.cpus is not None else measured.cpus,
        options.memory_mb if options.memory_mb is not None else measured.memory_mb,
        options.gpus if options.gpus is not None else measured.gpus,
        options.gpu_env,
    )
