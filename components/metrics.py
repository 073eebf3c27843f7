"""Per-task metrics on raw head outputs, in the user's units."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from components.features import TargetSpec
from components.predictions import sigmoid, softmax
from components.tasks import higher_is_better


def task_metrics(target: TargetSpec, raw: np.ndarray, y: np.ndarray, standardised: bool = True) -> dict[str, float]:
    """Metrics for one task on the labelled rows. `y` is the transformed target
    (class index, 0/1, or standardised value); `raw` the head output — for
    regression standardised unless `standardised=False` (ONNX outputs)."""
    mask = ~np.isnan(y)
    raw, y = raw[mask], y[mask]
    out: dict[str, float] = {"n": float(mask.sum())}
    if len(y) == 0:
        return out
    if target.type == "binary":
        p = sigmoid(raw.astype(np.float64))
        both = len(np.unique(y)) == 2
        out["roc_auc"] = float(skm.roc_auc_score(y, p)) if both else float("nan")
        out["log_loss"] = float(skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))
        out["accuracy"] = float(np.mean((p >= target.threshold) == (y == 1)))
    elif target.type == "multiclass":
        p = softmax(raw.astype(np.float64))
        yi = y.astype(int)
        pred = p.argmax(axis=1)
        labels = list(range(len(target.classes)))
        out["accuracy"] = float(np.mean(pred == yi))
        out["macro_f1"] = float(skm.f1_score(yi, pred, average="macro", labels=labels, zero_division=0))
        out["log_loss"] = float(skm.log_loss(yi, np.clip(p, 1e-7, 1), labels=labels))
    else:
        pred = raw * target.std + target.mean if standardised else raw
        truth = y * target.std + target.mean
        err = pred.astype(np.float64) - truth
        out["mae"] = float(np.mean(np.abs(err)))
        out["rmse"] = float(np.sqrt(np.mean(err**2)))
    return out


def baseline_raw(target: TargetSpec, y_train: np.ndarray, n: int) -> np.ndarray:
    """A trivial model's raw outputs: train prevalence / class frequencies / train median."""
    y_train = y_train[~np.isnan(y_train)]
    if target.type == "binary":
        p = np.clip(y_train.mean() if len(y_train) else 0.5, 1e-6, 1 - 1e-6)
        return np.full(n, np.log(p / (1 - p)))
    if target.type == "multiclass":
        counts = np.bincount(y_train.astype(int), minlength=len(target.classes)) + 1e-6
        return np.tile(np.log(counts / counts.sum()), (n, 1))
    return np.full(n, np.median(y_train) if len(y_train) else 0.0)


def is_better(metric: str, new: float, old: float) -> bool:
    return new > old if higher_is_better(metric) else new < old


def relative_change(metric: str, new: float, old: float) -> float:
    """Relative change where positive means better, whatever the metric's direction."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    return sign * (new - old) / max(abs(old), 1e-12)
