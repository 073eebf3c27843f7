"""Per-task metrics on the held-out test window, next to a trivial baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from components.training.calibration import calibrated
from components.training.metrics import baseline_raw, head_metrics
from components.training.train import load_trained, predict_raw, to_tensors


def evaluate(model_dir: Path, train_df: pd.DataFrame, test_df: pd.DataFrame) -> dict[str, dict]:
    """{"test": {task: metrics}, "baseline": {task: metrics}, "rows": n}.

    The baseline predicts the training prevalence / class frequencies / median:
    a model that does not beat it has learned nothing."""
    model, spec, _ = load_trained(model_dir)
    test_t = to_tensors(test_df, spec)
    raw = calibrated(predict_raw(model, test_t), spec.targets)
    train_targets = spec.transform_targets(train_df)
    result: dict[str, dict] = {"test": {}, "baseline": {}, "rows": {"test": len(test_df)}}
    for t in spec.targets:
        y = test_t.targets[t.name].numpy()
        result["test"][t.name] = head_metrics(t, raw[t.name], y)
        result["baseline"][t.name] = head_metrics(t, baseline_raw(t, train_targets[t.name], len(y)), y)
    return result


def save_metrics(result: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(result, indent=1))
