"""The mtlops prediction service: the champion's one ONNX graph behind one HTTP API.

Two BentoML services in one deployment. `MultiTaskModelService` validates requests
against a schema generated from the FeatureSpec, encodes them, and formats every
task's answer; `OnnxRunner` batches concurrent requests adaptively and computes all
heads in one ONNX Runtime call. The runner returns one stacked array (BentoML 1.4
cannot batch dict outputs) that the front splits per task.

Hot swap: every request is encoded with one model snapshot and carries its
generation number to the runner, which keeps the previous session for requests
still in flight, so a reload never mixes an old encoding with a new graph.
"""

import asyncio
import uuid
from typing import Annotated, Any

import aiohttp
import bentoml
import numpy as np
import pandas as pd
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from components.inference import ONNX_FILE, onnx_session
from serving.body_limit import BodyLimit
from serving.prediction_log import PredictionLogWriter, ServedBatch
from serving.runtime import (
    ModelLoadError,
    ServedModel,
    ServingSettings,
    load_champion,
    load_version,
    record_model,
    records_frame,
    task_name_type,
    warm_up_rows,
)

SETTINGS = ServingSettings.from_env()
STARTUP_MODEL = load_champion(SETTINGS.model_name)
Record = record_model(STARTUP_MODEL.spec)
TaskName = task_name_type(STARTUP_MODEL.spec)
RUNNER_ATTEMPTS = 3
KEEP_GENERATIONS = 2  # the current session and the one in-flight requests may still use


@bentoml.service(name="mtlops-onnx-runner", workers=1)
class OnnxRunner:
    def __init__(self) -> None:
        self.sessions: dict[int, Any] = {}

    @bentoml.api
    def load(self, generation: int, tag: str) -> str:
        """Open the version's ONNX graph and prove it computes finite outputs; only then use it."""
        model = load_version(tag)
        try:
            session = onnx_session(model.path / ONNX_FILE, SETTINGS.ort_threads or None)
            rows = warm_up_rows(model, generation)
            out = self._run(session, rows)
        except Exception as exc:
            raise ModelLoadError(f"{tag}: ONNX session failed ({type(exc).__name__}: {exc})") from exc
        if out.shape != (len(rows), sum(model.head_widths)) or not np.isfinite(out).all():
            raise ModelLoadError(f"{tag}: warm-up produced non-finite or mis-shaped outputs {out.shape}")
        self.sessions[generation] = session
        for old in sorted(self.sessions)[:-KEEP_GENERATIONS]:
            del self.sessions[old]
        return tag

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms)
    def infer(self, rows: np.ndarray) -> np.ndarray:
        generations = rows[:, 0].astype(np.int64)
        if (generations == generations[0]).all():
            return self._run(self.sessions[int(generations[0])], rows)
        out = None
        for g in np.unique(generations):
            mask = generations == g
            part = self._run(self.sessions[int(g)], rows[mask])
            out = np.empty((len(rows), part.shape[1]), np.float32) if out is None else out
            out[mask] = part
        return out

    @staticmethod
    def _run(session: Any, rows: np.ndarray) -> np.ndarray:
        numeric_width = session.get_inputs()[0].shape[1]
        feeds = {"numeric": np.ascontiguousarray(rows[:, 1:1 + numeric_width], dtype=np.float32),
                 "categorical": rows[:, 1 + numeric_width:].astype(np.int64)}
        outs = session.run(None, feeds)
        return np.concatenate([o.reshape(len(rows), -1) for o in outs], axis=1).astype(np.float32)


class ServiceMetrics:
    """Prometheus series, exported on /metrics beside BentoML's own (bentoml.metrics
    registers them with BentoML's multiprocess collector)."""

    def __init__(self) -> None:
        self.predictions = bentoml.metrics.Counter(
            "mtlops_predictions", "Records answered, per task", ["task", "model_version"])
        self.oov = bentoml.metrics.Counter(
            "mtlops_out_of_vocabulary_values", "Categorical values not in the model's vocabulary",
            ["feature", "model_version"])
        self.model_info = bentoml.metrics.Gauge(
            "mtlops_model_info", "1 for the model version being served, 0 for versions served before",
            ["model_version"], multiprocess_mode="max")
        self.reloads = bentoml.metrics.Counter("mtlops_reloads", "Reload attempts by outcome", ["outcome"])
        self.runner_retries = bentoml.metrics.Counter("mtlops_runner_retries", "Runner calls retried after a "
                                                      "connection error")
        self.current: str | None = None

    def serving(self, tag: str) -> None:
        if self.current:
            self.model_info.labels(model_version=self.current).set(0)
        self.model_info.labels(model_version=tag).set(1)
        self.current = tag


async def model_info(request: Request) -> JSONResponse:
    svc = bentoml.get_current_service()
    m: ServedModel = svc.model
    return JSONResponse({
        "model_version": m.tag,
        "tasks": [{"name": t.name, "type": t.type, **({"classes": t.classes} if t.classes else {}),
                   **({"threshold": t.threshold} if t.type == "binary" else {})} for t in m.spec.targets],
        "features": {"numeric": [{"name": n.name, "allow_null": n.allow_null} for n in m.spec.numeric],
                     "categorical": [{"name": c.name, "allow_null": c.allow_null, "vocabulary_size": len(c.values)}
                                     for c in m.spec.categorical]},
        "metrics": m.metadata.get("metrics", {}),
        "lineage": m.metadata.get("lineage", {}),
    })


