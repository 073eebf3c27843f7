"""Everything the service needs besides BentoML itself: settings, the request schema
generated from the `FeatureSpec`, the loaded model snapshot, and response formatting.

The request schema is fixed when the service starts (it is its OpenAPI contract), so a
reload accepts only a model with the same features and tasks; anything else needs a
restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model

from components.features import SPEC_FILE, FeatureSpec
from components.inference import ONNX_FILE
from components.predictions import sigmoid, softmax


class ModelLoadError(RuntimeError):
    """A model version that cannot be served: missing, unreadable, failed warm-up, or incompatible."""


@dataclass(frozen=True)
class ServingSettings:
    model_name: str
    max_rows: int = 1024
    max_body_bytes: int = 8 * 1024 * 1024
    prediction_log: Path | None = None
    log_flush_seconds: float = 2.0
    admin_token: str | None = None
    ort_threads: int = 0  # 0: ONNX Runtime's default (all cores)
    max_batch_size: int = 4096
    max_latency_ms: int = 5000

    @classmethod
    def from_env(cls) -> ServingSettings:
        env = os.environ
        if not env.get("MTLOPS_MODEL_NAME"):
            raise ModelLoadError("MTLOPS_MODEL_NAME is not set: name the registered model to serve "
                                 "(`mtlops serve --config ...` sets it from the config)")
        log = env.get("MTLOPS_PREDICTION_LOG")
        return cls(
            model_name=env["MTLOPS_MODEL_NAME"],
            max_rows=int(env.get("MTLOPS_MAX_ROWS", cls.max_rows)),
            max_body_bytes=int(env.get("MTLOPS_MAX_BODY_BYTES", cls.max_body_bytes)),
            prediction_log=Path(log) if log else None,
            log_flush_seconds=float(env.get("MTLOPS_LOG_FLUSH_SECONDS", cls.log_flush_seconds)),
            admin_token=env.get("MTLOPS_ADMIN_TOKEN") or None,
            ort_threads=int(env.get("MTLOPS_ORT_THREADS", cls.ort_threads)),
            max_batch_size=int(env.get("MTLOPS_MAX_BATCH_SIZE", cls.max_batch_size)),
            max_latency_ms=int(env.get("MTLOPS_MAX_LATENCY_MS", cls.max_latency_ms)),
        )


@dataclass(frozen=True)
class ServedModel:
    """One model version as the service sees it: tag, folder, spec and store metadata."""

    tag: str
    path: Path
    spec: FeatureSpec
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def signature(self) -> tuple:
        """What the request schema and the output layout depend on."""
        return (
            tuple((n.name, n.allow_null) for n in self.spec.numeric),
            tuple((c.name, c.allow_null) for c in self.spec.categorical),
            tuple((t.name, t.type, tuple(t.classes)) for t in self.spec.targets),
        )

    @property
    def head_widths(self) -> list[int]:
        return [t.width for t in self.spec.targets]

    def encode(self, frame: pd.DataFrame, generation: int) -> tuple[np.ndarray, dict[str, int]]:
        """One float32 row per record: [generation, numeric..., categorical indices...]
        (the batched runner takes one array, so the indices travel as exact small floats)."""
        categorical, oov = self.spec.transform_categorical(frame)
        rows = np.concatenate([
            np.full((len(frame), 1), generation, dtype=np.float32),
            self.spec.transform_numeric(frame),
            categorical.astype(np.float32),
        ], axis=1)
        return rows, oov

    def outputs(self, stacked: np.ndarray, tasks: list[str] | None) -> list[dict[str, Any]]:
        """Split the runner's stacked head outputs per task, in the user's terms."""
        per_record: list[dict[str, Any]] = [{} for _ in range(len(stacked))]
        start = 0
        for t, width in zip(self.spec.targets, self.head_widths, strict=True):
            block = stacked[:, start:start + width]
            start += width
            if tasks and t.name not in tasks:
                continue
            if t.type == "binary":
                p = sigmoid(block[:, 0])
                for rec, pi in zip(per_record, p.tolist(), strict=True):
                    rec[t.name] = {"probability": pi, "label": int(pi >= t.threshold)}
            elif t.type == "multiclass":
                p = softmax(block)
                for rec, row in zip(per_record, p.tolist(), strict=True):
                    rec[t.name] = {"label": t.classes[int(np.argmax(row))],
                                   "probabilities": dict(zip(t.classes, row, strict=True))}
            else:
                for rec, v in zip(per_record, block[:, 0].tolist(), strict=True):
                    rec[t.name] = {"value": v}
        return per_record

    def raw_outputs(self, stacked: np.ndarray) -> dict[str, np.ndarray]:
        """The stacked block back as the ONNX graph's named outputs."""
        out, start = {}, 0
        for t, width in zip(self.spec.targets, self.head_widths, strict=True):
            block = stacked[:, start:start + width]
            out[t.name] = block if t.type == "multiclass" else block[:, 0]
            start += width
        return out


def load_champion(model_name: str) -> ServedModel:
    from components import registry

    model = registry.champion(model_name)
    if model is None:
        raise ModelLoadError(f"no champion for model {model_name!r} in the model store "
                             f"({os.environ.get('BENTOML_HOME', '~/bentoml')}): run `mtlops run` first")
    return load_version(str(model.tag))


def load_version(tag: str) -> ServedModel:
    import bentoml

    try:
        model = bentoml.models.get(tag)
        path = Path(model.path)
        if not (path / ONNX_FILE).exists():
            raise ModelLoadError(f"{tag}: no {ONNX_FILE} in the stored model")
        return ServedModel(str(model.tag), path, FeatureSpec.load(path / SPEC_FILE), dict(model.info.metadata))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{tag}: cannot load ({type(exc).__name__}: {exc})") from exc


def warm_up_rows(model: ServedModel, generation: int, n: int = 4) -> np.ndarray:
    """Synthetic records (every numeric at its training mean, every category unknown)."""
    frame = pd.DataFrame({name: [np.nan] * n for name in model.spec.feature_names})
    for s in model.spec.numeric:
        frame[s.name] = s.mean
    frame[[c.name for c in model.spec.categorical]] = "__warm_up__"
    return model.encode(frame, generation)[0]


# --- the request schema -------------------------------------------------------

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # strict: ints pass, "3" does not
Category = StrictStr | StrictInt


def record_model(spec: FeatureSpec) -> type[BaseModel]:
    """One record: every feature required (null where the spec allows it), nothing else."""
    fields: dict[str, Any] = {}
    for n in spec.numeric:
        kind = Number | None if n.allow_null else Number
        fields[n.name] = (kind, Field(description=f"numeric feature{' (null allowed)' if n.allow_null else ''}"))
    for c in spec.categorical:
        kind = Category | None if c.allow_null else Category
        fields[c.name] = (kind, Field(description=f"categorical feature, {len(c.values)} known values; "
                                                  "unknown values are accepted (out-of-vocabulary)"))
    return create_model("Record", __config__=ConfigDict(extra="forbid"), **fields)


def task_name_type(spec: FeatureSpec) -> Any:
    return Literal[tuple(t.name for t in spec.targets)]  # type: ignore[valid-type]


def records_frame(records: list[BaseModel], spec: FeatureSpec) -> pd.DataFrame:
    frame = pd.DataFrame([r.model_dump() for r in records], columns=spec.feature_names)
    for n in spec.numeric:
        frame[n.name] = frame[n.name].astype("float64")
    for c in spec.categorical:
        frame[c.name] = frame[c.name].map(lambda v: v if v is None else str(v)).astype(object)
    return frame
