"""The serving-cost benchmark: the boosters' record encoder gives LightGBM's own codes, the tuned booster settings
come from the tuning journal, and a real run (a few percent of the rows) times both models and writes its tables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from benchmarks import common, serving_cost
from components.config.schema import load_config
from components.data.features import FIRST_VALUE_INDEX, NULL_INDEX, OOV_INDEX, FeatureSpec
from components.data.tables import with_labels
from serving.client import to_records
from tests.conftest import ROOT


def flights_rows(n: int, **categorical: list[object]) -> pd.DataFrame:
    """`n` rows of the flights config's features and label sources: numbers 0..n-1, categoricals cycled."""
    cfg = load_config(ROOT / "configs" / "flights.yaml")
    numbers = {f.name: np.arange(n, dtype=np.float64) for f in cfg.features.numeric}
    labels = {"arr_delay": np.arange(n) % 40.0, "dep_delay": np.arange(n) % 30.0, "air_time": np.arange(n) + 30.0,
              "dep_time": np.where(np.arange(n) % 10 == 0, np.nan, 900.0)}
    cats = {name: [values[i % len(values)] for i in range(n)] for name, values in categorical.items()}
    return pd.DataFrame(numbers | labels | cats | {"flight_id": np.arange(n),
                                                    "sched_dep": pd.date_range("2013-01-01", periods=n, freq="h")})


def test_the_booster_encoder_gives_the_boosters_own_codes_with_null_and_unseen_codes_of_their_own() -> None:
    cfg = load_config(ROOT / "configs" / "flights.yaml")
    seen = {"carrier": ["AA", "B6", "UA"], "origin": ["JFK"], "dest": ["BOS"], "tailnum": ["N1", None],
            "flight_number": [1]}
    models = common.LightGBMModels(FeatureSpec.fit(with_labels(flights_rows(600, **seen), cfg), cfg), {})
    probe = flights_rows(3, carrier=["UA", "ZZ", None], origin=["JFK"], dest=["BOS"], tailnum=["N1", None, "N9"],
                         flight_number=[1, 2, None])
    probe.loc[1, "distance"] = np.nan
    x = serving_cost.BoosterRecordEncoder(models).encode(to_records(probe, models.feature_names))
    np.testing.assert_array_equal(x, models.frame(probe).to_numpy(np.float64))
    carrier, tailnum = models.feature_names.index("carrier"), models.feature_names.index("tailnum")
    assert (x[1, carrier], x[2, carrier]) == (OOV_INDEX, NULL_INDEX)  # unseen and null: codes of their own
    assert (x[0, tailnum], x[1, tailnum], x[2, tailnum]) == (FIRST_VALUE_INDEX, NULL_INDEX, OOV_INDEX)
    assert np.isnan(x[1, models.feature_names.index("distance")])  # a numeric null stays LightGBM's missing value


def test_each_task_gets_its_best_booster_setting_from_the_journal_and_the_rest_none(tmp_path: Path) -> None:
    from benchmarks import tune_methods as tune
    journal = tmp_path / "tune.optuna.jsonl"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="LightGBM/arr_delayed", storage=storage, direction="maximize")
    start = tune.start_values(common.LGBM_PARAMS, tune.LIGHTGBM_SPACE)
    for leaves in (20, 40, 200):
        study.enqueue_trial(start | {"num_leaves": leaves})
    study.optimize(lambda trial: -abs({k.path: k.suggest(trial) for k in tune.LIGHTGBM_SPACE}["num_leaves"] - 40),
                   n_trials=3)
    params = serving_cost.tuned_booster_params(["arr_delayed", "dep_delay"], journal)
    assert params == {"arr_delayed": common.LGBM_PARAMS | start | {"num_leaves": 40}}
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
