"""The prediction log writer: requests hand over what they served and return at once;
a background thread turns the buffer into parquet parts (components.predictions format).

Nothing is lost on shutdown: `close()` flushes what is buffered before it returns. If the
disk refuses writes, batches are kept for the next flush, up to a bound (then the oldest go).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.predictions import prediction_frame, write_log_part
from serving.runtime import ServedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedBatch:
    request_id: str
    timestamp: pd.Timestamp
    model: ServedModel
    features: pd.DataFrame
    stacked: np.ndarray


class PredictionLogWriter:
    def __init__(self, log_dir: Path, flush_seconds: float = 2.0, max_buffered_batches: int = 100_000) -> None:
        self.log_dir = Path(log_dir)
        self.flush_seconds = flush_seconds
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

    def flush(self) -> int:
        """Write everything buffered; returns the number of records written."""
        with self._lock:
            batches, self._buffer = self._buffer, []
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
        frames = []
        for b in batches:
            n = len(b.features)
            head = pd.DataFrame({"request_id": b.request_id, "record_index": np.arange(n, dtype=np.int64),
                                 "timestamp": b.timestamp, "model_version": b.model.tag}, index=range(n))
            preds = prediction_frame(b.model.spec, b.model.raw_outputs(b.stacked))
            frames.append(pd.concat([head, b.features.reset_index(drop=True), preds], axis=1))
        frame = pd.concat(frames, ignore_index=True)
        write_log_part(frame, self.log_dir)
        return len(frame)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # a full disk must not take the service down
                log.exception("prediction log flush failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush()
