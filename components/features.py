"""`FeatureSpec`: the preprocessing contract shared by training, export and serving.

Fitted on the training window only, saved as JSON (never pickled). Numeric
features are standardised with a null indicator; categorical features map to
vocabulary indices with reserved slots for out-of-vocabulary and null values.
Task targets are described here too: class names, and the scaling that
regression heads are trained in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import ProjectConfig
from components.data import label_column
from components.tasks import head_width

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


@dataclass(frozen=True)
class Vocabulary:
    name: str
    values: list[str]  # index = FIRST_VALUE_INDEX + position
    allow_null: bool

    @property
    def size(self) -> int:
        return FIRST_VALUE_INDEX + len(self.values)


@dataclass(frozen=True)
class TargetSpec:
    name: str
    type: str
    classes: list[str] = field(default_factory=list)  # multiclass only
    mean: float = 0.0  # regression: heads predict (y - mean) / std
    std: float = 1.0
    threshold: float = 0.5  # binary decision threshold

    @property
    def width(self) -> int:
        """Columns of the task's head output."""
        return head_width(self.type, len(self.classes))


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
            numeric.append(NumericStats(f.name, mean, std if std > 1e-12 else 1.0, f.allow_null))
        categorical = []
        for f in cfg.features.categorical:
            counts = train[f.name].dropna().astype(str).value_counts()
            counts = counts[counts >= f.min_frequency]
            if f.max_categories:
                counts = counts.iloc[: f.max_categories]
            # sort by frequency, then value, so the vocabulary is deterministic
            values = sorted(counts.index.tolist(), key=lambda v: (-counts[v], v))
            categorical.append(Vocabulary(f.name, values, f.allow_null))
        targets = []
        for t in cfg.tasks:
            y = train[label_column(t.name)]
            if t.type == "multiclass":
                classes = list(t.classes) if t.classes else sorted(y.dropna().astype(str).unique().tolist())
                if t.label.op == "bins" and not t.classes:
                    classes = list(t.label.names or [str(i) for i in range(len(t.label.edges or []) + 1)])
                targets.append(TargetSpec(t.name, t.type, classes=classes))
            elif t.type == "regression":
                yv = y.astype("float64")
                std = float(np.nanstd(yv))
                targets.append(TargetSpec(t.name, t.type, mean=float(np.nanmean(yv)), std=std if std > 1e-12 else 1.0))
            else:
                targets.append(TargetSpec(t.name, t.type, threshold=t.threshold))
        return cls(numeric, categorical, targets)

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
            idx[isnull] = NULL_INDEX
            oov[v.name] = int(((idx == OOV_INDEX) & ~isnull).sum())
            cols.append(idx)
        if not cols:
            return np.zeros((len(df), 0), dtype=np.int64), oov
        return np.column_stack(cols), oov

    def transform_targets(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Float targets with NaN where the label is missing (masked in the loss).
        Multiclass targets are class indices, regression targets standardised."""
        out = {}
        for t in self.targets:
            y = df[label_column(t.name)]
            if t.type == "multiclass":
                lookup = {c: float(i) for i, c in enumerate(t.classes)}
                out[t.name] = y.dropna().astype(str).map(lookup).reindex(y.index).to_numpy(np.float32)
            elif t.type == "regression":
                out[t.name] = ((y.astype("float64").to_numpy() - t.mean) / t.std).astype(np.float32)
            else:
                out[t.name] = y.astype("float64").to_numpy().astype(np.float32)
        return out

    # --- serialisation ---------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

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
