"""Temperature scaling: fitted on the validation window after training, it recovers a known temperature, keeps
every ranking, lowers the validation log loss, is folded into the exported ONNX graph (parity holds on the
calibrated logits) and can be switched off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.artifacts.export import check_parity, export_onnx
from components.artifacts.inference import OnnxModel
from components.data.features import TargetSpec
from components.training.calibration import TEMPERATURES_FILE, fit_temperature, load_temperatures
from components.training.evaluate import evaluate
from components.training.train import load_trained, predict_raw, to_tensors, train
from tests.conftest import FLIGHTS, TXHOUSING, config_with, window


def test_the_fitted_temperature_recovers_the_one_the_labels_were_drawn_with() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 50_000)
    labels = (rng.random(len(logits)) < 1 / (1 + np.exp(-logits / 2.5))).astype(np.float64)
    assert fit_temperature(TargetSpec("t", "binary"), logits, labels) == pytest.approx(2.5, rel=0.05)
    classes = rng.normal(0, 2, (30_000, 3))
    p = np.exp(classes / 0.5) / np.exp(classes / 0.5).sum(axis=1, keepdims=True)
    drawn = np.array([rng.choice(3, p=row) for row in p], dtype=np.float64)
    assert fit_temperature(TargetSpec("m", "multiclass", ["a", "b", "c"]), classes, drawn) == pytest.approx(
        0.5, rel=0.05)
    assert fit_temperature(TargetSpec("t", "binary"), logits, np.ones_like(logits)) == 1.0  # one class: nothing


@pytest.fixture(scope="module")
def calibrated_and_not(flights_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same flights model (2 epochs, same seed) trained with and without temperature scaling."""
    out = {}
    for calibration in ("temperature", "none"):
        cfg = config_with(FLIGHTS, training={"epochs": 2, "threads": 2, "calibration": calibration})
        out[calibration] = tmp_path_factory.mktemp(calibration)
        train(cfg, window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation"), out[calibration],
              progress=False)
    return out


def test_temperatures_lower_the_validation_log_loss_and_keep_the_ranking(calibrated_and_not: dict[str, Path],
                                                                       flights_frame: pd.DataFrame) -> None:
    temperatures = load_temperatures(calibrated_and_not["temperature"])
    assert set(temperatures) == {"arr_delayed", "cancelled"}  # the binary heads; regression is not scaled
    assert not (calibrated_and_not["none"] / TEMPERATURES_FILE).exists()
    cfg = config_with(FLIGHTS)
    val, train_df = window(flights_frame, cfg, "validation"), window(flights_frame, cfg, "train")
    scores = {name: evaluate(folder, train_df, val)["test"] for name, folder in calibrated_and_not.items()}
    for task in temperatures:
        assert scores["temperature"][task]["log_loss"] <= scores["none"][task]["log_loss"]
        assert scores["temperature"][task]["roc_auc"] == pytest.approx(scores["none"][task]["roc_auc"], abs=1e-12)
    assert scores["temperature"]["air_time"] == scores["none"]["air_time"]


def test_the_graph_answers_the_calibrated_probabilities_and_parity_holds(calibrated_and_not: dict[str, Path],
                                                                          flights_frame: pd.DataFrame,
                                                                          tmp_path: Path) -> None:
    folder = calibrated_and_not["temperature"]
    cfg = config_with(FLIGHTS)
    test = window(flights_frame, cfg, "test")
    export_onnx(folder, tmp_path / "onnx", test)
    report = check_parity(folder, tmp_path / "onnx", test, rows=1000, atol=1e-4)
    assert report.ok
    assert load_temperatures(tmp_path / "onnx") == load_temperatures(folder)
    model, spec, _ = load_trained(folder)
    logits = predict_raw(model, to_tensors(test.head(500), spec))  # the network's own, uncalibrated logits
    graph = OnnxModel(tmp_path / "onnx").predict_frame(test.head(500))
    for task, t in load_temperatures(folder).items():
        np.testing.assert_allclose(graph[task], logits[task] / t, rtol=1e-4, atol=1e-4)


def test_a_multiclass_head_is_scaled_as_one_softmax(tmp_path: Path) -> None:
    from components.data.tables import load_source, sample_rows, select_window, with_labels

    cfg = config_with(TXHOUSING, training={"epochs": 2, "threads": 2})
    df = with_labels(sample_rows(load_source(cfg.data), 0.5, seed=0), cfg)
    w = cfg.data.windows
    train(cfg, select_window(df, cfg.data.time_column, w.train.start, w.train.end),
          select_window(df, cfg.data.time_column, w.validation.start, w.validation.end), tmp_path, progress=False)
    assert set(load_temperatures(tmp_path)) == {"price_band", "busy_month"}


def test_the_calibration_benchmark_reports_every_classification_head_both_ways(tmp_path: Path) -> None:
    from benchmarks import calibration as benchmark
    text = benchmark.main(["--config", str(TXHOUSING), "--fraction", "0.3", "--epochs", "1", "--threads", "2",
                           "--out", str(tmp_path / "calibration.md")])
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| txhousing.yaml |")]
    assert [r[1] for r in rows] == ["price_band", "busy_month"]
    for r in rows:
        assert r[3] == r[4]  # the gated metric does not move: scaling keeps every ranking and argmax
        assert float(r[7].strip("* ")) > 0 and float(r[8].strip(" |")) > 0
    assert (tmp_path / "calibration.md").read_text() == text
