"""ONNX export with its parity check, and the champion/challenger gate in BentoML's model store."""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from components import registry
from components.config import ProjectConfig
from components.evaluate import evaluate
from components.export import ONNX_FILE, OnnxModel, ParityError, check_parity, export_onnx
from components.train import WEIGHTS, train
from tests.conftest import FLIGHTS, config_with, window


def _train_and_export(cfg: ProjectConfig, frame: pd.DataFrame, root: Path) -> tuple[Path, Path]:
    model_dir, onnx_dir = root / "model", root / "onnx"
    train(cfg, window(frame, cfg, "train"), window(frame, cfg, "validation"), model_dir, progress=False)
    test = window(frame, cfg, "test")
    export_onnx(model_dir, onnx_dir, test)
    check_parity(model_dir, onnx_dir, test, rows=1000, atol=1e-4)
    return model_dir, onnx_dir


@pytest.fixture(scope="module")
def good(flights_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[ProjectConfig, Path, Path]:
    cfg = config_with(FLIGHTS, training={"epochs": 2, "threads": 2}, registry={"model_name": "gate-test"})
    return cfg, *_train_and_export(cfg, flights_frame, tmp_path_factory.mktemp("good"))


def test_one_graph_all_heads_dynamic_batch(good: tuple[ProjectConfig, Path, Path],
                                           flights_frame: pd.DataFrame) -> None:
    cfg, _, onnx_dir = good
    graph = onnx.load(str(onnx_dir / ONNX_FILE))
    onnx.checker.check_model(graph)
    assert [o.name for o in graph.graph.output] == [t.name for t in cfg.tasks]
    assert [i.name for i in graph.graph.input] == ["numeric", "categorical"]
    model = OnnxModel(onnx_dir)
    test = window(flights_frame, cfg, "test")
    for n in (1, 7, 1000):
        out = model.predict_frame(test.head(n))
        assert all(v.shape == (n,) for v in out.values())
    # regression outputs come back in minutes, not standardised units
    assert 60 < float(np.median(model.predict_frame(test)["air_time"])) < 250


def test_parity_report_and_a_failed_parity_check(good: tuple[ProjectConfig, Path, Path],
                                                 flights_frame: pd.DataFrame, tmp_path: Path) -> None:
    cfg, model_dir, onnx_dir = good
    test = window(flights_frame, cfg, "test")
    report = check_parity(model_dir, onnx_dir, test, rows=1000, atol=1e-4)
    assert report.ok and report.rows == 1000 and max(report.max_abs_diff.values()) <= 1e-4
    # weights changed after export: the graph no longer matches, and the check says so
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in model_dir.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    state = torch.load(tampered / WEIGHTS, weights_only=True)
    state["heads.arr_delayed.bias"] += 0.01
    torch.save(state, tampered / WEIGHTS)
    with pytest.raises(ParityError, match="arr_delayed"):
        check_parity(tampered, onnx_dir, test, rows=1000, atol=1e-4)


def test_gate_promotes_rejects_and_rolls_back(good: tuple[ProjectConfig, Path, Path], flights_frame: pd.DataFrame,
                                              tmp_path: Path) -> None:
    cfg, model_dir, onnx_dir = good
    test = window(flights_frame, cfg, "test")
    metrics = evaluate(model_dir, window(flights_frame, cfg, "train"), test)
    first = registry.register(onnx_dir, cfg, metrics, {"data_version": "v1", "git_revision": "abc"})
    assert registry.promote_if_better(cfg, first, test).promote
    assert str(registry.champion(cfg.registry.model_name).tag) == first  # type: ignore[union-attr]

    # a challenger that barely trained: worse on the primary task -> rejected, champion untouched
    weak_cfg = config_with(FLIGHTS, training={"epochs": 1, "lr": 1e-6, "threads": 2},
                           registry={"model_name": "gate-test"})
    _, weak_onnx = _train_and_export(weak_cfg, flights_frame, tmp_path)
    weak = registry.register(weak_onnx, weak_cfg, {}, {"data_version": "v2"})
    decision = registry.promote_if_better(cfg, weak, test)
    assert not decision.promote
    assert any(r.startswith("primary arr_delayed roc_auc") and r.endswith("WORSE") for r in decision.reasons)
    assert str(registry.champion(cfg.registry.model_name).tag) == first  # type: ignore[union-attr]
    stored = bentoml.models.get(weak).info
    assert stored.labels["stage"] == "rejected" and stored.metadata["gate"]["promote"] is False

    # an equally good challenger is not worse: promoted, the old champion retired; rollback restores it
    second = registry.register(onnx_dir, cfg, metrics, {"data_version": "v3"})
    assert registry.promote_if_better(cfg, second, test).promote
    assert bentoml.models.get(first).info.labels["stage"] == "retired"
    assert registry.rollback(cfg.registry.model_name) == first
    assert str(registry.champion(cfg.registry.model_name).tag) == first  # type: ignore[union-attr]
    assert bentoml.models.get(second).info.labels["stage"] == "retired"
