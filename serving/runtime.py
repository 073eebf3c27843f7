"""Everything the service needs besides BentoML itself: settings, the request schema
generated from the `FeatureSpec`, the loaded model snapshot, and response formatting.

The request schema is fixed when the service starts (it is its OpenAPI contract), so a
reload accepts only a model with the same features and tasks; anything else needs a
restart.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, create_model

from components.artifacts.inference import ONNX_FILE
from components.config.base import ConfigError
from components.config.schema import ServingSpec
from components.config.tasks import kind_of
from components.data.features import SPEC_FILE, FeatureSpec, NumericStats


class ModelLoadError(RuntimeError):
    """A model version that cannot be served: missing, unreadable, failed warm-up, or incompatible."""


SETTINGS_VARIABLE = "MTLOPS_SERVING"  # the resolved `serving:` section, as JSON (`mtlops serve`, `mtlops bento`)


def override_variables(model: type[BaseModel] = ServingSpec, prefix: str = "MTLOPS_",
                       path: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """`MTLOPS_<OPTION>` -> the option's path in the `serving:` section, for every option (a nested
    section's options: `MTLOPS_CANARY_SHARE` -> ("canary", "share")). Named after the fields, so an
    option added to the spec is overridable without a line here."""
    found = {}
    for name, spec in model.model_fields.items():
        if isinstance(spec.annotation, type) and issubclass(spec.annotation, BaseModel):
            found |= override_variables(spec.annotation, f"{prefix}{name.upper()}_", (*path, name))
        else:
            found[f"{prefix}{name.upper()}"] = (*path, name)
    return found


def with_overrides(base: ServingSpec, env: Mapping[str, str],
                   flags: Mapping[str, Any] | None = None) -> ServingSpec:
    """`base` with each `MTLOPS_<OPTION>` set in `env` over it, and each flag (option name -> value;
    None: not given) over both. A bad value raises ConfigError naming the option and where it came from."""
    merged = base.model_dump()
    origin: dict[tuple[str, ...], str] = {}
    given = [(path, env[variable], variable) for variable, path in override_variables().items() if variable in env]
    given += [((name,), value, f"--{name.replace('_', '-')}") for name, value in (flags or {}).items()
              if value is not None]
    for path, value, source in given:
        parent = merged
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = value
        origin[path] = source
    try:
        return ServingSpec.model_validate(merged)
    except ValidationError as err:
        lines = ["invalid serving settings:"]
        for e in err.errors():
            path = tuple(str(p) for p in e["loc"])
            source = origin.get(path, "the config")
            msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  serving.{'.'.join(path)} (from {source}): {msg}")
        raise ConfigError("\n".join(lines)) from None


def usable_cpus() -> int:
    """CPUs this process may use: the container's CPU limit (cgroup v2 `cpu.max`) where one is set,
    else the affinity mask — `os.cpu_count()` would count the node's cores inside a pod."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cpus
    return cpus if quota == "max" else max(1, min(cpus, math.ceil(int(quota) / int(period))))


class ServingSettings(ServingSpec):
    """What one server start serves with: the `serving:` options, `workers` and `ort_threads` resolved to
    counts, and the facts of the deployment the config does not hold. Read once per process, from the
    environment, by `from_env`."""

    model_name: str = Field(description="the registered model whose champion is served")
    prediction_log: Path | None = Field(None, description="the prediction log's folder (None: no log)")
    admin_token: str | None = Field(None, repr=False, description="bearer token of /admin/reload (None: disabled)")
    control_dir: Path | None = Field(None, description="where the workers agree on the version to serve")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServingSettings:
        """`MTLOPS_SERVING` (the config's section as `mtlops serve` resolved it; unset: the defaults) with
        any `MTLOPS_<OPTION>` over it, and MTLOPS_MODEL_NAME, MTLOPS_PREDICTION_LOG, MTLOPS_ADMIN_TOKEN and
        MTLOPS_CONTROL_DIR (set by serving/server.py)."""
        if not env.get("MTLOPS_MODEL_NAME"):
            raise ModelLoadError("MTLOPS_MODEL_NAME is not set: name the registered model to serve "
                                 "(`mtlops serve --config ...` sets it from the config)")
        base = ServingSpec.model_validate_json(env[SETTINGS_VARIABLE]) if env.get(SETTINGS_VARIABLE) else ServingSpec()
        spec = with_overrides(base, env)
        cpus = usable_cpus()
        workers = spec.workers or cpus
        log, control = env.get("MTLOPS_PREDICTION_LOG"), env.get("MTLOPS_CONTROL_DIR")
        return cls(**spec.model_dump(exclude={"workers", "ort_threads"}), workers=workers,
                   ort_threads=spec.ort_threads or max(1, cpus // workers), model_name=env["MTLOPS_MODEL_NAME"],
                   prediction_log=Path(log) if log else None, admin_token=env.get("MTLOPS_ADMIN_TOKEN") or None,
                   control_dir=Path(control) if control else None)


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


def record_model(spec: FeatureSpec,
                 max_category_chars: int = ServingSpec.model_fields["max_category_chars"].default,
                 ) -> type[BaseModel]:
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


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


def request_model(record: type[BaseModel], spec: FeatureSpec, max_rows: int,
                  base: type[BaseModel] = RequestBody) -> type[BaseModel]:
    """The /predict body: 1 to `max_rows` records, and optionally the tasks to answer. `base` (unknown
    keys forbidden) gives it methods; the service's is the one both of its request paths decode with."""
    return create_model(
        "Input", __base__=base,
        records=(Annotated[list[record], Field(min_length=1, max_length=max_rows)], ...),  # type: ignore[valid-type]
        tasks=(Annotated[list[task_name_type(spec)] | None, Field(min_length=1, description=TASKS_FILTER)],  # type: ignore[valid-type]
               None))
