"""Scoring with the exported ONNX graph: no PyTorch needed (serving, the gate, monitoring).

Inputs: `numeric` float32 [batch, 2 * n_numeric] and `categorical` int64
[batch, n_categorical], both from the `FeatureSpec`. Outputs: one tensor per
task, named after it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.features import SPEC_FILE, FeatureSpec

ONNX_FILE = "model.onnx"


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
        self.spec = FeatureSpec.load(self.dir / SPEC_FILE)
        self.session = onnx_session(self.dir / ONNX_FILE, threads)
        self.task_names = [o.name for o in self.session.get_outputs()]

    def predict_arrays(self, numeric: np.ndarray, categorical: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {"numeric": numeric, "categorical": categorical})
        return dict(zip(self.task_names, outs, strict=True))

    def predict_frame(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        cat, _ = self.spec.transform_categorical(df)
        return self.predict_arrays(self.spec.transform_numeric(df), cat)
