"""The prediction log writer: requests hand over what they served and return at once;
a background thread turns the buffer into parquet parts (components.predictions format).

Nothing is lost on shutdown: `close()` flushes what is buffered before it returns. If the
disk refuses writes, batches are kept for the next flush, up to a bound (then the oldest go).
A flush also starts early once `flush_records` records are buffered: under heavy load the buffer
(records as Python objects) stays bounded instead of growing with the request rate.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.predictions import prediction_frame, write_log_part
from serving.runtime import ServedModel, records_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedBatch:
    """What one request served, as it was received: typed into a frame by the writer thread,
    off the request path."""

    request_id: str
    timestamp: datetime
    model: ServedModel
    records: list[dict[str, Any]]
    stacked: np.ndarray


class PredictionLogWriter:
    def __init__(self, log_dir: Path, flush_seconds: float = 2.0, max_buffered_batches: int = 100_000,
                 flush_records: int = 20_000) -> None:
        self.log_dir = Path(log_dir)
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self._records = 0
        self._due = threading.Event()
        self.max_buffered_batches = max_buffered_batches  # while the disk refuses writes, memory stays bounded
        self.dropped = 0
        self._buffer: list[ServedBatch] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, batch: ServedBatch) -> None:
        with self._lock:
            self._buffer.append(batch)
            self._records += len(batch.records)
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
            return self._write(batches)
        except Exception:
            with self._lock:  # keep them for the next flush, the newest if there are too many
                self._buffer[:0] = batches
                excess = len(self._buffer) - self.max_buffered_batches
                if excess > 0:
                    del self._buffer[:excess]
                    self.dropped += excess
            raise

    def _write(self, batches: list[ServedBatch]) -> int:
        """One frame per model version for the whole flush: pandas' cost is per call, not per record."""
        by_model: dict[str, list[ServedBatch]] = {}
        for b in batches:
            by_model.setdefault(b.model.tag, []).append(b)
        frames = []
        for group in by_model.values():
            model, sizes = group[0].model, [len(b.records) for b in group]
            head = pd.DataFrame({
                "request_id": np.repeat([b.request_id for b in group], sizes),
                "record_index": np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]),
                "timestamp": pd.DatetimeIndex(np.repeat([pd.Timestamp(b.timestamp) for b in group], sizes)),
                "model_version": model.tag})
            records = [r for b in group for r in b.records]
            preds = prediction_frame(model.spec, model.raw_outputs(np.concatenate([b.stacked for b in group])))
            frames.append(pd.concat([head, records_frame(records, model.spec), preds], axis=1))
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
