"""The LightGBM baseline fits the metric each task is gated on, and the month-by-month benchmark (vs_gbdt.py) runs
every model on every period of a small sample, writes its tables and resumes from its journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import common, vs_gbdt
from components.config.schema import load_config, parse_config
from components.data.tables import load_source, sample_rows, with_labels
from tests.conftest import DIAMONDS, FLIGHTS, TXHOUSING, raw_config


def test_a_booster_fits_the_metric_its_task_is_gated_on_not_the_networks_loss() -> None:
    flights = {t.name: t for t in load_config(FLIGHTS).tasks}
    assert flights["air_time"].loss == "mse" and flights["air_time"].metric == "mae"
    assert common.booster_objective(flights["air_time"]) == {"objective": "regression_l1", "metric": "l1"}
    assert common.booster_objective(flights["arr_delayed"]) == {"objective": "binary", "metric": "auc"}
    txhousing = {t.name: t for t in load_config(TXHOUSING).tasks}
    assert txhousing["sales"].loss == "huber"
    assert common.booster_objective(txhousing["sales"]) == {"objective": "regression_l1", "metric": "l1"}
    assert common.booster_objective(txhousing["price_band"]) == {"objective": "multiclass",
                                                                      "metric": "multi_logloss"}


def test_an_ordinal_task_is_refused_by_name() -> None:
    raw = raw_config(FLIGHTS)
    raw["tasks"].append({"name": "delay_band", "type": "ordinal",
                         "label": {"column": "arr_delay", "op": "bins", "edges": [0, 15, 60]}})
    cfg = parse_config(raw, "<ordinal>")
    with pytest.raises(ValueError, match="delay_band"):
        common.booster_objective(cfg.task("delay_band"))


def test_a_split_without_time_windows_is_scored_on_its_test_split_only() -> None:
    cfg = load_config(DIAMONDS)
    df = with_labels(sample_rows(load_source(cfg.data), 0.05, seed=0), cfg)
    scored, train_df, val_df = vs_gbdt.periods(cfg, df)
    assert list(scored) == ["test"]
    assert len(scored["test"]) + len(train_df) + len(val_df) == len(df)


def test_a_small_sample_scores_every_model_on_june_and_each_later_month_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "vs"
    argv = ["--fraction", "0.03", "--epochs", "1", "--trials", "2", "--seeds", "2", "--rounds", "20", "--out", str(out)]
    runs = vs_gbdt.main(argv)
    months = ["2013-06 (test)"] + [f"2013-{m:02d}" for m in range(7, 13)]
    assert list(runs) == ["multi-head", "STL", "LightGBM"]
    for model_runs in runs.values():
        assert len(model_runs) == 2
        for run in model_runs:
            for period in [*months, vs_gbdt.LATER]:
                assert {f"{period}|arr_delayed|roc_auc", f"{period}|air_time|mae",
                        f"{period}|cancelled|log_loss"} <= set(run.metrics)
    text = (tmp_path / "vs.md").read_text()
    for period in months:
        assert f"| {period} | LightGBM |" in text and f"| {period} | trivial |" in text
    assert "| later months | trivial |" in text
    assert "| later months | multi-head |" in text and "## Tuned LightGBM settings" in text
    assert (tmp_path / "vs.png").stat().st_size > 0
    journal = (tmp_path / "journals" / "vs.runs.jsonl").read_text().splitlines()
    assert sorted((json.loads(line)["method"], json.loads(line)["seed"]) for line in journal) == sorted(
        (m, s) for m in vs_gbdt.MODELS for s in range(2))
    again = vs_gbdt.main(argv)  # every run from the journal: nothing retrains, the numbers are the same
    assert (tmp_path / "journals" / "vs.runs.jsonl").read_text().splitlines() == journal
    assert again["LightGBM"][0].metrics == runs["LightGBM"][0].metrics
