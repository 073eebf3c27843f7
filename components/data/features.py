"""`FeatureSpec`: the preprocessing contract shared by training, export and serving.

Fitted on the training window only, saved as JSON (never pickled). Numeric
features are standardised with a null indicator; categorical features map to
vocabulary indices with reserved slots for out-of-vocabulary and null values.
Task targets are described here too: class names, and the scaling that
regression heads are trained in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import repeat
from pathlib import Path
from types import NoneType
from typing import Any

import numpy as np
import pandas as pd

from components.config.schema import ProjectConfig, TaskSpec
from components.config.tasks import head_width, kind_of
from components.data.tables import label_column

SPEC_FILE = "feature_spec.json"
OOV_INDEX = 0  # unseen or rare category
NULL_INDEX = 1  # missing category
FIRST_VALUE_INDEX = 2


@dataclass(frozen=True)
class NumericStats:
    name: str
    mean: float
    std: float
    allow_null: bool
    min: float | None = None  # the config's declared range and integrality, enforced at serving
    max: float | None = None
    integer: bool = False


@dataclass(frozen=True)
class Vocabulary:
    name: str
    values: list[str]  # index = FIRST_VALUE_INDEX + position
    allow_null: bool
    null_index: int = NULL_INDEX  # OOV_INDEX for `nulls: unknown`: a null looks like an unseen value

    @property
    def size(self) -> int:
        return FIRST_VALUE_INDEX + len(self.values)


@dataclass(frozen=True)
class TargetSpec:
    name: str
    type: str
    classes: list[str] = field(default_factory=list)  # class-label types (multiclass, ordinal) only
    mean: float = 0.0  # regression: heads predict (f(y) - mean) / std, f the task's transform
    std: float = 1.0
    threshold: float = 0.5  # binary decision threshold
    transform: str = "standardize"  # regression: standardize (f = identity) | log1p (f = log1p) | none
    # classification: the logits' divisor fitted on validation (components/training/calibration.py); kept in the model's
    # temperatures.json, not in the spec file, so a warm-started model keeps its champion's spec
    temperature: float = 1.0

    @property
    def width(self) -> int:
        """Columns of the task's head output."""
        return head_width(self.type, len(self.classes))


def _fit_target(task: TaskSpec, train: pd.DataFrame) -> TargetSpec:
    return TargetSpec(task.name, task.type, **kind_of(task).fit(task, train[label_column(task.name)]))


