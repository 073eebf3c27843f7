"""Adding and retiring a task on a trained model: the warm start keeps what the old model learnt, a new head
learns alone first, a retired head leaves, and nothing changes by accident."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch

from components.config import ProjectConfig, parse_config
from components.features import FeatureSpec
from components.train import SPEC, WEIGHTS, train
from tests.conftest import FLIGHTS, raw_config, window

OLD_TASKS = ("arr_delayed", "dep_delay", "air_time")


def tasks_config(names: tuple[str, ...], **training: object) -> ProjectConfig:
    """configs/flights.yaml with only the tasks `names` (its order), a small network and `training` set."""
    raw = copy.deepcopy(raw_config(FLIGHTS))
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in names]
    raw["model"] = {**raw.get("model", {}), "hidden": [32, 16]}
    raw["training"] = {**raw["training"], "epochs": 1, "threads": 2, **training}
    raw["registry"]["retire_tasks"] = [t for t in OLD_TASKS if t not in names]
    raw["leakage"]["allow_leaky"] = [a for a in raw["leakage"]["allow_leaky"] if a.get("task") in (None, *names)]
    raw.pop("alerts", None)
    return parse_config(raw, "<tasks>")


@pytest.fixture(scope="module")
def three_task_run(flights_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tasks_config(OLD_TASKS)
    out = tmp_path_factory.mktemp("three-tasks")
    train(cfg, window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation"), out, progress=False)
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / WEIGHTS, weights_only=True)


def test_an_added_task_gets_a_new_head_trained_alone_before_the_trunk_moves(
        flights_frame: pd.DataFrame, three_task_run: Path, tmp_path: Path) -> None:
    cfg = tasks_config((*OLD_TASKS, "cancelled"), warm_start=str(three_task_run), new_task_head_epochs=1, epochs=2)
    result = train(cfg, window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation"), tmp_path,
                   progress=False)
    assert [h["tasks"] for h in result.history] == [["cancelled"], [t.name for t in cfg.tasks]]
    old_spec, new_spec = FeatureSpec.load(three_task_run / SPEC), FeatureSpec.load(tmp_path / SPEC)
    new_targets = {t.name: t for t in new_spec.targets}
    assert all(new_targets[t.name] == t for t in old_spec.targets)  # old heads keep the scale they learnt in
    assert "cancelled" in new_targets and new_spec.numeric == old_spec.numeric

    head_only = tasks_config((*OLD_TASKS, "cancelled"), warm_start=str(three_task_run), epochs=1)
    train(head_only, window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation"),
          tmp_path / "head-only", progress=False)
    before, after, joint = _weights(three_task_run), _weights(tmp_path / "head-only"), _weights(tmp_path)
    assert before.keys() < after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # trunk and old heads frozen in the head stage
    assert any(k.startswith("heads.cancelled.") for k in after)
    assert not all(torch.equal(before[k], joint[k]) for k in before)  # then everything trains


def test_a_retired_task_loses_its_head_and_the_rest_is_warm_started(
        flights_frame: pd.DataFrame, three_task_run: Path, tmp_path: Path) -> None:
    cfg = tasks_config(("arr_delayed", "dep_delay"), warm_start=str(three_task_run), epochs=1, lr=1e-12)
    train(cfg, window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation"), tmp_path,
          progress=False)
    before, after = _weights(three_task_run), _weights(tmp_path)
    assert not any("air_time" in k for k in after)
    assert after.keys() == {k for k in before if "air_time" not in k}
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in after)  # lr ~0: the champion's weights
    assert [t.name for t in FeatureSpec.load(tmp_path / SPEC).targets] == ["arr_delayed", "dep_delay"]


def test_a_task_that_changes_type_or_a_warm_start_of_another_architecture_is_refused(
        flights_frame: pd.DataFrame, three_task_run: Path, tmp_path: Path) -> None:
    raw = copy.deepcopy(raw_config(FLIGHTS))
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in OLD_TASKS]
    air = next(t for t in raw["tasks"] if t["name"] == "air_time")
    air.update(type="binary", label={"column": "air_time", "op": "gt", "value": 120}, metric="roc_auc")
    air.pop("loss")
    raw["model"] = {**raw.get("model", {}), "hidden": [32, 16]}
    raw["training"] = {**raw["training"], "epochs": 1, "threads": 2, "warm_start": str(three_task_run)}
    raw["leakage"]["allow_leaky"] = [a for a in raw["leakage"]["allow_leaky"] if a.get("task") in (None, *OLD_TASKS)]
    raw.pop("alerts", None)
    cfg = parse_config(raw, "<type change>")
    train_df, val_df = window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation")
    with pytest.raises(ValueError, match="task 'air_time' is regression in the warm start's model and binary"):
        train(cfg, train_df, val_df, tmp_path / "a", progress=False)
    wider = tasks_config(OLD_TASKS, warm_start=str(three_task_run))
    wider = parse_config({**wider.model_dump(mode="json", exclude_none=True),
                          "model": {**wider.model.model_dump(mode="json", exclude_none=True), "hidden": [64]}}, "<w>")
    with pytest.raises(ValueError, match="its weights do not fit this architecture"):
        train(wider, train_df, val_df, tmp_path / "b", progress=False)


def test_retiring_a_task_must_be_said_and_cannot_keep_it() -> None:
    with pytest.raises(ValueError, match=r"registry.retire_tasks names tasks the config still has: \['air_time'\]"):
        raw = copy.deepcopy(raw_config(FLIGHTS))
        raw["registry"]["retire_tasks"] = ["air_time"]
        parse_config(raw, "<retire kept>")
