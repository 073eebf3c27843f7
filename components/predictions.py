"""What the model's outputs mean to a user, and the prediction log.

`prediction_frame` turns raw ONNX outputs into the user's terms, one column
group per task, named by `components.tasks` (which lists them);
`monitored_column` names the one column per task whose drift monitoring
tracks. The prediction log is the contract between serving (writer) and
monitoring (reader): parquet parts under `<log_dir>/date=YYYY-MM-DD/`, one row
per scored record with `request_id`, `record_index`, `timestamp` (UTC),
`model_version`, the features as received, and the prediction columns.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from components.config import ProjectConfig
from components.data import label_column
from components.features import FeatureSpec, TargetSpec
from components.tasks import kind_of

if TYPE_CHECKING:
    from components.inference import OnnxModel

LOG_COLUMNS = ["request_id", "record_index", "timestamp", "model_version"]
SHADOW_LOG_FOLDER = "shadow"  # the shadow version's rows (serving/shadow.py); the readers here never descend into it
REFERENCE_FILE = "reference.parquet"  # stored with every exported model: what monitoring compares against
REFERENCE_ROWS = 5000


def monitored_column(target: TargetSpec) -> str:
    return kind_of(target).monitored_column(target.name)


def task_columns(
    spec: FeatureSpec, raw: dict[str, np.ndarray], tasks: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Column name -> values for the requested tasks (default: every task in `raw`)."""
    wanted = set(tasks or raw)
    cols: dict[str, np.ndarray] = {}
    for t in spec.targets:
        if t.name in wanted:
            cols |= kind_of(t).columns(t, raw[t.name])
    return cols


def prediction_frame(spec: FeatureSpec, raw: dict[str, np.ndarray], tasks: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame(task_columns(spec, raw, tasks))


def write_log_part(frame: pd.DataFrame, log_dir: Path) -> Path | None:
    """Append one parquet part under the partition of its first record's UTC date.
    Parts are written to a temporary name and renamed, so readers never see half a file."""
    if frame.empty:
        return None
    when = pd.Timestamp(frame["timestamp"].iloc[0])
    folder = Path(log_dir) / f"date={when:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{datetime.now(UTC):%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.rename(path)
    return path


def _utc(when: datetime) -> pd.Timestamp:
    ts = pd.Timestamp(when)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def read_prediction_log(log_dir: Path, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """All logged records with since <= timestamp < until (UTC), oldest first."""
    parts = sorted(Path(log_dir).glob("date=*/*.parquet"))
    if not parts:
        return pd.DataFrame(columns=LOG_COLUMNS)
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    ts = pd.to_datetime(df["timestamp"], utc=True)
    keep = np.ones(len(df), dtype=bool)
    if since is not None:
        keep &= (ts >= _utc(since)).to_numpy()
    if until is not None:
        keep &= (ts < _utc(until)).to_numpy()
    return df[keep].sort_values("timestamp", kind="stable").reset_index(drop=True)


def score_frame(model: OnnxModel, df: pd.DataFrame, model_version: str, tasks: list[str] | None = None) -> pd.DataFrame:
    """Offline scoring in the prediction log's format: the features, then every task's columns."""
    spec = model.spec
    raw = model.predict_frame(df)
    now = pd.Timestamp.now(tz="UTC")
    head = pd.DataFrame({
        "request_id": "offline",
        "record_index": np.arange(len(df), dtype=np.int64),
        "timestamp": now,
        "model_version": model_version,
    }, index=range(len(df)))
    features = df[spec.feature_names].reset_index(drop=True)
    return pd.concat([head, features, prediction_frame(spec, raw, tasks)], axis=1)


def write_reference(model: OnnxModel, train: pd.DataFrame, cfg: ProjectConfig, model_version: str = "reference",
                    rows: int = REFERENCE_ROWS) -> Path:
    """A seeded sample of the training split scored by the model, in the prediction log's
    format plus the time column (if any) and every task's label (`label__<task>`), saved beside the graph."""
    sample = train.sample(n=min(rows, len(train)), random_state=cfg.training.seed)
    time = [cfg.data.time_column] if cfg.data.time_column else []  # no time column: the sample's own order
    if time:
        sample = sample.sort_values(time, kind="stable")
    scored = score_frame(model, sample, model_version)
    extra = [*time, *(label_column(t.name) for t in cfg.tasks)]
    frame = pd.concat([scored, sample[extra].reset_index(drop=True)], axis=1)
    path = model.dir / REFERENCE_FILE
    frame.to_parquet(path, index=False)
    return path