async def admin_reload(request: Request) -> JSONResponse:
    if not SETTINGS.admin_token:
        return JSONResponse({"error": "admin endpoints are disabled: set MTLOPS_ADMIN_TOKEN"}, status_code=403)
    if request.headers.get("authorization") != f"Bearer {SETTINGS.admin_token}":
        return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
    svc = bentoml.get_current_service()
    try:
        result = await svc.reload()
    except ModelLoadError as exc:
        svc.metrics.reloads.labels(outcome="rejected").inc()
        return JSONResponse({"error": str(exc), "model_version": svc.model.tag}, status_code=409)
    svc.metrics.reloads.labels(outcome=result["status"]).inc()
    return JSONResponse(result)


# mounted at "/" (BentoML's own routes match first): sub-path mounts would redirect /model to /model/
OPS_ROUTES = Starlette(routes=[Route("/model", model_info, methods=["GET"]),
                               Route("/admin/reload", admin_reload, methods=["POST"])])


@bentoml.service(name="mtlops", workers=1, traffic={"timeout": 60})
@bentoml.asgi_app(OPS_ROUTES, path="/")
class MultiTaskModelService:
    runner = bentoml.depends(OnnxRunner)

    def __init__(self) -> None:
        self.model = STARTUP_MODEL
        self.generation = 0
        self.runner_generation = -1  # the runner has not loaded anything yet
        self._swap = asyncio.Lock()
        self.metrics = ServiceMetrics()
        self.metrics.serving(self.model.tag)
        self.log = PredictionLogWriter(SETTINGS.prediction_log, SETTINGS.log_flush_seconds) \
            if SETTINGS.prediction_log else None

    @bentoml.api(route="/predict")
    async def predict(
        self,
        records: Annotated[list[Record], Field(min_length=1, max_length=SETTINGS.max_rows)],  # type: ignore[valid-type]
        tasks: Annotated[list[TaskName] | None, Field(min_length=1)] = None,  # type: ignore[valid-type]
    ) -> dict[str, Any]:
        """Every requested task's answer for every record, from one model version."""
        await self._ensure_runner_loaded()
        model, generation = self.model, self.generation
        features = records_frame(records, model.spec)
        rows, oov = model.encode(features, generation)
        stacked = await self._infer(rows)
        for name in tasks or [t.name for t in model.spec.targets]:
            self.metrics.predictions.labels(task=name, model_version=model.tag).inc(len(rows))
        for feature, count in oov.items():
            if count:
                self.metrics.oov.labels(feature=feature, model_version=model.tag).inc(count)
        request_id = uuid.uuid4().hex
        if self.log:
            self.log.append(ServedBatch(request_id, pd.Timestamp.now(tz="UTC"), model, features, stacked))
        return {"model_version": model.tag, "request_id": request_id,
                "predictions": model.outputs(stacked, list(tasks) if tasks else None)}

    async def _infer(self, rows: np.ndarray) -> np.ndarray:
        """The runner call, retried on connection errors: a keep-alive connection the runner
        closes while a request is being written (seen under CPU contention) is not a model error,
        and inference is idempotent."""
        for _ in range(RUNNER_ATTEMPTS - 1):
            try:
                return await self.runner.to_async.infer(rows)
            except aiohttp.ClientConnectionError:
                self.metrics.runner_retries.inc()
        return await self.runner.to_async.infer(rows)

    async def reload(self) -> dict[str, str]:
        """Serve the store's current champion if it differs, loads, and passes warm-up."""
        async with self._swap:
            new = await asyncio.to_thread(load_champion, SETTINGS.model_name)
            if new.tag == self.model.tag and self.runner_generation == self.generation:
                return {"status": "unchanged", "model_version": new.tag}
            if new.signature != self.model.signature:
                raise ModelLoadError(f"{new.tag} has other features or tasks than {self.model.tag}; "
                                     "the request schema is fixed at start-up: restart the service to serve it")
            generation = self.generation + 1
            try:
                await self.runner.to_async.load(generation=generation, tag=new.tag)
            except Exception as exc:  # the runner's reason is in its log; its HTTP error hides it
                raise ModelLoadError(f"{new.tag}: the runner could not load it or it failed warm-up "
                                     f"({type(exc).__name__}: {exc})") from exc
            self.model, self.generation, self.runner_generation = new, generation, generation
            self.metrics.serving(new.tag)
            return {"status": "reloaded", "model_version": new.tag}

    async def _ensure_runner_loaded(self) -> None:
        if self.runner_generation == self.generation:
            return
        async with self._swap:
            if self.runner_generation != self.generation:
                await self.runner.to_async.load(generation=self.generation, tag=self.model.tag)
                self.runner_generation = self.generation

    async def __is_ready__(self) -> bool:
        try:
            await self._ensure_runner_loaded()
        except Exception:
            return False
        return True

    @bentoml.on_shutdown
    def flush_prediction_log(self) -> None:
        if self.log:
            self.log.close()


MultiTaskModelService.add_asgi_middleware(BodyLimit, max_bytes=SETTINGS.max_body_bytes)
