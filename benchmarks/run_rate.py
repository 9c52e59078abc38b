"""One whole run of N ``true`` jobs through the API, for timing as a whole process.

    python benchmarks/run_rate.py [N] [FORKS] [DIR]

Time it from outside against the same script run by another checkout's interpreter,
alternating the two (hyperfine, or /usr/bin/time in a loop), to compare two versions of
xqueue run by run on a noisy machine. Hook plugins installed in the environment are not
loaded, so only the engine and the local scheduler are measured.
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ["XQUEUE_DISABLE_PLUGIN_AUTOLOAD"] = "1"

import anyio

from xqueue import Xqueue


async def main(n: int, forks: int, where: str) -> None:
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        q = Xqueue(forks=forks, workdir=tmp, handle_signals=False)
        for _ in range(n):
            await q.feed(["true"])
        await q.run_until_complete()


if __name__ == "__main__":
    args = sys.argv[1:]
    anyio.run(
        main,
        int(args[0]) if args else 2000,
        int(args[1]) if len(args) > 1 else 16,
        args[2] if len(args) > 2 else "/dev/shm",
    )
