"""What each serving worker holds in-process: the model it answers with (ONNX Runtime session +
NumPy encoder), a micro-batcher that merges concurrent requests into one ONNX call, and its side
of the agreement with the other workers on which version to serve.

No second process, no internal HTTP hop: a request is validated, encoded, scored and answered in
the worker that accepted it.

Hot swap across workers: the control folder holds `serving.json` ({"generation", "tag"}); the
admin endpoint (in whichever worker receives it) proves the new version loads, then bumps it. Every
worker polls the file, loads the new version beside the old one, warms it up and only then swaps;
it reports the generation it serves in `workers/<pid>.json`, which the admin endpoint waits for.
A restarted worker starts on the generation in the file, so a killed worker comes back on the
version the others serve; if that version no longer loads, on the store's champion.

The folder belongs to one server start (serving/server.py makes it); each worker also keeps a
heartbeat there for the server's watchdog, reads which workers the watchdog holds stalled, and
leaves a line saying why it exited.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.artifacts.inference import ONNX_FILE, onnx_session
from components.data.features import RecordEncoder
from serving.runtime import ModelLoadError, ServedModel, load_version, warm_up_records
from serving.server import EXITS_FOLDER, FATAL_FILE, HEARTBEAT_FOLDER, STALLED_FILE

CONTROL_FILE = "serving.json"
CANARY_STOPPED_FILE = "canary-stopped.json"
log = logging.getLogger("bentoml.mtlops")  # a child of the logger BentoML configures, in the server and its workers
POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 0.5


class LoadedModel:
    """One version ready to answer: its ONNX session opened and a warm-up inference passed."""

    def __init__(self, served: ServedModel, ort_threads: int = 0) -> None:
        self.served = served
        self.encoder: RecordEncoder = served.spec.record_encoder()
        try:
            self.session = onnx_session(served.path / ONNX_FILE, ort_threads or None)
            out = self.run(*self.encoder.encode(warm_up_records(served.spec))[:2])
        except Exception as exc:
            raise ModelLoadError(f"{served.tag}: ONNX session failed ({type(exc).__name__}: {exc})") from exc
        if out.shape[1] != sum(served.head_widths) or not np.isfinite(out).all():
            raise ModelLoadError(f"{served.tag}: warm-up produced non-finite or mis-shaped outputs {out.shape}")

    @property
    def tag(self) -> str:
        return self.served.tag

    def run(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """All heads in one ONNX call, stacked [rows, sum of head widths] in the spec's task order."""
        outs = self.session.run(None, {"numeric": numeric, "categorical": categorical})
        return np.concatenate([o.reshape(len(numeric), -1) for o in outs], axis=1).astype(np.float32, copy=False)


def open_version(tag: str, ort_threads: int = 0) -> LoadedModel:
    return LoadedModel(load_version(tag), ort_threads)


