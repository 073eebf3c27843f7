"""Per-task metrics in the user's units (each task type's are in `components.config.tasks`).

One convention past the trainer: a metric reads what the ONNX graph outputs (logits; a regression value in the
column's units) against the label as `TaskKind.label_values` gives it (a class index, 0/1; a value in units). The
trainer's head-scale tensors cross to it once, through `TaskKind.to_units`."""

from __future__ import annotations

import numpy as np

from components.config.tasks import higher_is_better, kind_of
from components.data.features import TargetSpec


def task_metrics(target: TargetSpec, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Metrics for one task on the labelled rows (`y` not NaN): `outputs` as the graph gives them, `y` as
    `label_values` does (see the module's convention)."""
    mask = ~np.isnan(y)
    outputs, y = outputs[mask], y[mask]
    out: dict[str, float] = {"n": float(mask.sum())}
    if len(y) == 0:
        return out
    return out | kind_of(target).scores(target, outputs, y)


def head_metrics(target: TargetSpec, raw: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """`task_metrics` of a head's raw output against the encoded label (the trainer's tensors, a booster fitted on
    the encoded label), both brought to the graph's units first."""
    kind = kind_of(target)
    return task_metrics(target, kind.to_units(target, raw), kind.to_units(target, y.astype(np.float64)))


def baseline_raw(target: TargetSpec, y_train: np.ndarray, n: int) -> np.ndarray:
    """A trivial model's outputs on the scale of `y_train`: train prevalence / class frequencies / train median."""
    return kind_of(target).baseline(target, y_train[~np.isnan(y_train)], n)


def is_better(metric: str, new: float, old: float) -> bool:
    return new > old if higher_is_better(metric) else new < old


def relative_change(metric: str, new: float, old: float) -> float:
    """Relative change where positive means better, whatever the metric's direction."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    return sign * (new - old) / max(abs(old), 1e-12)
