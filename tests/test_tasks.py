"""`components.tasks` is the one description of the task types: what config validation accepts per type is
what the metrics compute and the trainer's losses implement, and the monitored column is one the
prediction log has."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.features import FeatureSpec, TargetSpec
from components.metrics import task_metrics
from components.predictions import monitored_column, task_columns
from components.tasks import LOSS_NAMES, TASK_KINDS, head_width

CLASSES = ["low", "mid", "high"]


def _target(task_type: str) -> TargetSpec:
    return TargetSpec("t", task_type, classes=CLASSES if task_type == "multiclass" else [])


def _outputs(task_type: str, rows: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    width = head_width(task_type, len(CLASSES))
    raw = rng.normal(size=(rows, width)) if width > 1 else rng.normal(size=rows)
    y = rng.integers(0, width if width > 1 else 2, size=rows).astype(np.float64)
    return raw, y


@pytest.mark.parametrize("task_type", sorted(TASK_KINDS))
def test_the_metrics_a_type_accepts_are_the_ones_computed_for_it(task_type: str) -> None:
    raw, y = _outputs(task_type)
    computed = set(task_metrics(_target(task_type), raw, y)) - {"n"}
    assert computed == set(TASK_KINDS[task_type].metrics)


@pytest.mark.parametrize("task_type", sorted(TASK_KINDS))
def test_the_monitored_column_is_written_to_the_prediction_log(task_type: str) -> None:
    target = _target(task_type)
    raw, _ = _outputs(task_type)
    assert monitored_column(target) in task_columns(FeatureSpec([], [], [target]), {"t": raw})


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_name_is_a_different_loss_in_the_trainer(loss: str) -> None:
    """`masked_loss` dispatches on the loss name; a name it does not know must not fall through silently."""
    from components.config import TaskSpec
    from components.train import masked_loss

    task_type = next(t for t, k in TASK_KINDS.items() if loss in k.losses)
    pred = torch.tensor([[2.0, -1.0, 0.5]] * 4) if task_type == "multiclass" else torch.tensor([2.0, -1.0, 0.5, 3.0])
    y = torch.tensor([0.0, 1.0, 2.0, 1.0]) if task_type == "multiclass" else torch.tensor([0.0, 1.0, 1.0, 0.0])
    spec = TaskSpec(name="t", type=task_type, label={"column": "t"}, loss=loss)  # type: ignore[arg-type]
    values = {other: float(masked_loss(spec.model_copy(update={"loss": other}), pred, y))
              for other in TASK_KINDS[task_type].losses}
    assert len(set(values.values())) == len(values)  # each name computes its own loss