@dataclass
class _Pending:
    model: LoadedModel
    numeric: np.ndarray
    categorical: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Adaptive batching inside the worker: requests queued while the event loop was busy
    (parsing, validating, scoring others) go to ONNX Runtime as one call, up to `max_batch_size`
    rows. `max_latency_ms` > 0 also holds the first queued request that long for others to join
    (worth it on a GPU; on CPU the model takes ~0.1 ms, so the default 0 dispatches at once)."""

    def __init__(self, max_batch_size: int = 1024, max_latency_ms: float = 0.0) -> None:
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_ms / 1000
        self.pending: list[_Pending] = []
        self.rows_pending = 0
        self.scheduled: asyncio.Handle | None = None

    async def infer(self, model: LoadedModel, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        item = _Pending(model, numeric, categorical, loop.create_future())
        self.pending.append(item)
        self.rows_pending += len(numeric)
        if self.rows_pending >= self.max_batch_size:
            self._dispatch()
        elif self.scheduled is None:
            self.scheduled = (loop.call_later(self.max_latency_s, self._dispatch) if self.max_latency_s > 0
                              else loop.call_soon(self._dispatch))
        return await item.future

    def _dispatch(self) -> None:
        if self.scheduled is not None:  # a full batch goes early: its timer must not cut the next one short
            self.scheduled.cancel()
        pending, self.pending, self.rows_pending, self.scheduled = self.pending, [], 0, None
        # requests encoded by different versions (a swap in between) never share a call
        by_model: dict[int, list[_Pending]] = {}
        for p in pending:
            by_model.setdefault(id(p.model), []).append(p)
        for group in by_model.values():
            start = 0
            while start < len(group):
                batch, rows = [group[start]], len(group[start].numeric)
                start += 1
                while start < len(group) and rows + len(group[start].numeric) <= self.max_batch_size:
                    batch.append(group[start])
                    rows += len(group[start].numeric)
                    start += 1
                self._run(batch)

    def _run(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                outs = [batch[0].model.run(batch[0].numeric, batch[0].categorical)]
            else:
                stacked = batch[0].model.run(np.concatenate([p.numeric for p in batch]),
                                             np.concatenate([p.categorical for p in batch]))
                outs = np.split(stacked, np.cumsum([len(p.numeric) for p in batch])[:-1])
        except Exception as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, out in zip(batch, outs, strict=True):
            if not p.future.done():
                p.future.set_result(out)


def default_control_dir() -> Path:
    """Under a plain `bentoml serve` (no run folder from serving/server.py): one folder per server
    start, named by the workers' parent (BentoML's arbiter) and the moment it started — a PID alone
    repeats (PID 1 in every container), a PID with its start time does not."""
    ppid = os.getppid()
    try:
        started = Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "unknown"
    return Path(tempfile.gettempdir()) / f"mtlops-serving-{ppid}-{started}"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)  # atomic: a reader sees the old or the new file, never half of one


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class VersionControl:
    """This worker's view of the control folder (see the module doc)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        (self.folder / "workers").mkdir(parents=True, exist_ok=True)
        self.control = self.folder / CONTROL_FILE

    def beat(self) -> None:
        """The watchdog's sign of life: called from the event loop, so a stalled loop stops it."""
        path = self.folder / HEARTBEAT_FOLDER / str(os.getpid())
        try:
            os.utime(path)
        except FileNotFoundError:
            path.parent.mkdir(exist_ok=True)
            path.touch()

    def any_stalled(self) -> bool:
        try:
            return bool((self.folder / STALLED_FILE).read_text().strip())
        except FileNotFoundError:
            return False

    def exiting(self, reason: str) -> None:
        """Why this worker exits, for the watchdog's log line and exit counter."""
        (self.folder / EXITS_FOLDER).mkdir(exist_ok=True)
        (self.folder / EXITS_FOLDER / str(os.getpid())).write_text(reason)

    def give_up(self, reason: str) -> None:
        """This worker cannot serve the champion: say why and stop the whole server (it exits
        non-zero with the reason) rather than be respawned behind a socket that never answers."""
        log.critical("cannot serve: %s", reason)
        (self.folder / FATAL_FILE).write_text(reason)
        self.exiting(f"gave up: {reason}")
        os.kill(os.getppid(), signal.SIGTERM)
        sys.exit(3)

    def lock(self) -> Any:
        """An exclusive lock across workers (two reloads at once must not share a generation)."""
        handle = (self.folder / "reload.lock").open("a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        return handle

    def target(self) -> tuple[int, str] | None:
        try:
            raw = json.loads(self.control.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return int(raw["generation"]), str(raw["tag"])

    def published_shadow(self) -> str | None:
        """The shadow version published with the current generation (serving/shadow.py), if any."""
        try:
            return json.loads(self.control.read_text()).get("shadow")
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def stop_canary(self, tag: str, reason: str) -> None:
        """The canary `tag` broke its budget: every worker answers with the champion alone from now on."""
        _write_json(self.folder / CANARY_STOPPED_FILE, {"tag": tag, "reason": reason})

    def canary_stopped(self) -> dict[str, str] | None:
        """The canary version rolled back in this server, and why (None: none was)."""
        try:
            return json.loads((self.folder / CANARY_STOPPED_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def publish(self, generation: int, tag: str, shadow: str | None = None) -> None:
        _write_json(self.control, {"generation": generation, "tag": tag, "shadow": shadow})

    def report(self, generation: int, tag: str, failed: int | None = None, error: str | None = None) -> None:
        """What this worker serves, and the last generation it refused (and why)."""
        _write_json(self.folder / "workers" / f"{os.getpid()}.json",
                    {"pid": os.getpid(), "generation": generation, "tag": tag, "failed": failed, "error": error})

    def workers(self) -> list[dict[str, Any]]:
        """The live workers' reports (a killed worker's file stays behind: skipped)."""
        out = []
        for f in (self.folder / "workers").glob("*.json"):
            try:
                raw = json.loads(f.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            if _alive(int(raw["pid"])):
                out.append(raw)
        return out

    def wait_for(self, generation: int, workers: int, timeout_s: float = 60) -> list[dict[str, Any]]:
        """The live workers' reports once `workers` of them have answered for `generation`
        (serving it or refusing it), or at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            reports = self.workers()
            answered = [w for w in reports if w["generation"] >= generation or (w["failed"] or -1) >= generation]
            if len(answered) >= workers or time.monotonic() > deadline:
                return reports
            time.sleep(POLL_SECONDS / 4)
