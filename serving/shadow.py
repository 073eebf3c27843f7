"""Shadow scoring: a second model version scores the requests the champion answers, off the response path.

The champion alone answers; the shadow's outputs go only to the prediction log's `shadow/` folder, with
the same request_id and record_index as the champion's rows, so the two compare record by record
(`mtlops shadow report`). A request is handed over after its answer is computed, to a bounded queue
that one background thread drains (what has queued up meanwhile is scored in one ONNX call). The records
are encoded again with the shadow's own scales and vocabularies where they differ from the version that
answered (a retrained shadow has its own). A shadow that is slow, broken or failing never changes or
delays an answer: its failures are counted and logged, and a request that finds the queue full is
dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from components.artifacts.predictions import SHADOW_LOG_FOLDER
from components.data.features import EncodedRecords
from serving.prediction_log import PredictionLogWriter, ServedBatch
from serving.runtime import ServedModel
from serving.worker import LoadedModel

log = logging.getLogger(__name__)


class ShadowCounts(Protocol):
    def shadow(self, outcome: str, records: int) -> None: ...


@dataclass(frozen=True)
class _Request:
    request_id: str
    timestamp: datetime
    inputs: EncodedRecords
    encoded_by: ServedModel  # the version that answered: its scales and vocabularies made `inputs`


class ShadowScorer:
    """Scores a share of the answered requests with `model` in a background thread."""

    def __init__(self, model: LoadedModel, log_dir: Path | None, share: float, counts: ShadowCounts,
                 max_queued: int = 1024, max_batch: int = 64) -> None:
        self.model, self.share, self.counts, self.max_batch = model, share, counts, max_batch
        self.log = PredictionLogWriter(Path(log_dir) / SHADOW_LOG_FOLDER) if log_dir else None
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=max_queued)
        self.failures = 0
        self._encodes_like: dict[str, bool] = {}  # answering version's tag -> its encoding is the shadow's
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    @property
    def tag(self) -> str:
        return self.model.tag

    def offer(self, request_id: str, timestamp: datetime, inputs: EncodedRecords, encoded_by: ServedModel) -> None:
        """Hand over an answered request; never blocks."""
        if self.share < 1.0 and random.random() >= self.share:
            return
        try:
            self._queue.put_nowait(_Request(request_id, timestamp, inputs, encoded_by))
        except queue.Full:
            self.counts.shadow("dropped", len(inputs.numeric))

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._score(batch)
                    return
                batch.append(item)
            self._score(batch)

    def _own_encoding(self, r: _Request) -> EncodedRecords:
        tag = r.encoded_by.tag
        if tag not in self._encodes_like:
            mine, theirs = self.model.served.spec, r.encoded_by.spec
            self._encodes_like[tag] = (mine.numeric, mine.categorical) == (theirs.numeric, theirs.categorical)
        if self._encodes_like[tag]:
            return r.inputs
        return self.model.encoder.encode_columns(r.inputs.raw_numeric, r.inputs.raw_categorical)

    def _score(self, batch: list[_Request]) -> None:
        records = sum(len(r.inputs.numeric) for r in batch)
        try:
            inputs = [self._own_encoding(r) for r in batch]
            stacked = self.model.run(np.concatenate([i.numeric for i in inputs]),
                                     np.concatenate([i.categorical for i in inputs]))
            if not np.isfinite(stacked).all():
                raise ValueError("non-finite outputs")
        except Exception as exc:
            self.failures += 1
            self.counts.shadow("failed", records)
            if self.failures == 1 or self.failures % 100 == 0:  # a broken shadow fails every request: no log flood
                log.error("shadow %s failed (%d times so far): %s: %s", self.tag, self.failures,
                          type(exc).__name__, exc)
            return
        self.counts.shadow("scored", records)
        if self.log:
            outs = np.split(stacked, np.cumsum([len(r.inputs.numeric) for r in batch])[:-1])
            for r, out in zip(batch, outs, strict=True):
                self.log.append(ServedBatch(r.request_id, r.timestamp, self.model.served, r.inputs, out))

    def close(self) -> None:
        """Score what is queued, then write the shadow's log."""
        try:
            self._queue.put(None, timeout=30)
        except queue.Full:  # the scoring thread is stuck: its requests are lost, the log still closes
            log.error("shadow %s: scoring did not drain its queue; closing without it", self.tag)
        self._thread.join(timeout=30)
        if self.log:
            self.log.close()
