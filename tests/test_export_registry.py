"""ONNX export with its parity check, and the champion/challenger gate in BentoML's model store."""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from components.artifacts import registry
from components.artifacts.export import ONNX_FILE, OnnxModel, ParityError, check_parity, export_onnx
from components.config.schema import ConfigError, ProjectConfig
from components.training.evaluate import evaluate
from components.training.metrics import is_better
from components.training.train import WEIGHTS, train
from tests.conftest import FLIGHTS, SMOKE_MODEL, config_with, window


def _train_and_export(cfg: ProjectConfig, frame: pd.DataFrame, root: Path) -> tuple[Path, Path]:
    model_dir, onnx_dir = root / "model", root / "onnx"
    train(cfg, window(frame, cfg, "train"), window(frame, cfg, "validation"), model_dir, progress=False)
    test = window(frame, cfg, "test")
    export_onnx(model_dir, onnx_dir, test)
    check_parity(model_dir, onnx_dir, test, rows=1000, atol=1e-4)
    return model_dir, onnx_dir


@pytest.fixture(scope="module")
def good(flights_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[ProjectConfig, Path, Path]:
    cfg = config_with(FLIGHTS, training={"epochs": 2, "threads": 2}, registry={
        "model_name": "gate-test", "allow_below_baseline": [{"task": "cancelled", "reason": SMOKE_MODEL}]})
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
    first_decision = registry.promote_if_better(cfg, first, test)
    assert first_decision.promote, first_decision.reasons
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

    # registry.passing_challenger: shadow -- a passing challenger is scored beside the champion, not promoted
    shadowing = cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"passing_challenger": "shadow"})})
    third = registry.register(onnx_dir, shadowing, metrics, {"data_version": "v4"})
    decision = registry.promote_if_better(shadowing, third, test)
    assert not decision.promote and decision.shadow, decision.reasons
    assert str(registry.champion(cfg.registry.model_name).tag) == first  # type: ignore[union-attr]
    assert str(registry.shadow(cfg.registry.model_name).tag) == third  # type: ignore[union-attr]
    assert bentoml.models.get(third).info.metadata["gate"]["shadow"] is True


def test_a_first_model_below_a_trivial_baseline_is_not_promoted_unless_the_config_allows_that_task(
        flights_frame: pd.DataFrame, tmp_path: Path) -> None:
    """A model that barely trained (lr 1e-6, one epoch) predicts the standardised mean for a regression task, whose
    MAE is worse than the training median's: with no champion to compare with, the gate still refuses it, names
    each task below its baseline, and promotes it only once the config names those tasks with a reason."""
    weak_cfg = config_with(FLIGHTS, training={"epochs": 1, "lr": 1e-6, "threads": 2},
                           registry={"model_name": "baseline-gate-test"})
    model_dir, onnx_dir = _train_and_export(weak_cfg, flights_frame, tmp_path)
    test = window(flights_frame, weak_cfg, "test")
    metrics = evaluate(model_dir, window(flights_frame, weak_cfg, "train"), test)
    below = [t.name for t in weak_cfg.tasks
             if not is_better(t.metric, metrics["test"][t.name][t.metric], metrics["baseline"][t.name][t.metric])]
    assert below, metrics  # the premise: the weak model is below some trivial baseline

    tag = registry.register(onnx_dir, weak_cfg, metrics, {"data_version": "v1"})
    decision = registry.promote_if_better(weak_cfg, tag, test)
    assert not decision.promote
    flagged = [r.split()[0] for r in decision.reasons if "BELOW BASELINE, not promoted" in r]
    assert flagged == below, decision.reasons
    assert registry.champion(weak_cfg.registry.model_name) is None
    assert bentoml.models.get(tag).info.labels["stage"] == "rejected"

    allowed = config_with(FLIGHTS, training={"epochs": 1, "lr": 1e-6, "threads": 2}, registry={
        "model_name": "baseline-gate-test",
        "allow_below_baseline": [{"task": name, "reason": "a smoke-test model"} for name in below]})
    again = registry.register(onnx_dir, allowed, metrics, {"data_version": "v2"})
    decision = registry.promote_if_better(allowed, again, test)
    assert decision.promote, decision.reasons
    assert [r.split()[0] for r in decision.reasons if "allowed by registry.allow_below_baseline (a smoke-test model)"
            in r] == below
    assert str(registry.champion(allowed.registry.model_name).tag) == again  # type: ignore[union-attr]


def test_the_gate_names_the_tasks_above_their_baseline_and_those_allowed_below(good: tuple[ProjectConfig, Path, Path],
                                                                            flights_frame: pd.DataFrame) -> None:
    cfg, model_dir, _ = good
    test = window(flights_frame, cfg, "test")
    metrics = evaluate(model_dir, window(flights_frame, cfg, "train"), test)
    ok, reasons = registry.beats_baseline(cfg, metrics)
    assert ok  # the only task the config allows below its baseline is cancelled
    above = [t.name for t in cfg.tasks
             if is_better(t.metric, metrics["test"][t.name][t.metric], metrics["baseline"][t.name][t.metric])]
    assert "arr_delayed" in above
    listed = next(r for r in reasons if r.startswith("better than the trivial baseline: "))
    assert [part.split()[0] for part in listed.removeprefix("better than the trivial baseline: ").split("; ")] == above
    assert all("allowed by registry.allow_below_baseline" in r and r.startswith("cancelled ")
               for r in reasons if r != listed)
    assert registry.beats_baseline(cfg, {}) == (True, [f"{t.name} {t.metric}: no test and trivial-baseline score "
                                                       "on record, not compared" for t in cfg.tasks])


def test_allow_below_baseline_must_name_a_task_and_give_a_reason() -> None:
    with pytest.raises(ConfigError, match="allow_below_baseline names unknown tasks: \\['nope'\\]"):
        config_with(FLIGHTS, registry={"model_name": "x", "allow_below_baseline": [{"task": "nope", "reason": "r"}]})
    unexplained = [{"task": "cancelled", "reason": ""}]
    with pytest.raises(ConfigError, match="reason"):
        config_with(FLIGHTS, registry={"model_name": "x", "allow_below_baseline": unexplained})
