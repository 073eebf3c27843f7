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
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, create_model

from components.artifacts.inference import ONNX_FILE
from components.config.tasks import kind_of
from components.data.features import SPEC_FILE, FeatureSpec, NumericStats
from serving.canary import CanaryBudget


class ModelLoadError(RuntimeError):
    """A model version that cannot be served: missing, unreadable, failed warm-up, or incompatible."""


@dataclass(frozen=True)
class ServingSettings:
    model_name: str
    max_rows: int = 1024
    max_body_bytes: int = 8 * 1024 * 1024
    prediction_log: Path | None = None
    log_flush_seconds: float = 2.0
    log_max_buffered_batches: int = 100_000  # kept while the disk refuses writes; beyond, the oldest go (counted)
    # every this often one worker merges each hour's log parts once they are `log_compact_after_seconds` old,
    # removes date partitions older than `log_retention_days` (0: keeps them) and publishes the disk use; 0: never
    log_maintenance_seconds: float = 60.0
    log_compact_after_seconds: float = 3600.0
    log_retention_days: int = 0
    admin_token: str | None = None
    workers: int = 1
    ort_threads: int = 0  # 0: ONNX Runtime's default (all cores)
    max_batch_size: int = 1024  # rows in one ONNX call
    max_latency_ms: float = 0.0  # how long a queued request waits for others to join its batch
    control_dir: Path | None = None  # where the workers agree on the version to serve
    # the readiness probe a load balancer runs (infra/k8s: the Deployment's readinessProbe): after SIGTERM the
    # service keeps answering, not ready, until the probe has failed `failure_threshold` times, plus one period
    readiness_period_seconds: float = 2.0
    readiness_failure_threshold: int = 2
    stall_seconds: float = 5.0  # a worker's event loop silent this long: the server reports not ready
    restart_after_seconds: float = 10.0  # ... and this much longer: the watchdog kills it (BentoML starts another)
    max_category_chars: int = 256  # a categorical value longer than this is refused (400), not logged
    access_log: bool = False  # a line per request costs ~10% of throughput; the prediction log has every record
    trace_predictions: bool = False  # OpenTelemetry spans for /predict cost ~25% of throughput
    shadow_share: float = 1.0  # share of answered requests the registry's shadow version also scores; 0: none
    # a share of requests the shadow version answers itself, rolled back on its own past its budget (serving/canary.py)
    canary: CanaryBudget = field(default_factory=CanaryBudget)

    @property
    def drain_seconds(self) -> float:
        """How long SIGTERM keeps answering while reporting not ready: long enough for the readiness
        probe to fail `readiness_failure_threshold` times in a row, plus one period for the load
        balancer to act on it (Kubernetes: the endpoint controller removes the pod)."""
        return self.readiness_period_seconds * (self.readiness_failure_threshold + 1)

    @classmethod
    def from_env(cls) -> ServingSettings:
        env = os.environ
        if not env.get("MTLOPS_MODEL_NAME"):
            raise ModelLoadError("MTLOPS_MODEL_NAME is not set: name the registered model to serve "
                                 "(`mtlops serve --config ...` sets it from the config)")
        log, control = env.get("MTLOPS_PREDICTION_LOG"), env.get("MTLOPS_CONTROL_DIR")
        share = float(env.get("MTLOPS_SHADOW_SHARE", cls.shadow_share))
        canary = CanaryBudget(float(env.get("MTLOPS_CANARY_SHARE", CanaryBudget.share)),
                              float(env.get("MTLOPS_CANARY_MAX_ERROR_RATIO", CanaryBudget.max_error_ratio)),
                              float(env.get("MTLOPS_CANARY_MAX_LATENCY_RATIO", CanaryBudget.max_latency_ratio)),
                              int(env.get("MTLOPS_CANARY_MIN_REQUESTS", CanaryBudget.min_requests)))
        for name, value in (("MTLOPS_SHADOW_SHARE", share), ("MTLOPS_CANARY_SHARE", canary.share)):
            if not 0.0 <= value <= 1.0:
                raise ModelLoadError(f"{name} must be a share within [0, 1], not {value:g}")
        return cls(
            model_name=env["MTLOPS_MODEL_NAME"],
            max_rows=int(env.get("MTLOPS_MAX_ROWS", cls.max_rows)),
            max_body_bytes=int(env.get("MTLOPS_MAX_BODY_BYTES", cls.max_body_bytes)),
            prediction_log=Path(log) if log else None,
            log_flush_seconds=float(env.get("MTLOPS_LOG_FLUSH_SECONDS", cls.log_flush_seconds)),
            log_max_buffered_batches=int(env.get("MTLOPS_LOG_MAX_BUFFERED_BATCHES", cls.log_max_buffered_batches)),
            log_maintenance_seconds=float(env.get("MTLOPS_LOG_MAINTENANCE_SECONDS", cls.log_maintenance_seconds)),
            log_compact_after_seconds=float(env.get("MTLOPS_LOG_COMPACT_AFTER_SECONDS",
                                                    cls.log_compact_after_seconds)),
            log_retention_days=int(env.get("MTLOPS_LOG_RETENTION_DAYS", cls.log_retention_days)),
            admin_token=env.get("MTLOPS_ADMIN_TOKEN") or None,
            workers=int(env.get("MTLOPS_WORKERS", cls.workers)),
            ort_threads=int(env.get("MTLOPS_ORT_THREADS", cls.ort_threads)),
            max_batch_size=int(env.get("MTLOPS_MAX_BATCH_SIZE", cls.max_batch_size)),
            max_latency_ms=float(env.get("MTLOPS_MAX_LATENCY_MS", cls.max_latency_ms)),
            control_dir=Path(control) if control else None,
            readiness_period_seconds=float(env.get("MTLOPS_READINESS_PERIOD_SECONDS", cls.readiness_period_seconds)),
            readiness_failure_threshold=int(env.get("MTLOPS_READINESS_FAILURE_THRESHOLD",
                                                    cls.readiness_failure_threshold)),
            stall_seconds=float(env.get("MTLOPS_STALL_SECONDS", cls.stall_seconds)),
            restart_after_seconds=float(env.get("MTLOPS_RESTART_AFTER_SECONDS", cls.restart_after_seconds)),
            max_category_chars=int(env.get("MTLOPS_MAX_CATEGORY_CHARS", cls.max_category_chars)),
            access_log=env.get("MTLOPS_ACCESS_LOG", "0").lower() in ("1", "true", "yes"),
            trace_predictions=env.get("MTLOPS_TRACE_PREDICTIONS", "0").lower() in ("1", "true", "yes"),
            shadow_share=share,
            canary=canary,
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

    def outputs(self, stacked: np.ndarray, tasks: list[str] | None) -> list[dict[str, Any]]:
        """Split the stacked head outputs per task, in the user's terms."""
        per_record: list[dict[str, Any]] = [{} for _ in range(len(stacked))]
        start = 0
        for t, width in zip(self.spec.targets, self.head_widths, strict=True):
            block = stacked[:, start:start + width]
            start += width
            if tasks and t.name not in tasks:
                continue
            kind = kind_of(t)
            for rec, answer in zip(per_record, kind.answers(t, kind.block(block)), strict=True):
                rec[t.name] = answer
        return per_record

    def raw_outputs(self, stacked: np.ndarray) -> dict[str, np.ndarray]:
        """The stacked block back as the ONNX graph's named outputs."""
        out, start = {}, 0
        for t, width in zip(self.spec.targets, self.head_widths, strict=True):
            block = stacked[:, start:start + width]
            out[t.name] = kind_of(t).block(block)
            start += width
        return out


def load_champion(model_name: str) -> ServedModel:
    from components.artifacts import registry

    model = registry.champion(model_name)
    if model is None:
        raise ModelLoadError(f"no champion for model {model_name!r} in the model store "
                             f"({os.environ.get('BENTOML_HOME', '~/bentoml')}): run `mtlops run` first")
    return load_version(str(model.tag))


def shadow_tag(model_name: str) -> str | None:
    """The registry's shadow version of the model, if any."""
    from components.artifacts import registry

    model = registry.shadow(model_name)
    return str(model.tag) if model is not None else None


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


def warm_up_records(spec: FeatureSpec, n: int = 4) -> list[dict[str, Any]]:
    """Synthetic records: every numeric at its training mean, every category unknown."""
    record = {n.name: n.mean for n in spec.numeric} | {c.name: "__warm_up__" for c in spec.categorical}
    return [record] * n


# --- the request schema -------------------------------------------------------

FLOAT32_MAX = float(np.finfo(np.float32).max)
INT64 = (-(2**63), 2**63 - 1)


def category_type(max_chars: int) -> Any:
    """A categorical value: a string of at most `max_chars` characters, or an integer within int64."""
    return Annotated[StrictStr, Field(max_length=max_chars)] | Annotated[int, Field(strict=True, ge=INT64[0],
                                                                                  le=INT64[1])]


def number_type(n: NumericStats) -> Any:
    """A JSON number within the config's declared range (float32's where none is declared),
    whole where the feature is integer-like. Strict: "3" is not a number; NaN and ±Infinity are refused."""
    lo = n.min if n.min is not None else -FLOAT32_MAX
    hi = n.max if n.max is not None else FLOAT32_MAX
    return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=lo, le=hi,
                                  multiple_of=1 if n.integer else None)]


