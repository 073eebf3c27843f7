"""The serving-cost benchmark: the boosters' record encoder gives LightGBM's own codes, the tuned booster settings
come from the tuning journal, and a real run (a few percent of the rows) times both models and writes its tables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna

from tests.conftest import load_benchmark

mtl_methods = load_benchmark("mtl_methods")
serving_cost = load_benchmark("serving_cost")


def test_the_booster_encoder_gives_category_codes_and_missing_for_null_or_unseen() -> None:
    models = mtl_methods.LightGBMModels(["distance", "carrier"], {"carrier": ["AA", "B6", "UA"]}, None, {})
    x = serving_cost.BoosterRecordEncoder(models).encode([
        {"distance": 1.5, "carrier": "UA"}, {"distance": None, "carrier": "ZZ"}, {"distance": 7, "carrier": None}])
    np.testing.assert_array_equal(x, [[1.5, 2.0], [np.nan, np.nan], [7.0, np.nan]])


def test_each_task_gets_its_best_booster_setting_from_the_journal_and_the_rest_none(tmp_path: Path) -> None:
    tune = load_benchmark("tune_methods")
    journal = tmp_path / "tune.optuna.jsonl"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="LightGBM/arr_delayed", storage=storage, direction="maximize")
    start = tune.start_values(mtl_methods.LGBM_PARAMS, tune.LIGHTGBM_SPACE)
    for leaves in (20, 40, 200):
        study.enqueue_trial(start | {"num_leaves": leaves})
    study.optimize(lambda trial: -abs({k.path: k.suggest(trial) for k in tune.LIGHTGBM_SPACE}["num_leaves"] - 40),
                   n_trials=3)
    params = serving_cost.tuned_booster_params(["arr_delayed", "dep_delay"], journal)
    assert params == {"arr_delayed": mtl_methods.LGBM_PARAMS | start | {"num_leaves": 40}}
    assert serving_cost.tuned_booster_params(["arr_delayed"], tmp_path / "missing.jsonl") == {}


def test_a_small_run_times_both_models_on_every_batch_and_writes_the_tables(tmp_path: Path) -> None:
    out = tmp_path / "serving_cost"
    results = serving_cost.main(["--fraction", "0.03", "--epochs", "1", "--rounds", "20", "--seconds", "0.01",
                                 "--threads", "1", "--out", str(out), "--journal", str(tmp_path / "none.jsonl")])
    assert list(results) == list(serving_cost.BATCHES)
    for cells in results.values():
        assert set(cells) == {"graph encode", "graph model", "boosters encode", "boosters model"}
        assert all(math.isfinite(us) and us > 0 for us in cells.values())
    text = out.with_suffix(".md").read_text()
    batch_rows = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 64 |", "| 1,024 |"))]
    assert len(batch_rows) == 3
    assert "| one multi-head network (ONNX) |" in text and "| 4 LightGBM boosters |" in text
    assert "tuned setting of no task" in text
