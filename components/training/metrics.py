"""Per-task metrics on raw head outputs, in the user's units (each task type's are in `components.config.tasks`)."""

from __future__ import annotations

import numpy as np

from components.config.tasks import higher_is_better, kind_of
from components.data.features import TargetSpec


def task_metrics(target: TargetSpec, raw: np.ndarray, y: np.ndarray, standardised: bool = True) -> dict[str, float]:
    """Metrics for one task on the labelled rows. `y` is the transformed target
    (class index, 0/1, or the head's scale of a value); `raw` the head output — for
    regression on the head's scale unless `standardised=False` (ONNX outputs, original units)."""
    mask = ~np.isnan(y)
    raw, y = raw[mask], y[mask]
    out: dict[str, float] = {"n": float(mask.sum())}
    if len(y) == 0:
        return out
    kind = kind_of(target)
    return out | kind.scores(target, raw if standardised else kind.to_raw(target, raw), y)


def baseline_raw(target: TargetSpec, y_train: np.ndarray, n: int) -> np.ndarray:
    """A trivial model's raw outputs: train prevalence / class frequencies / train median."""
    return kind_of(target).baseline(target, y_train[~np.isnan(y_train)], n)


def is_better(metric: str, new: float, old: float) -> bool:
    return new > old if higher_is_better(metric) else new < old


def relative_change(metric: str, new: float, old: float) -> float:
    """Relative change where positive means better, whatever the metric's direction."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    return sign * (new - old) / max(abs(old), 1e-12)