def record_model(spec: FeatureSpec, max_category_chars: int = ServingSettings.max_category_chars) -> type[BaseModel]:
    """One record: every feature required (null where the spec allows it), nothing else."""
    fields: dict[str, Any] = {}
    category = category_type(max_category_chars)
    for n in spec.numeric:
        kind = number_type(n) | None if n.allow_null else number_type(n)
        what = "whole number" if n.integer else "number"
        fields[n.name] = (kind, Field(description=f"numeric feature, a {what}"
                                                  f"{' (null allowed)' if n.allow_null else ''}"))
    for c in spec.categorical:
        kind = category | None if c.allow_null else category
        fields[c.name] = (kind, Field(description=f"categorical feature, {len(c.values)} known values; "
                                                  "unknown values are accepted (out-of-vocabulary); "
                                                  f"strings of at most {max_category_chars} characters"))
    return create_model("Record", __config__=ConfigDict(extra="forbid"), **fields)


def task_name_type(spec: FeatureSpec) -> Any:
    return Literal[tuple(t.name for t in spec.targets)]  # type: ignore[valid-type]


TASKS_FILTER = ("answer only these tasks (default: every task); a new task's answer is added to each record's "
                "predictions, and a task retired from the model gets a 400 naming the version that retired it")


def retired_task_asked(error: ValidationError, model: ServedModel) -> tuple[str, list[str | int]] | None:
    """A request's `tasks` filter naming a task the model no longer has: the message and where it is."""
    retired = model.metadata.get("retired_tasks", {})
    for e in error.errors(include_url=False):
        if e["loc"][:1] == ("tasks",) and isinstance(e["input"], str) and e["input"] in retired:
            known = [t.name for t in model.spec.targets]
            return (f"task {e['input']!r} was retired by model version {retired[e['input']]}: ask for any of "
                    f"{known}", list(e["loc"]))
    return None


def request_model(record: type[BaseModel], spec: FeatureSpec, max_rows: int) -> type[BaseModel]:
    """The /predict body: 1 to `max_rows` records, and optionally the tasks to answer."""
    return create_model(
        "Input", __config__=ConfigDict(extra="forbid"),
        records=(Annotated[list[record], Field(min_length=1, max_length=max_rows)], ...),  # type: ignore[valid-type]
        tasks=(Annotated[list[task_name_type(spec)] | None, Field(min_length=1, description=TASKS_FILTER)],  # type: ignore[valid-type]
               None))
