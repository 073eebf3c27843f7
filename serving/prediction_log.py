"""The prediction log writer: requests hand over what they served and return at once;
a background thread turns the buffer into parquet parts (components.artifacts.predictions format).

Nothing is lost on shutdown: `close()` flushes what is buffered before it returns. If the
disk refuses writes, batches are kept for the next flush, up to a bound (then the oldest go).
A flush also starts early once `flush_records` records are buffered: under heavy load the buffer
stays bounded instead of growing with the request rate. A batch is kept as the encoder's columns
(NumPy arrays and one list per categorical feature), not as a Python dict per record: less memory,
fewer objects for the garbage collector, and a flush that does not loop over every value.

`maintain_log` keeps the folder operable: each hour's parts merged into one, partitions past the
retention removed, and the disk use measured (what /metrics exports and the disk alert reads).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.artifacts.predictions import (
    SHADOW_LOG_FOLDER,
    LogUsage,
    compact_log,
    expire_log,
    log_usage,
    maintenance_lock,
    prediction_frame,
    write_log_part,
)
from components.data.features import EncodedRecords, FeatureSpec
from serving.runtime import ServedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedBatch:
    """What one request served: its features as received (the encoder's columns, not a dict per
    record) and every head's outputs; made into a frame by the writer thread, off the request path."""

    request_id: str
    timestamp: datetime
    model: ServedModel
    inputs: EncodedRecords
    stacked: np.ndarray

    @property
    def size(self) -> int:
        return len(self.stacked)


class PredictionLogWriter:
    def __init__(self, log_dir: Path, flush_seconds: float = 2.0, max_buffered_batches: int = 100_000,
                 flush_records: int = 20_000) -> None:
        self.log_dir = Path(log_dir)
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self._records = 0
        self._due = threading.Event()
        self.max_buffered_batches = max_buffered_batches  # while the disk refuses writes, memory stays bounded
        self.dropped = 0  # batches given up while the disk refused writes
        self.written = 0  # records written
        self.failed_flushes = 0
        self._buffer: list[ServedBatch] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, batch: ServedBatch) -> None:
        with self._lock:
            self._buffer.append(batch)
            self._records += batch.size
            if self._records >= self.flush_records:
                self._due.set()

    def flush(self) -> int:
        """Write everything buffered; returns the number of records written."""
        with self._lock:
            batches, self._buffer, self._records = self._buffer, [], 0
            self._due.clear()
        if not batches:
            return 0
        try:
            written = self._write(batches)
        except Exception:
            self.failed_flushes += 1
            with self._lock:  # keep them for the next flush, the newest if there are too many
                self._buffer[:0] = batches
                excess = len(self._buffer) - self.max_buffered_batches
                if excess > 0:
                    del self._buffer[:excess]
                    self.dropped += excess
                self._records = sum(b.size for b in self._buffer)
            raise
        self.written += written
        return written

    def backlog(self) -> tuple[int, float]:
        """Records waiting for the next flush, and the age in seconds of the oldest (0 when none)."""
        with self._lock:
            records, oldest = self._records, self._buffer[0].timestamp if self._buffer else None
        return records, (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0

    def _write(self, batches: list[ServedBatch]) -> int:
        """One frame per model version for the whole flush: pandas' cost is per call, not per record."""
        by_model: dict[str, list[ServedBatch]] = {}
        for b in batches:
            by_model.setdefault(b.model.tag, []).append(b)
        frames = []
        for group in by_model.values():
            model, sizes = group[0].model, [b.size for b in group]
            head = pd.DataFrame({
                "request_id": np.repeat([b.request_id for b in group], sizes),
                "record_index": np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]),
                "timestamp": pd.DatetimeIndex(np.repeat([pd.Timestamp(b.timestamp) for b in group], sizes)),
                "model_version": model.tag})
            preds = prediction_frame(model.spec, model.raw_outputs(np.concatenate([b.stacked for b in group])))
            frames.append(pd.concat([head, features_frame(model.spec, [b.inputs for b in group]), preds], axis=1))
        frame = pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable", ignore_index=True)
        write_log_part(frame, self.log_dir)
        return len(frame)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._due.wait(self.flush_seconds)
            try:
                self.flush()
            except Exception:  # a full disk must not take the service down; it is retried at the usual pace
                log.exception("prediction log flush failed")
                self._stop.wait(self.flush_seconds)

    def close(self) -> None:
        self._stop.set()
        self._due.set()
        self._thread.join(timeout=30)
        self.flush()


def features_frame(spec: FeatureSpec, inputs: list[EncodedRecords]) -> pd.DataFrame:
    """The features of several requests as received, one column each, in the spec's order."""
    numeric = np.concatenate([i.raw_numeric for i in inputs])
    columns: dict[str, Any] = {n.name: numeric[:, k] for k, n in enumerate(spec.numeric)}
    for k, c in enumerate(spec.categorical):
        columns[c.name] = np.array([v for i in inputs for v in i.raw_categorical[k]], dtype=object)
    return pd.DataFrame(columns, columns=spec.feature_names)


@dataclass(frozen=True)
class LogMaintenance:
    compacted_parts: int  # parts merged away
    expired_partitions: list[str]
    usage: LogUsage


def maintain_log(log_dir: Path, compact_after_seconds: float, retention_days: int) -> LogMaintenance:
    """Compact and expire the log and the shadow's log beside it, unless another process is at it
    (then only measure); always measure the disk use."""
    log_dir = Path(log_dir)
    compacted, expired = 0, []
    with maintenance_lock(log_dir) as ours:
        if ours:
            for folder in (log_dir, log_dir / SHADOW_LOG_FOLDER):
                if retention_days:
                    expired += expire_log(folder, retention_days)
                done = compact_log(folder, compact_after_seconds)
                compacted += done.parts_before - done.parts_after
    return LogMaintenance(compacted, expired, log_usage(log_dir))
