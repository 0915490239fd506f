"""`capguard simulate` as a user (or another tool) calls it."""

from __future__ import annotations

import json
import pathlib

import pytest
from click import testing

from capguard import cli

KEYS = {
    "min_serving_ratio", "floor_ratio", "minutes_below_floor", "max_engines_out_of_service",
    "disruption_budget", "floor_breaking_actions", "actions_executed", "actions_refused",
    "actions_expired", "stale_actions_executed", "refused_batches", "converge_seconds",
    "unserved_demand_share", "per_model", "scenario", "mode", "seed",
}  # fmt: skip


def simulate(*args: str) -> testing.Result:
    return testing.CliRunner().invoke(cli.main, ["simulate", *args])


def test_both_modes_print_one_json_object_keyed_by_mode() -> None:
    result = simulate("--scenario", "flapping-breaker", "--mode", "both", "--seed", "3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"naive", "guarded"}
    for mode, found in report.items():
        assert set(found) >= KEYS
        assert (found["mode"], found["seed"], found["scenario"]) == (mode, 3, "flapping-breaker")
        assert set(found["per_model"]) == {
            "llama-70b", "mixtral-8x7b", "qwen-72b", "gemma-27b",
            "mistral-7b", "phi-3", "deepseek-v2", "command-r",
        }  # fmt: skip


def test_one_mode_prints_its_summary_alone() -> None:
    result = simulate("--mode", "guarded", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["mode"] == "guarded"


def test_the_same_seed_prints_the_same_json() -> None:
    args = ("--scenario", "failures-during-pause", "--seed", "7", "--json")
    assert simulate(*args).stdout == simulate(*args).stdout


def test_without_json_a_table_shows_both_modes_side_by_side() -> None:
    result = simulate("--scenario", "thundering-scale")
    assert result.exit_code == 0
    assert "naive" in result.stdout and "guarded" in result.stdout
    assert "most engines out at once" in result.stdout


def test_plot_writes_a_png(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "timeline.png"
    result = simulate("--scenario", "flapping-breaker", "--plot", str(target), "--json")
    assert result.exit_code == 0, result.output
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_list_names_every_scenario() -> None:
    result = simulate("--list")
    assert result.exit_code == 0
    assert "march-4:" in result.stdout and "flapping-breaker:" in result.stdout
    assert "scarcity:" in result.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--scenario", "march-5"), "use one of: march-4, failures-during-pause"),
        (("--mode", "careful"), "'naive', 'guarded', 'both'"),
        (("--seed", "-1"), "use 0 to 4294967295"),
        (("--seed", str(2**32)), "use 0 to 4294967295"),
        (("--seed", "many"), "is not a valid integer"),
        (("--load-seconds", "0"), "use 1 to 3600"),
        (("--plot", "/no/such/folder/x.png"), "does not exist; create it"),
        (("--plot", "timeline.txt"), "end it in .png"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(args: tuple[str, ...], says: str) -> None:
    result = simulate(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_plot_that_cannot_be_written_is_one_line_and_exit_2(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capguard.sim import plot

    def refuse(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.png"))

    monkeypatch.setattr(plot, "draw", refuse)
    result = simulate("--scenario", "flapping-breaker", "--plot", str(tmp_path / "x.png"))
    assert result.exit_code == 2
    assert "cannot write" in result.stderr and "Permission denied" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
