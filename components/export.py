"""Export the trained model to one ONNX graph and prove it computes what PyTorch does.

Inputs: `numeric` float32 [batch, 2 * n_numeric] and `categorical` int64
[batch, n_categorical], both from the `FeatureSpec`. Outputs: one tensor per
task, named after it: logits (binary [batch], multiclass [batch, C]) or values
in original units (regression [batch]).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch

from components.features import FeatureSpec
from components.model import ExportModule
from components.train import CONFIG, SPEC, SUMMARY, load_trained, to_tensors

ONNX_FILE = "model.onnx"
PARITY_FILE = "parity.json"


class ParityError(RuntimeError):
    """The ONNX graph does not reproduce PyTorch's outputs."""


@dataclass(frozen=True)
class ParityReport:
    rows: int
    atol: float
    max_abs_diff: dict[str, float]
    ok: bool


def onnx_session(path: Path, threads: int | None = None):  # type: ignore[no-untyped-def]
    """An ONNX Runtime session, CUDA first when this build and machine have it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=onnx_providers())


def onnx_providers() -> list[str]:
    """CUDA then CPU where an NVIDIA driver is loaded, else CPU: onnxruntime-gpu lists
    CUDA as available even on machines that cannot load it. MTLOPS_ORT_PROVIDERS
    (comma-separated) overrides."""
    import onnxruntime as ort

    if os.environ.get("MTLOPS_ORT_PROVIDERS"):
        return os.environ["MTLOPS_ORT_PROVIDERS"].split(",")
    wanted = ["CPUExecutionProvider"]
    if Path("/proc/driver/nvidia/version").exists():
        wanted.insert(0, "CUDAExecutionProvider")
    return [p for p in wanted if p in ort.get_available_providers()]


class OnnxModel:
    """An exported model folder (ONNX + FeatureSpec) that scores DataFrames."""

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        self.dir = Path(model_dir)
        self.spec = FeatureSpec.load(self.dir / SPEC)
        self.session = onnx_session(self.dir / ONNX_FILE, threads)
        self.task_names = [o.name for o in self.session.get_outputs()]

    def predict_arrays(self, numeric: np.ndarray, categorical: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {"numeric": numeric, "categorical": categorical})
        return dict(zip(self.task_names, outs, strict=True))

    def predict_frame(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        cat, _ = self.spec.transform_categorical(df)
        return self.predict_arrays(self.spec.transform_numeric(df), cat)


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
    for name in (SPEC, CONFIG, SUMMARY):
        shutil.copy(Path(model_dir) / name, out_dir / name)
    return path


def check_parity(model_dir: Path, onnx_dir: Path, test: pd.DataFrame, rows: int, atol: float) -> ParityReport:
    """Max |ONNX - PyTorch| per task on the first `rows` test rows (logits; regression
    values compared in the standardised space the head computes in)."""
    model, spec, _ = load_trained(model_dir)
    data = to_tensors(test.head(rows), spec)
    with torch.no_grad():
        expected = model(data.numeric, data.categorical)
    got = OnnxModel(onnx_dir).predict_arrays(data.numeric.numpy(), data.categorical.numpy())
    diffs = {}
    for t in spec.targets:
        onnx_out = got[t.name]
        if t.type == "regression":
            onnx_out = (onnx_out - t.mean) / t.std
        diffs[t.name] = float(np.max(np.abs(onnx_out - expected[t.name].numpy()))) if len(data) else 0.0
    report = ParityReport(len(data), atol, diffs, all(d <= atol for d in diffs.values()))
    (Path(onnx_dir) / PARITY_FILE).write_text(json.dumps(asdict(report), indent=1))
    if not report.ok:
        raise ParityError(f"ONNX parity failed on {report.rows} rows (atol {atol}): {diffs}")
    return report
