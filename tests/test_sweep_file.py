"""Reading sweep files and filling templates: what is refused, and what a job is fed.

Pure functions, no process: what these jobs then do is tested in test_sweep.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from xqueue import ConfigError
from xqueue.params import matches, parse_filters
from xqueue.sweep import Sweep


def one_group(**group: Any) -> dict[str, Any]:
    return {"slots": {"gpu": [0, 1]}, "section": [{"group": [group]}]}


def commands(sweep: Sweep) -> list[Any]:
    return [point.command()[0] for point in sweep.points()]


def test_grid_order_zip_and_interleaved_groups() -> None:
    sweep = Sweep.from_text(
        """
        [[section]]
        [[section.group]]
        name = "a"
        command = ["run", "{x}", "{y}", "{lr}/{bs}"]
        params = {x = [1, 2], y = ["p", "q"]}
        zip = {lr = [0.1, 0.2], bs = [32, 64]}
        [[section.group]]
        name = "b"
        command = "echo {z}"
        params.z = [true, false]
        """
    )
    names = [p.name for p in sweep.points()]
    assert names[:4] == [
        "a x=1 y=p lr=0.1 bs=32",
        "b z=true",
        "a x=1 y=p lr=0.2 bs=64",
        "b z=false",
    ]
    a = [p.command()[0] for p in sweep.points() if p.group.name == "a"]
    assert a == [
        ("run", str(x), y, lr_bs) for x in (1, 2) for y in "pq" for lr_bs in ("0.1/32", "0.2/64")
    ]
    b = next(p for p in sweep.points() if p.group.name == "b")
    assert b.command() == ('echo "$XQUEUE_PARAM_Z"', {"XQUEUE_PARAM_Z": "true"})


def test_fields_braces_and_slot_fields() -> None:
    sweep = Sweep.from_dict(
        one_group(
            command="awk '{{print}}' ${HOME} {a,b} {} {x} {gpu}",
            slots=["gpu"],
            params={"x": "it's"},
        )
    )
    assert commands(sweep) == [
        'awk \'{print}\' ${HOME} {a,b} {} "$XQUEUE_PARAM_X" "$XQUEUE_SLOT_GPU"'
    ]
    argv = Sweep.from_dict(
        one_group(command=["prog", "--x={x}", "--on=g{gpu}!", ""], slots="gpu", params={"x": "a b"})
    )
    assert commands(argv) == ["prog '--x=a b' --on=g\"$XQUEUE_SLOT_GPU\"'!' ''"]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (one_group(command="echo {y}", params={"x": 1}), "{y} names no parameter or slot axis"),
        (one_group(command="echo {x:.2f}", params={"x": 1}), "format spec"),
        (one_group(command="echo ${x}", params={"x": 1}), "shell variable, not the field"),
        (one_group(command="echo {gpu}"), "{gpu} names no parameter"),  # not asked for
        (one_group(command="echo", params={"x": []}), "empty list"),
        (one_group(command="echo {x}", params={"x": [1, 1, 2]}), "params.x lists 1 more than"),
        (one_group(command="echo {x}", params={"x": [1, "1"]}), "lists 1 more than once"),
        (one_group(command="echo {x}", params={"x": [True, "true"]}), "lists true more than"),
        (one_group(command="echo", zip={"a": [1], "b": [1, 2]}), "one length"),
        # A row twice ran its point twice, as a value twice in params did.
        (one_group(command="echo", zip={"a": [1, 2, 1], "b": [3, 4, 3]}), "row 3 repeats row 1"),
        (one_group(command="echo", zip={"a": [0.1, "0.1"], "b": [3, 3]}), "row 2 repeats row 1"),
        (one_group(command="echo", call="m:f"), "either a command or a call"),
        (one_group(params={"x": 1}), "either a command or a call"),
        (one_group(command="echo", slots=["cpu"]), "not in the [slots] table"),
        (one_group(command="echo", params={"gpu": 1}, slots="gpu"), "both a parameter and a slot"),
        (one_group(command="echo", params={"x": 1, "X": 2}), "ignoring case"),
        (one_group(command="echo", params={"a-b": 1}), "must be a word"),
        (one_group(command="echo {x}", params={"x": [[1, 2]]}), "cannot be written into a command"),
        (one_group(command="echo", params={"x": "a\0"}), "NUL"),
        (one_group(command="echo", colour="red"), "unknown key(s) ['colour']"),
        (one_group(command="echo", resources={"slots": "gpu"}), "not in resources"),
        (one_group(command="echo", resources={"memory": "lots"}), "invalid memory"),
        (
            one_group(command="echo", envs={"A=B": "1"}),
            "group 'group1' of section 'section1': invalid environment",
        ),
        (one_group(command="echo", envs={"XQUEUE_PARAM_X": "1"}, params={"x": 1}), "hold its"),
        (one_group(command="   "), "the command is empty"),
        ({"section": []}, "at least one [[section]]"),
        ({"section": [{"name": "s"}]}, "has no group"),
        ({"section": [{"group": [{"command": "a"}]}], "slot": {}}, "unknown key(s) ['slot']"),
        (
            {"section": [{"name": "s", "group": [{"command": "a"}]}] * 2},
            "same name: ['s']",
        ),
        ({"section": [{"group": [{"command": "a"}], "continue_on_failure": "yes"}]}, "true or"),
    ],
)
def test_what_a_sweep_file_may_not_say(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        Sweep.from_dict(data)
    assert words in str(err.value)


def test_errors_name_the_file_and_toml_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"sweep.toml is not valid TOML"):
        Sweep.from_text("[[section]\n", "sweep.toml")
    with pytest.raises(ConfigError, match=r"^sweep.toml: group 'g' of section 'train':"):
        Sweep.from_text(
            '[[section]]\nname = "train"\n[[section.group]]\nname = "g"\ncommand = "{nope}"\n',
            "sweep.toml",
        )


def test_param_filters_compare_as_the_recorded_type() -> None:
    params = {"decay": 0.1, "epoch": 10, "name": "a b", "on": True, "layers": [8, 8]}
    assert matches(params, parse_filters(["decay=0.1"]))
    assert matches(params, parse_filters(["decay=1e-1", "epoch=10.0"]))
    assert matches(params, parse_filters(["decay=0.2", "decay=0.1"]))  # one name: any value
    assert not matches(params, parse_filters(["decay=0.1", "epoch=20"]))  # all names
    assert matches(params, parse_filters(["name=a b", "on=true", "layers=[8, 8]"]))
    assert not matches(params, parse_filters(["name=a"]))
    assert not matches(params, parse_filters(["missing=1"]))
    assert not matches(None, parse_filters(["decay=0.1"]))
    # Integers beyond a float's 53 bits, as 64-bit seeds are: compared exactly.
    seeds = {"seed": 2**63 - 1}
    assert matches(seeds, parse_filters([f"seed={2**63 - 1}"]))
    assert not matches(seeds, parse_filters([f"seed={2**63 - 2}"]))
    assert matches({"seed": 2**53 + 1}, parse_filters([f"seed={2**53 + 1}"]))
    with pytest.raises(ConfigError, match="not NAME=VALUE"):
        parse_filters(["decay"])


def test_a_grid_too_big_to_run_is_refused_before_it_is_built() -> None:
    """Seven parameters of forty values (1.6e11 points) were listed in full first: the
    memory ran out (a MemoryError traceback under a limit, a swapping machine without)."""
    params = {f"p{i}": list(range(40)) for i in range(7)}
    with pytest.raises(
        ConfigError, match=r"^sweep.toml: group .* has 163,840,000,000 points .* may have at most"
    ):
        # Named with its file: it was said only once the points were listed, without.
        Sweep.from_text(sweep_text(params), "sweep.toml")


def sweep_text(params: dict[str, list[int]]) -> str:
    """A one-group sweep file of these integer parameters."""
    lines = "".join(f"params.{name} = {values}\n" for name, values in params.items())
    return f'[[section]]\n[[section.group]]\nname = "g"\ncommand = "echo"\n{lines}'


def test_a_sweep_its_controller_could_not_hold_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the per-group limit, a 1,000 x 1,000 grid grew the controller past 2.7 GB
    in its first minute: a sweep allowed up to 10 million points on a machine of any size
    could only end in the OOM killer. It is measured against the machine's memory."""
    from xqueue import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "_memory", lambda: 1 << 30)  # a 1 GiB machine
    grid = {"a": list(range(1000)), "b": list(range(1000))}
    with pytest.raises(ConfigError, match=r"^s.toml: the sweep has 1,000,000 points: .* 2.8 GiB"):
        Sweep.from_text(sweep_text(grid), "s.toml")
    small = Sweep.from_text(sweep_text({"a": list(range(300)), "b": list(range(300))}), "s")
    assert sum(1 for _ in small.points()) == 90_000  # 0.25 GiB: fits