@dataclass(frozen=True)
class FeatureSpec:
    numeric: list[NumericStats]
    categorical: list[Vocabulary]
    targets: list[TargetSpec]

    # --- fitting ---------------------------------------------------------

    @classmethod
    def fit(cls, train: pd.DataFrame, cfg: ProjectConfig) -> FeatureSpec:
        numeric = []
        for f in cfg.features.numeric:
            x = pd.to_numeric(train[f.name], errors="coerce").astype("float64")
            seen = x.notna().any()
            mean, std = (float(np.nanmean(x)), float(np.nanstd(x))) if seen else (0.0, 1.0)
            numeric.append(NumericStats(f.name, mean, std if std > 1e-12 else 1.0, f.allow_null,
                                        f.min, f.max, f.integer))
        categorical = []
        for f in cfg.features.categorical:
            counts = train[f.name].dropna().astype(str).value_counts()
            counts = counts[counts >= f.min_frequency]
            if f.max_categories:
                counts = counts.iloc[: f.max_categories]
            # sort by frequency, then value, so the vocabulary is deterministic
            values = sorted(counts.index.tolist(), key=lambda v: (-counts[v], v))
            categorical.append(Vocabulary(f.name, values, f.allow_null,
                                          NULL_INDEX if f.nulls == "own" else OOV_INDEX))
        return cls(numeric, categorical, [_fit_target(t, train) for t in cfg.tasks])

    def with_tasks(self, train: pd.DataFrame, cfg: ProjectConfig) -> FeatureSpec:
        """This spec's features with the config's tasks, for a warm start: a task the spec has keeps its target
        (the scale its trained head predicts in), a new task's target is fitted on `train`, and a task the config
        no longer has goes."""
        have = {t.name: t for t in self.targets}
        for task in cfg.tasks:
            if task.name in have and have[task.name].type != task.type:
                raise ValueError(f"task '{task.name}' is {have[task.name].type} in the warm start's model and "
                                 f"{task.type} in the config: a head cannot change its type; give the task a new "
                                 "name (and retire the old one) or train from scratch")
        return replace(self, targets=[have.get(t.name) or _fit_target(t, train) for t in cfg.tasks])

    # --- transforming ----------------------------------------------------

    @property
    def numeric_width(self) -> int:
        """Standardised values followed by one null indicator per numeric feature."""
        return 2 * len(self.numeric)

    @property
    def feature_names(self) -> list[str]:
        return [n.name for n in self.numeric] + [c.name for c in self.categorical]

    def transform_numeric(self, df: pd.DataFrame) -> np.ndarray:
        if not self.numeric:
            return np.zeros((len(df), 0), dtype=np.float32)
        raw = np.column_stack([pd.to_numeric(df[n.name], errors="coerce").to_numpy(np.float64) for n in self.numeric])
        mean = np.array([n.mean for n in self.numeric])
        std = np.array([n.std for n in self.numeric])
        null = ~np.isfinite(raw)
        z = np.where(null, 0.0, (np.where(null, 0.0, raw) - mean) / std)
        return np.concatenate([z, null.astype(np.float64)], axis=1).astype(np.float32)

    def transform_categorical(self, df: pd.DataFrame) -> tuple[np.ndarray, dict[str, int]]:
        """Vocabulary indices, and the number of out-of-vocabulary values per feature."""
        cols, oov = [], {}
        for v in self.categorical:
            lookup = {val: FIRST_VALUE_INDEX + i for i, val in enumerate(v.values)}
            s = df[v.name]
            isnull = s.isna().to_numpy()
            idx = s.astype(str).map(lookup).fillna(OOV_INDEX).to_numpy(np.int64)
            idx[isnull] = v.null_index
            oov[v.name] = int(((idx == OOV_INDEX) & ~isnull).sum())
            cols.append(idx)
        if not cols:
            return np.zeros((len(df), 0), dtype=np.int64), oov
        return np.column_stack(cols), oov

    def transform_targets(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Float targets with NaN where the label is missing (masked in the loss).
        Class labels are class indices, regression targets standardised."""
        return {t.name: kind_of(t).encode(t, df[label_column(t.name)]) for t in self.targets}

    def record_encoder(self) -> RecordEncoder:
        return RecordEncoder(self)

    # --- serialisation ---------------------------------------------------

    def to_json(self) -> str:
        raw = asdict(self)
        for target in raw["targets"]:
            del target["temperature"]
        return json.dumps(raw, indent=1)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        return cls(
            numeric=[NumericStats(**n) for n in raw["numeric"]],
            categorical=[Vocabulary(**c) for c in raw["categorical"]],
            targets=[TargetSpec(**t) for t in raw["targets"]],
        )

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        return cls.from_json(Path(path).read_text())


@dataclass(frozen=True)
class EncodedRecords:
    """A batch of records as the model takes them, and as they were received (what the prediction
    log keeps: columns, not one Python dict per record)."""

    numeric: np.ndarray  # float32 [n, 2 * n_numeric]: standardised values, then null flags
    categorical: np.ndarray  # int64 [n, n_categorical]: vocabulary indices
    oov: np.ndarray  # int64 [n_categorical]: out-of-vocabulary values per feature
    raw_numeric: np.ndarray  # float64 [n, n_numeric]: the values received, NaN for null
    raw_categorical: list[list[str | None]]  # per categorical feature: the values received, as strings


class RecordEncoder:
    """`transform_numeric` + `transform_categorical` for records as they arrive (mappings of
    plain Python values), in NumPy and dict lookups only: serving encodes every request with it,
    because pandas costs ~100x the model per request. Gives the same arrays as the batch path
    (tests/test_features_model.py checks it over random records)."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.numeric_names = [n.name for n in spec.numeric]
        self.categorical_names = [c.name for c in spec.categorical]
        self.mean = np.array([n.mean for n in spec.numeric], dtype=np.float64)
        self.std = np.array([n.std for n in spec.numeric], dtype=np.float64)
        # None (null) maps to the feature's null index, which is OOV_INDEX under `nulls: unknown`
        self.lookups = [{val: FIRST_VALUE_INDEX + i for i, val in enumerate(c.values)} | {None: c.null_index}
                        for c in spec.categorical]
        self.nulls_look_unseen = [c.null_index == OOV_INDEX for c in spec.categorical]

    def encode(self, records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numeric float32 [n, 2 * n_numeric], categorical int64 [n, n_categorical],
        out-of-vocabulary counts int64 [n_categorical]). None is null; so is NaN for numerics."""
        encoded = self.encode_records(records)
        return encoded.numeric, encoded.categorical, encoded.oov

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> EncodedRecords:
        """`encode`, keeping the values as received."""
        raw = np.array([[r[k] for k in self.numeric_names] for r in records], dtype=np.float64)
        return self.encode_columns(raw.reshape(len(records), len(self.numeric_names)),
                                   [[r[name] for r in records] for name in self.categorical_names])

    def encode_columns(self, raw: np.ndarray, categorical: Sequence[Sequence[str | int | None]]) -> EncodedRecords:
        """`encode_records` for a batch already split into columns: the numeric values as float64
        [n, n_numeric] (NaN for null) and one list per categorical feature. Each categorical column is
        one pass of dict lookups in C (`map`) and all columns one array: no Python loop per value, and
        few NumPy calls (each costs microseconds, which a one-record request feels)."""
        n = len(raw)
        null = ~np.isfinite(raw)
        z = np.where(null, 0.0, (np.where(null, 0.0, raw) - self.mean) / self.std)
        numeric = np.concatenate([z, null], axis=1).astype(np.float32)
        received: list[list[str | None]] = [
            list(column) if set(map(type, column)) <= {str, NoneType} else
            [v if v is None or isinstance(v, str) else str(v) for v in column] for column in categorical]
        indices = [list(map(lookup.get, values, repeat(OOV_INDEX))) for lookup, values in zip(self.lookups, received,
                                                                                            strict=True)]
        oov = np.array([idx.count(OOV_INDEX) - (values.count(None) if unseen else 0) for idx, values, unseen
                        in zip(indices, received, self.nulls_look_unseen, strict=True)], dtype=np.int64)
        codes = np.array(indices, dtype=np.int64).reshape(len(indices), n).T.copy()
        return EncodedRecords(numeric, codes, oov, raw, received)
