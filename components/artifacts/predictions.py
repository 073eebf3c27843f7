"""What the model's outputs mean to a user, and the prediction log.

`prediction_frame` turns raw ONNX outputs into the user's terms, one column
group per task, named by `components.config.tasks` (which lists them);
`monitored_column` names the one column per task whose drift monitoring
tracks. The prediction log is the contract between serving (writer) and
monitoring (reader): parquet parts under `<log_dir>/date=YYYY-MM-DD/`, one row
per scored record with `request_id`, `record_index`, `timestamp` (UTC),
`model_version`, the features as received, and the prediction columns.

The log is also operated here: `compact_log` merges each hour's small parts into one
(a merged part names the parts it holds in its parquet metadata, so a reader never counts a
row twice, even when a compaction stopped half-way), `expire_log` drops date partitions
past the retention, `log_usage` says how much disk the log takes and how much is left.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.config.schema import ProjectConfig
from components.config.tasks import kind_of
from components.data.features import FeatureSpec, TargetSpec
from components.data.tables import label_column

if TYPE_CHECKING:
    from components.artifacts.inference import OnnxModel

LOG_COLUMNS = ["request_id", "record_index", "timestamp", "model_version"]
SHADOW_LOG_FOLDER = "shadow"  # the shadow version's rows (serving/shadow.py); the readers here never descend into it
REFERENCE_FILE = "reference.parquet"  # stored with every exported model: what monitoring compares against
REFERENCE_ROWS = 5000
COMPACTED = "compacted"  # in the name of a part that merged others
MERGED_PARTS_KEY = b"mtlops.merged_parts"  # a compacted part's parquet metadata: the names of the parts it holds
MERGED_ROW_GROUP = 128_000  # rows per row group of a merged part
READ_ATTEMPTS = 5  # a compaction or expiry may remove parts between a reader's listing and its reads


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
    Parts are written to a temporary name and renamed, so readers never see half a file; a write
    that fails (a full disk) leaves nothing behind."""
    if frame.empty:
        return None
    when = pd.Timestamp(frame["timestamp"].iloc[0])
    folder = Path(log_dir) / f"date={when:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{datetime.now(UTC):%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
    with _renamed_when_complete(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


@contextmanager
def _renamed_when_complete(path: Path) -> Iterator[Path]:
    tmp = path.with_suffix(".tmp")
    try:
        yield tmp
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _utc(when: datetime) -> pd.Timestamp:
    ts = pd.Timestamp(when)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _merged_parts(part: Path) -> list[str]:
    return json.loads((pq.read_schema(part).metadata or {}).get(MERGED_PARTS_KEY, b"[]"))


def _held(parts: list[Path]) -> set[Path]:
    """The parts a compacted part among `parts` already holds (left behind when a compaction stopped
    between writing its part and removing the ones it merged)."""
    return {p.parent / name for p in parts if COMPACTED in p.name for name in _merged_parts(p)}


def log_parts(log_dir: Path) -> list[Path]:
    """The parts that hold the log: every part, less those a compacted part already holds."""
    parts = sorted(Path(log_dir).glob("date=*/*.parquet"))
    held = _held(parts)
    return [p for p in parts if p not in held]


def read_prediction_log(log_dir: Path, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """All logged records with since <= timestamp < until (UTC), oldest first."""
    for attempt in range(READ_ATTEMPTS):
        try:
            frames = [pd.read_parquet(p) for p in log_parts(log_dir)]
            break
        except FileNotFoundError:  # merged or expired since it was listed: list again
            if attempt == READ_ATTEMPTS - 1:
                raise
    if not frames:
        return pd.DataFrame(columns=LOG_COLUMNS)
    df = pd.concat(frames, ignore_index=True)
    ts = pd.to_datetime(df["timestamp"], utc=True)
    keep = np.ones(len(df), dtype=bool)
    if since is not None:
        keep &= (ts >= _utc(since)).to_numpy()
    if until is not None:
        keep &= (ts < _utc(until)).to_numpy()
    return df[keep].sort_values("timestamp", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Compaction:
    parts_before: int
    parts_after: int
    rows: int  # rows in the parts that were merged (the merged parts hold exactly these)


@contextmanager
def maintenance_lock(log_dir: Path) -> Iterator[bool]:
    """True when this process may compact or expire the log now: several workers (or a CLI run) share
    one log folder, and two compactions of the same parts would hold their rows twice."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(log_dir) / ".maintenance.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def compact_log(log_dir: Path, min_age_seconds: float = 3600) -> Compaction:
    """Merge the parts written in the same hour (the first two digits of their name) into one part per
    hour and partition, once they are `min_age_seconds` old. Call it under `maintenance_lock`. The merged
    part is written and renamed into place before the parts it holds are removed; readers skip those
    meanwhile, so at every moment each row is read exactly once. A failed write (a full disk) removes
    nothing."""
    listed = sorted(Path(log_dir).glob("date=*/*.parquet"))
    held = _held(listed)
    for stale in held:  # a compaction that stopped half-way: its merged part holds these
        stale.unlink(missing_ok=True)
    kept = [p for p in listed if p not in held]
    cutoff = time.time() - min_age_seconds
    groups: dict[tuple[Path, str], list[Path]] = {}
    for part in kept:
        if part.stat().st_mtime <= cutoff:
            groups.setdefault((part.parent, part.name[:2]), []).append(part)
    merged = rows = 0
    for (folder, hour), parts in groups.items():
        if len(parts) < 2:
            continue
        rows += _merge(parts, folder / f"{hour}-{COMPACTED}-{uuid.uuid4().hex[:8]}.parquet")
        merged += len(parts) - 1
    return Compaction(len(kept), len(kept) - merged, rows)


def _merge(parts: list[Path], path: Path) -> int:
    """Parts read one at a time and written in row groups of about MERGED_ROW_GROUP rows (memory stays at one
    row group, compression works on large groups), cast to a schema all parts fit (a categorical column
    that was all null in one part is typed by the others)."""
    schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
    schema = schema.with_metadata((schema.metadata or {}) | {MERGED_PARTS_KEY: json.dumps([p.name for p in parts])})
    rows, pending, pending_rows = 0, [], 0
    with _renamed_when_complete(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for p in parts:
            pending.append(pq.read_table(p).select(schema.names).cast(schema))
            pending_rows += pending[-1].num_rows
            if pending_rows >= MERGED_ROW_GROUP or p == parts[-1]:
                writer.write_table(pa.concat_tables(pending), row_group_size=pending_rows)
                rows, pending, pending_rows = rows + pending_rows, [], 0
    for p in parts:
        p.unlink()
    return rows


def expire_log(log_dir: Path, retention_days: int, today: date | None = None) -> list[str]:
    """Remove the date partitions older than `retention_days` (UTC); returns their names."""
    cutoff = (today or datetime.now(UTC).date()) - timedelta(days=retention_days)
    expired = [f for f in Path(log_dir).glob("date=*") if date.fromisoformat(f.name[len("date="):]) < cutoff]
    for folder in expired:
        shutil.rmtree(folder, ignore_errors=True)
    return sorted(f.name for f in expired)


@dataclass(frozen=True)
class LogUsage:
    parts: int
    bytes: int
    disk_free_bytes: int
    disk_size_bytes: int


def log_usage(log_dir: Path) -> LogUsage:
    """The log's parts and bytes (the shadow's log included), and the free and total bytes of its disk."""
    sizes = []
    for p in Path(log_dir).rglob("*.parquet"):  # the shadow's log below it too
        try:
            sizes.append(p.stat().st_size)
        except FileNotFoundError:  # merged or expired meanwhile
            continue
    disk = shutil.disk_usage(log_dir)
    return LogUsage(len(sizes), sum(sizes), disk.free, disk.total)


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
