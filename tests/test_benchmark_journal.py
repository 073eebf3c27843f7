"""The MTL benchmark's run journal: a stopped run resumes, and runs from other settings are never reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import common

FULL = {"config": "flights.yaml", "fraction": 1.0, "epochs": 8, "lightgbm_rounds": 2000}


def test_journal_resumes_finished_runs_and_ignores_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "bench.runs.jsonl"
    first = common.RunJournal(path, FULL)
    first.record("EW", 0, common.RunResult({"arr_delayed": 0.72}, 15.0, 3.3e11))
    first.record("LightGBM", 0, common.RunResult({"arr_delayed": 0.71}, 13.0, None))

    again = common.RunJournal(path, dict(FULL))
    assert set(again.done) == {("EW", 0), ("LightGBM", 0)}
    assert again.done[("EW", 0)] == common.RunResult({"arr_delayed": 0.72}, 15.0, 3.3e11)
    assert again.done[("LightGBM", 0)].flops is None

    quick = common.RunJournal(path, FULL | {"lightgbm_rounds": 150})
    assert quick.done == {}
    quick.record("EW", 0, common.RunResult({"arr_delayed": 0.66}, 1.0, 1.3e10))
    assert common.RunJournal(path, FULL).done[("EW", 0)].metrics == {"arr_delayed": 0.72}


def test_method_summary_flops_is_the_seed_mean_or_none() -> None:
    nets = common.MethodSummary("EW", [common.RunResult({}, 1.0, 2e9), common.RunResult({}, 1.0, 4e9)])
    assert nets.flops() == 3e9
    assert common.MethodSummary("LightGBM", [common.RunResult({}, 1.0, None)]).flops() is None


def test_setting_overrides_read_yaml_values_and_name_a_malformed_pair() -> None:
    assert common.setting_overrides(["architecture=ft_transformer", "head_hidden=32", "hidden=[128, 64]"]) == {
        "architecture": "ft_transformer", "head_hidden": 32, "hidden": [128, 64]}
    assert common.setting_overrides(["batch_size=256", "lr=0.001"], "training") == {"batch_size": 256,
                                                                                         "lr": 0.001}
    with pytest.raises(SystemExit, match="'head_hidden: 32': write FIELD=VALUE"):
        common.setting_overrides(["head_hidden: 32"])
    with pytest.raises(SystemExit, match="--training 'lr'"):
        common.setting_overrides(["lr"], "training")


def test_runs_at_other_categorical_cutoffs_are_not_reused(tmp_path: Path) -> None:
    from components.config.schema import load_config
    from tests.conftest import FLIGHTS

    cfg = load_config(FLIGHTS)
    earlier = common.with_min_frequency(cfg, {"tailnum": 30, "flight_number": 30})
    assert {f.name: f.min_frequency for f in earlier.features.categorical}["tailnum"] == 30
    path = tmp_path / "bench.runs.jsonl"
    common.RunJournal(path, common.config_key(FLIGHTS, earlier)).record(
        "EW", 0, common.RunResult({"arr_delayed": 0.72}, 15.0, 3.3e11))
    assert common.RunJournal(path, common.config_key(FLIGHTS, earlier)).done
    later = common.with_min_frequency(cfg, {"tailnum": 200, "flight_number": 30})
    assert common.RunJournal(path, common.config_key(FLIGHTS, later)).done == {}
    with pytest.raises(SystemExit, match=r"--min-frequency: \['aircraft'\] are not categorical features"):
        common.with_min_frequency(cfg, {"aircraft": 30})


def test_an_out_name_with_a_dot_keeps_it() -> None:
    assert common.beside(Path("results/tuned_ema0.99"), ".md") == Path("results/tuned_ema0.99.md")
