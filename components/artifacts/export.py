"""Export the trained model to one ONNX graph and prove it computes what PyTorch does.

Inputs: `numeric` float32 [batch, 2 * n_numeric] and `categorical` int64
[batch, n_categorical], both from the `FeatureSpec`. Outputs: one tensor per
task, named after it: logits (binary [batch], multiclass [batch, C], ordinal cumulative
[batch, C - 1]) or values in original units (regression [batch]: the task's target transform inverted in
the graph).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from torch import nn

from components.artifacts.inference import ONNX_FILE, OnnxModel
from components.config.tasks import kind_of
from components.data.features import FeatureSpec
from components.training.architectures import Architecture
from components.training.calibration import TEMPERATURES_FILE, calibrated
from components.training.train import CONFIG, SPEC, SUMMARY, WEIGHTS, load_trained, to_tensors

PARITY_FILE = "parity.json"


class ExportModule(nn.Module):
    """What the ONNX graph computes: one output per task, regression in original units."""

    def __init__(self, model: Architecture, spec: FeatureSpec) -> None:
        super().__init__()
        self.model = model
        self.task_names = model.task_names
        scale = [kind_of(t).output_scale(t) for t in spec.targets]
        self.register_buffer("scale", torch.tensor([s for s, _ in scale], dtype=torch.float32))
        self.register_buffer("shift", torch.tensor([m for _, m in scale], dtype=torch.float32))
        self.expm1 = [kind_of(t).output_expm1(t) for t in spec.targets]  # a log1p target back to its units
        # a calibrated head's logits are divided by its temperature in the graph (components/training/calibration.py)
        self.register_buffer("temperature", torch.tensor([t.temperature for t in spec.targets], dtype=torch.float32))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(numeric, categorical)
        values = [out[name] / self.temperature[i] * self.scale[i] + self.shift[i]
                  for i, name in enumerate(self.task_names)]
        return tuple(torch.expm1(v) if log else v for v, log in zip(values, self.expm1, strict=True))


class ParityError(RuntimeError):
    """The ONNX graph does not reproduce PyTorch's outputs."""


@dataclass(frozen=True)
class ParityReport:
    rows: int
    atol: float
    max_abs_diff: dict[str, float]
    ok: bool


def export_onnx(model_dir: Path, out_dir: Path, sample: pd.DataFrame, opset: int = 18) -> Path:
    """Write model.onnx (checked by `onnx.checker`) plus the files serving needs."""
    model, spec, _ = load_trained(model_dir)
    module = ExportModule(model, spec).eval()
    data = to_tensors(sample.head(8), spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ONNX_FILE
    batch = torch.export.Dim("batch")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (data.numeric, data.categorical), dynamo=True, opset_version=opset, verbose=False,
            input_names=["numeric", "categorical"], output_names=model.task_names,
            dynamic_shapes=({0: batch}, {0: batch}), optimize=True,
        )
    program.save(str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    for name in (SPEC, CONFIG, SUMMARY, WEIGHTS):  # weights: continual retraining warm-starts from them
        shutil.copy(Path(model_dir) / name, out_dir / name)
    if (Path(model_dir) / TEMPERATURES_FILE).exists():  # the temperatures in the graph, on record beside it
        shutil.copy(Path(model_dir) / TEMPERATURES_FILE, out_dir / TEMPERATURES_FILE)
    return path


def check_parity(model_dir: Path, onnx_dir: Path, test: pd.DataFrame, rows: int, atol: float) -> ParityReport:
    """Max |ONNX - PyTorch| per task on the first `rows` test rows (logits; regression
    values compared in the standardised space the head computes in)."""
    model, spec, _ = load_trained(model_dir)
    data = to_tensors(test.head(rows), spec)
    with torch.no_grad():
        expected = calibrated({name: v.numpy() for name, v in model(data.numeric, data.categorical).items()},
                              spec.targets)
    got = OnnxModel(onnx_dir).predict_arrays(data.numeric.numpy(), data.categorical.numpy())
    diffs = {}
    for t in spec.targets:
        onnx_out = kind_of(t).to_raw(t, got[t.name])
        diffs[t.name] = float(np.max(np.abs(onnx_out - expected[t.name]))) if len(data) else 0.0
    report = ParityReport(len(data), atol, diffs, all(d <= atol for d in diffs.values()))
    (Path(onnx_dir) / PARITY_FILE).write_text(json.dumps(asdict(report), indent=1))
    if not report.ok:
        raise ParityError(f"ONNX parity failed on {report.rows} rows (atol {atol}): {diffs}")
    return report
