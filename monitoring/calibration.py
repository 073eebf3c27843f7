"""Drift thresholds learned from the reference's own variation.

Evidently's defaults (Wasserstein / Jensen-Shannon at 0.1) are one threshold for every column.
On flights that flags every hourly-weather feature in every month, the training months
themselves included, because weather is seasonal and shared by all flights of an airport-hour.
Here each column gets its own threshold: the reference (a time-ordered sample of the training
window) is cut into contiguous time blocks, each block's drift score against the rest of the
reference is computed with the very Evidently stat test the report uses, and the threshold is a
high quantile (`monitoring.calibration_quantile`, default 0.99) of that null distribution.
A window that looks like "one more stretch of the training period" therefore raises no drift.

The calibration is saved as `calibration.json` beside the model's `reference.parquet`, so it
travels with the model version; it is recomputed when the settings that shape it change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests import get_stattest
from evidently.legacy.core import ColumnType

from components.config.schema import ProjectConfig

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class ColumnThreshold:
    method: str  # Evidently stat-test name, e.g. "wasserstein"
    p_value: bool  # the score is a p-value (drift when below) rather than a distance (drift when above)
    threshold: float
    null_median: float  # the typical score between two stretches of the reference


@dataclass(frozen=True)
class Calibration:
    model_version: str
    quantile: float
    blocks: int
    draws: int
    columns: dict[str, ColumnThreshold]  # feature or monitored prediction column -> threshold

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        raw = json.loads(text)
        return cls(**{**raw, "columns": {c: ColumnThreshold(**v) for c, v in raw["columns"].items()}})

    def settings_match(self, cfg: ProjectConfig, model_version: str) -> bool:
        mon = cfg.monitoring
        return (self.model_version, self.quantile, self.blocks, self.draws) == (
            model_version, mon.calibration_quantile, mon.calibration_blocks, mon.calibration_draws)


def calibrate(cfg: ProjectConfig, reference: pd.DataFrame, column_types: dict[str, str],
              methods: dict[str, str | None], model_version: str, seed: int = 0) -> Calibration:
    """Per column of `reference` (already prepared as the report sees it: categoricals bucketed),
    the `calibration_quantile` of the drift score between a random contiguous time block
    (1 / `calibration_blocks` of the rows) and the rest of the reference, over
    `calibration_draws` blocks. `column_types`: column -> "num" or "cat"; `methods`: column ->
    Evidently stat test (None: Evidently's default for the column's type and the reference's size)."""
    mon = cfg.monitoring
    n = len(reference)
    size = max(n // mon.calibration_blocks, 2)
    starts = np.random.default_rng(seed).integers(0, n - size + 1, size=mon.calibration_draws)
    columns = {}
    for column, kind in column_types.items():
        values = reference[column].reset_index(drop=True)
        feature_type = ColumnType.Numerical if kind == "num" else ColumnType.Categorical
        test = get_stattest(values, values, feature_type, methods.get(column))
        scores = []
        for s in starts:
            block = values.iloc[s:s + size]
            rest = pd.concat([values.iloc[:s], values.iloc[s + size:]])
            scores.append(float(test(rest.dropna(), block.dropna(), feature_type, None).drift_score))
        is_p = "p_value" in test.display_name.lower()
        null = np.asarray(scores)
        threshold = float(np.quantile(null, 1 - mon.calibration_quantile) if is_p
                          else np.quantile(null, mon.calibration_quantile))
        columns[column] = ColumnThreshold(test.name, is_p, threshold, float(np.median(null)))
    return Calibration(model_version, mon.calibration_quantile, mon.calibration_blocks, mon.calibration_draws,
                       columns)


def stored_calibration(folder: Path, cfg: ProjectConfig, model_version: str) -> Calibration | None:
    """The calibration saved beside the model's reference, if it was made with today's settings."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    if "columns" not in raw:  # a model exported before the temperatures moved to temperatures.json: not ours
        return None
    found = Calibration.from_json(path.read_text())
    return found if found.settings_match(cfg, model_version) else None


def save_calibration(folder: Path, calibration: Calibration) -> Path:
    path = Path(folder) / CALIBRATION_FILE
    path.write_text(calibration.to_json())
    return path
