"""exits.jsonl, where the local shepherd appends each job's return code: read back for
jobs whose controller was gone when they ended (``WorkdirReader.exit_codes``).

The file of a million-job run is about 100 MB, and every adopted job asks for its code
when it ends: only its newest lines may be read. The rules a line must meet (written
after the attempt's journaled submission, by its pid) are checked here against an
oracle that reads every line.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from xqueue.records import EXITS_FILE, WorkdirReader


def line(folder: str, attempt: int, rc: int, pid: int, when: float) -> str:
    # The shepherd's layout: "dir" last, which the reader's quick filter relies on.
    record = {"rc": rc, "jid": f"{pid}@{when - 1:.2f}", "time": when, "attempt": attempt}
    return json.dumps({**record, "dir": folder}) + "\n"


def oracle(path: Path, wanted: dict[tuple[str, int], tuple[str | None, float]]) -> dict:
    found = {}
    for text in path.read_text().splitlines():
        try:
            value = json.loads(text)
        except ValueError:
            continue  # torn by a crash
        key = (value["dir"], value["attempt"])
        if key not in wanted:
            continue
        pid, since = wanted[key]
        if value["time"] >= since and (not pid or value["jid"].split("@")[0] == pid):
            found[key] = value["rc"]
    return found


@pytest.mark.parametrize("seed", range(5))
def test_the_newest_lines_give_what_every_line_gives(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    lines, now = [], 1_800_000_000.0
    for _ in range(20_000):  # about 2 MB: many of the reader's blocks
        now += rnd.random() * 0.05
        folder = f"{rnd.randrange(3000)}-job"
        lines.append(line(folder, rnd.randint(1, 3), rnd.randrange(256), rnd.randrange(9999), now))
        if rnd.random() < 0.001:
            lines.append('{"rc": 1, "jid": "12@3", "ti')  # a torn line, then the next
            lines.append("\n")
    path = tmp_path / EXITS_FILE
    path.write_text("".join(lines))
    records = [json.loads(x) for x in lines if x.startswith("{") and x.endswith("}\n")]
    picked = rnd.sample(records, 200)
    wanted: dict[tuple[str, int], tuple[str | None, float]] = {}
    for r in picked:  # since: just before, just after, or long before the line's time
        since = r["time"] + rnd.choice([-0.001, 0.001, -5000.0])
        pid = rnd.choice([r["jid"].split("@")[0], None, "424242"])
        wanted[r["dir"], r["attempt"]] = (pid, since)
    got = WorkdirReader(tmp_path).exit_codes(wanted)
    assert got == oracle(path, wanted)
    assert len(got) > 20  # the draw found something, so the comparison says something


def test_only_the_newest_lines_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, recent = 1_700_000_000.0, 1_800_000_000.0
    with (tmp_path / EXITS_FILE).open("w") as fh:
        for i in range(300_000):  # about 30 MB of an earlier run's exits
            fh.write(line(f"{i}-old", 1, 0, 1000 + i % 5000, old + i * 0.001))
        fh.write(line("7-adopted", 2, 3, 4321, recent + 1))
    read: list[int] = []  # bytes each read returned, however the file is read
    real_read, real_pread = os.read, os.pread

    def counted(data: bytes) -> bytes:
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "read", lambda fd, n: counted(real_read(fd, n)))
    monkeypatch.setattr(os, "pread", lambda fd, n, at: counted(real_pread(fd, n, at)))
    got = WorkdirReader(tmp_path).exit_codes({("7-adopted", 2): ("4321", recent)})
    assert got == {("7-adopted", 2): 3}
    assert sum(read) < 1 << 20, f"read {sum(read):,} bytes of a 30 MB file"
    # Asked about an old attempt, it reads back as far as that attempt's lines.
    got = WorkdirReader(tmp_path).exit_codes({("5-old", 1): (None, old)})
    assert got == {("5-old", 1): 0}
