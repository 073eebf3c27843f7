"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks"): each classification head's
logits divided by one positive number T, fitted after training on the validation window by minimising the head's
log loss. Dividing by T > 0 keeps every ranking and every argmax, so ROC-AUC, accuracy at 0.5 and macro-F1 do not
move; only the probabilities do. The temperatures are stored beside the weights (`temperatures.json`), folded into
the feature spec when a model is loaded (`TargetSpec.temperature`) and into the exported ONNX graph
(`components.artifacts.export.ExportModule`), so PyTorch, the graph and the service answer the same probabilities."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from components.config.tasks import kind_of
from components.data.features import FeatureSpec, TargetSpec

TEMPERATURES_FILE = "temperatures.json"  # beside the graph too, where the monitor keeps its calibration.json
CALIBRATED_TYPES = ("binary", "multiclass")  # the types whose raw outputs are logits of one softmax / sigmoid
LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]: beyond, the head says (almost) nothing or (almost) only 0/1


def fit_temperature(target: TargetSpec, raw: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the log loss of `raw / T` on the labelled rows; 1.0 where there is nothing to fit (no
    labelled rows, or one class only)."""
    from scipy.optimize import minimize_scalar

    mask = ~np.isnan(y)
    raw, y = raw[mask].astype(np.float64), y[mask]
    if len(y) == 0 or len(np.unique(y)) < 2:
        return 1.0
    kind = kind_of(target)
    result = minimize_scalar(lambda log_t: kind.scores(target, raw / math.exp(log_t), y)["log_loss"],
                             bounds=LOG_T_BOUNDS, method="bounded")
    return float(math.exp(result.x))


def fit_temperatures(spec: FeatureSpec, raw: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict[str, float]:
    """task -> T for every classification head of `spec`, from its raw validation outputs and encoded labels."""
    return {t.name: fit_temperature(t, raw[t.name], y[t.name]) for t in spec.targets if t.type in CALIBRATED_TYPES}


def with_temperatures(spec: FeatureSpec, temperatures: dict[str, float]) -> FeatureSpec:
    return replace(spec, targets=[replace(t, temperature=temperatures.get(t.name, t.temperature))
                                  for t in spec.targets])


def calibrated(raw: dict[str, np.ndarray], targets: list[TargetSpec]) -> dict[str, np.ndarray]:
    """Raw head outputs with each calibrated head's logits divided by its temperature."""
    scale = {t.name: t.temperature for t in targets}
    return {name: v / scale[name] if scale.get(name, 1.0) != 1.0 else v for name, v in raw.items()}


def save_temperatures(model_dir: Path, temperatures: dict[str, float]) -> None:
    (Path(model_dir) / TEMPERATURES_FILE).write_text(json.dumps(temperatures, indent=1))


def load_temperatures(model_dir: Path) -> dict[str, float]:
    """The model's temperatures; none for a model trained without calibration (or before it existed)."""
    path = Path(model_dir) / TEMPERATURES_FILE
    return json.loads(path.read_text()) if path.exists() else {}
