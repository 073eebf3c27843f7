"""The mtlops prediction service: the champion's one ONNX graph behind one HTTP API.

One BentoML service, `workers` processes. Each worker validates a request against the schema
generated from the FeatureSpec, encodes it with NumPy, merges it with concurrent requests into
one ONNX Runtime call (serving/worker.py) and formats every task's answer, all in-process.
Reloads reach every worker through the control folder (see serving/worker.py).

Importing this module loads nothing: `build_service` reads the settings, loads the champion and builds
the service class around the request schema generated from its FeatureSpec. The name `bentoml serve`
and the Bento are given, `serving.service:MultiTaskModelService`, is built on first access.
"""

import asyncio
import gc
import hmac
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

import bentoml
import numpy as np
import orjson
from pydantic import ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from components.config.tasks import kind_of
from components.data.features import EncodedRecords
from serving.canary import CanaryGuard
from serving.guards import (
    BodyLimit,
    JsonOnly,
    OpenApiDocument,
    RestoreRoutePath,
    bound_route_labels,
    duplicate_key,
    error_body,
    validation_error_body,
)
from serving.prediction_log import LogMaintenance, PredictionLogWriter, ServedBatch, maintain_log
from serving.runtime import (
    ModelLoadError,
    ServedModel,
    ServingSettings,
    load_champion,
    record_model,
    request_model,
    retired_task_asked,
    shadow_tag,
)
from serving.shadow import ShadowScorer
from serving.worker import (
    HEARTBEAT_SECONDS,
    POLL_SECONDS,
    LoadedModel,
    MicroBatcher,
    VersionControl,
    default_control_dir,
    log,
    open_version,
)


class ServiceMetrics:
    """Prometheus series, exported on /metrics beside BentoML's own (bentoml.metrics
    registers them with BentoML's multiprocess collector, so every worker counts)."""

    def __init__(self) -> None:
        self.predictions = bentoml.metrics.Counter(
            "mtlops_predictions", "Records answered, per task", ["task", "model_version"])
        self.oov = bentoml.metrics.Counter(
            "mtlops_out_of_vocabulary_values", "Categorical values not in the model's vocabulary",
            ["feature", "model_version"])
        self.model_info = bentoml.metrics.Gauge(
            "mtlops_model_info", "1 for the model version being served, 0 for versions served before",
            ["model_version"], multiprocess_mode="livemax")
        self.reloads = bentoml.metrics.Counter("mtlops_reloads", "Reload attempts by outcome", ["outcome"])
        self.shadow_records = bentoml.metrics.Counter(
            "mtlops_shadow_records", "Records handed to the shadow version, by outcome (scored, failed, dropped)",
            ["outcome"])
        self.shadow_load_failures = bentoml.metrics.Counter(
            "mtlops_shadow_load_failures", "Shadow versions that could not be loaded (the champion serves on alone)")
        self.shadow_info = bentoml.metrics.Gauge(
            "mtlops_shadow_info", "1 for the shadow version being scored, 0 for versions scored before",
            ["model_version"], multiprocess_mode="livemax")
        self.current_shadow: str | None = None
        self.canary_requests = bentoml.metrics.Counter(
            "mtlops_canary_requests", "Requests the canary (the shadow version) answered, or failed and the champion "
            "answered", ["outcome"])
        self.canary_rollbacks = bentoml.metrics.Counter("mtlops_canary_rollbacks",
                                                        "Canaries stopped for breaking their error or latency budget")
        self.canary_active = bentoml.metrics.Gauge("mtlops_canary_active",
                                                   "1 while the shadow version answers the canary share",
                                                   multiprocess_mode="livemax")
        self.log_written = bentoml.metrics.Counter("mtlops_prediction_log_written_records",
                                                   "Records written to the prediction log")
        self.log_dropped = bentoml.metrics.Counter(
            "mtlops_prediction_log_dropped_batches", "Requests' records given up while the disk refused writes")
        self.log_failed_flushes = bentoml.metrics.Counter("mtlops_prediction_log_failed_flushes",
                                                          "Prediction-log flushes that could not write")
        self.log_buffered = bentoml.metrics.Gauge("mtlops_prediction_log_buffered_records",
                                                  "Records waiting for the next prediction-log flush",
                                                  multiprocess_mode="livesum")
        self.log_lag = bentoml.metrics.Gauge("mtlops_prediction_log_lag_seconds",
                                             "Age of the oldest record waiting for the prediction log",
                                             multiprocess_mode="livemax")
        self._log_seen = (0, 0, 0)
        self.log_bytes = bentoml.metrics.Gauge("mtlops_prediction_log_bytes",
                                               "Bytes the prediction log's parts take on disk",
                                               multiprocess_mode="livemax")
        self.log_parts = bentoml.metrics.Gauge(
            "mtlops_prediction_log_parts", "Parquet parts in the prediction log (compaction merges an hour's into one)",
            multiprocess_mode="livemax")
        self.log_disk_free = bentoml.metrics.Gauge("mtlops_prediction_log_disk_free_bytes",
                                                   "Free bytes on the prediction log's disk",
                                                   multiprocess_mode="livemin")
        self.log_disk_size = bentoml.metrics.Gauge("mtlops_prediction_log_disk_size_bytes",
                                                   "Size in bytes of the prediction log's disk",
                                                   multiprocess_mode="livemax")
        self.log_compacted = bentoml.metrics.Counter("mtlops_prediction_log_compacted_parts",
                                                     "Prediction-log parts merged away by compaction")
        self.log_expired = bentoml.metrics.Counter("mtlops_prediction_log_expired_partitions",
                                                   "Prediction-log date partitions removed past the retention")
        self.batch_rows = bentoml.metrics.Histogram(
            "mtlops_batch_rows", "Rows in one ONNX Runtime call (concurrent requests merged by the micro-batcher)",
            buckets=[2 ** k for k in range(11)])
        self.current: str | None = None
        self._children: dict[tuple[str, ...], Any] = {}  # labelled series, looked up once (not per request)

    def answered(self, tag: str, tasks: list[str], records: int, oov: dict[str, int]) -> None:
        for task in tasks:
            self._child(self.predictions, "task", task, tag).inc(records)
        for feature, count in oov.items():
            if count:
                self._child(self.oov, "feature", feature, tag).inc(count)

    def _child(self, metric: Any, label: str, value: str, tag: str) -> Any:
        key = (label, value, tag)
        if key not in self._children:
            self._children[key] = metric.labels(**{label: value, "model_version": tag})
        return self._children[key]

    def prediction_log(self, writer: PredictionLogWriter) -> None:
        """The writer's counts since the last look, and its backlog (called every poll, off the request path)."""
        written, dropped, failed = writer.written, writer.dropped, writer.failed_flushes
        seen_written, seen_dropped, seen_failed = self._log_seen
        self.log_written.inc(written - seen_written)
        self.log_dropped.inc(dropped - seen_dropped)
        self.log_failed_flushes.inc(failed - seen_failed)
        self._log_seen = (written, dropped, failed)
        records, lag = writer.backlog()
        self.log_buffered.set(records)
        self.log_lag.set(lag)

    def log_maintained(self, done: LogMaintenance) -> None:
        self.log_compacted.inc(done.compacted_parts)
        self.log_expired.inc(len(done.expired_partitions))
        self.log_bytes.set(done.usage.bytes)
        self.log_parts.set(done.usage.parts)
        self.log_disk_free.set(done.usage.disk_free_bytes)
        self.log_disk_size.set(done.usage.disk_size_bytes)

    def shadow(self, outcome: str, records: int) -> None:
        self.shadow_records.labels(outcome=outcome).inc(records)

    def shadowing(self, tag: str | None) -> None:
        if self.current_shadow and self.current_shadow != tag:
            self.shadow_info.labels(model_version=self.current_shadow).set(0)
        if tag:
            self.shadow_info.labels(model_version=tag).set(1)
        self.current_shadow = tag

    def serving(self, tag: str) -> None:
        if self.current and self.current != tag:
            self.model_info.labels(model_version=self.current).set(0)
        self.model_info.labels(model_version=tag).set(1)
        self.current = tag


class MeteredBatcher(MicroBatcher):
    """The micro-batcher, observing each ONNX call's rows in `mtlops_batch_rows`."""

    def __init__(self, rows: Any, max_batch_size: int, max_latency_ms: float) -> None:
        super().__init__(max_batch_size, max_latency_ms)
        self.rows = rows

    def _run(self, batch: list[Any]) -> None:
        self.rows.observe(sum(len(p.numeric) for p in batch))
        super()._run(batch)


async def model_info(request: Request) -> JSONResponse:
    svc = bentoml.get_current_service()
    m = svc.model.served
    return JSONResponse({
        "model_version": m.tag,
        "tasks": [{"name": t.name, "type": t.type, **kind_of(t).settings(t),
                   "introduced_by": m.metadata.get("task_introduced", {}).get(t.name)} for t in m.spec.targets],
        "retired_tasks": [{"name": name, "retired_by": tag}
                          for name, tag in m.metadata.get("retired_tasks", {}).items()],
        "features": {"numeric": [{"name": n.name, "allow_null": n.allow_null, "min": n.min, "max": n.max,
                                  "integer": n.integer} for n in m.spec.numeric],
                     "categorical": [{"name": c.name, "allow_null": c.allow_null, "vocabulary_size": len(c.values)}
                                     for c in m.spec.categorical]},
        "metrics": m.metadata.get("metrics", {}),
        "lineage": m.metadata.get("lineage", {}),
        "shadow": ({"model_version": svc.shadow.tag, "share": svc.settings.shadow_share} if svc.shadow else None),
        "canary": ({"model_version": svc.shadow.tag, "share": svc.settings.canary.share,
                    "rolled_back": svc.shadow.tag == svc.canary_stopped}
                   if svc.shadow and svc.settings.canary.share > 0 else None),
    })


async def admin_reload(request: Request) -> JSONResponse:
    svc = bentoml.get_current_service()
    token = svc.settings.admin_token
    if not token:
        return JSONResponse(error_body("admin endpoints are disabled: set MTLOPS_ADMIN_TOKEN"), status_code=403)
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return JSONResponse(error_body("missing or wrong bearer token"), status_code=401)
    try:
        result = await asyncio.to_thread(svc.reload)
    except ModelLoadError as exc:
        svc.metrics.reloads.labels(outcome="rejected").inc()
        return JSONResponse(error_body(str(exc)) | {"model_version": svc.model.tag}, status_code=409)
    svc.metrics.reloads.labels(outcome=result["status"]).inc()
    return JSONResponse(result)


# mounted at "/" (BentoML's own routes match first): sub-path mounts would redirect /model to /model/
OPS_ROUTES = Starlette(routes=[Route("/model", model_info, methods=["GET"]),
                               Route("/admin/reload", admin_reload, methods=["POST"])])


class PredictInput(bentoml.IODescriptor):
    """The base of the /predict body (runtime.request_model builds it from the champion's FeatureSpec).
    Both request paths decode a body with `decode`: BentoML's API layer through `from_http_request`,
    the fast path (`PredictEndpoint`) directly. Every refusal is a ValidationError, which both answer
    with `validation_error_body`: the same request gets the same 400 either way."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> Self:
        return cls.decode(await request.body(), bentoml.get_current_service().model.served)

    @classmethod
    def decode(cls, raw: bytes, served: ServedModel) -> Self:
        """The body, validated; beyond the schema, a task `served` retired and a key given twice are refused."""
        try:
            body = cls.model_validate_json(raw)
        except ValidationError as exc:
            if retired := retired_task_asked(exc, served):
                raise cls._refused("retired_task", *retired) from None
            raise
        records = body.records  # type: ignore[attr-defined]
        keys = len(records) * len(served.spec.feature_names) + len(body.model_fields_set)
        if loc := duplicate_key(raw, keys, len(records)):
            # JSON parsers keep the last value of a repeated key silently
            raise cls._refused("duplicate_key", f"duplicate key {loc[-1]!r} in the request body", loc)
        return body

    @classmethod
    def _refused(cls, kind: str, message: str, loc: list[str | int]) -> ValidationError:
        return ValidationError.from_exception_data(cls.__name__, [InitErrorDetails(
            type=PydanticCustomError(kind, message), loc=tuple(loc), input=loc[-1])])


class MultiTaskModel:
    """The service's behaviour. `build_service` subclasses it with the /predict API (its request model
    comes from the champion) and what the start loaded: these class attributes."""

    settings: ClassVar[ServingSettings]
    start_control: ClassVar[VersionControl]
    startup_model: ClassVar[ServedModel]
    startup_shadow: ClassVar[str | None]

    def __init__(self) -> None:
        self.control = self.start_control
        self.generation, self.model = self._first_model()
        self.healthy = True
        self.metrics = ServiceMetrics()
        self.batcher = MeteredBatcher(self.metrics.batch_rows, self.settings.max_batch_size,
                                      self.settings.max_latency_ms)
        self.metrics.serving(self.model.tag)
        self.log = PredictionLogWriter(self.settings.prediction_log, self.settings.log_flush_seconds,
                                       self.settings.log_max_buffered_batches) if self.settings.prediction_log else None
        self.control.report(self.generation, self.model.tag)
        self.canary_guard = CanaryGuard(self.settings.canary)
        self.canary_stopped = (self.control.canary_stopped() or {}).get("tag")
        self.shadow: ShadowScorer | None = None
        self._set_shadow(self.control.published_shadow() if self.control.target() else self.startup_shadow)
        self._stop = threading.Event()
        threading.Thread(target=self._follow_control, name="version-control", daemon=True).start()
        if self.settings.prediction_log and self.settings.log_maintenance_seconds > 0:
            threading.Thread(target=self._maintain_log, name="prediction-log-maintenance", daemon=True).start()
        self.draining = False
        self._stop_server = signal.getsignal(signal.SIGTERM)  # uvicorn's: stop accepting, finish in-flight, exit
        signal.signal(signal.SIGTERM, self._drain)
        # what start-up allocated (modules, the model, the schema) is never garbage: keep it out of every
        # collection, and collect the young generation less often — full collections were 60-80 ms pauses
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)

    def _first_model(self) -> tuple[int, LoadedModel]:
        """The version the other workers serve (a restarted worker rejoins them); the champion when
        there is none or it no longer loads; and if the champion cannot serve either, give up (the
        server exits with the reason rather than respawn a worker that cannot answer)."""
        generation, tag = self.control.target() or (0, self.startup_model.tag)
        if tag != self.startup_model.tag:
            try:
                return generation, open_version(tag, self.settings.ort_threads)
            except ModelLoadError as exc:
                log.error("the served version no longer loads; every worker goes to the champion %s: %s",
                          self.startup_model.tag, exc)
                with self.control.lock():
                    generation = (self.control.target() or (generation, tag))[0] + 1
                    self.control.publish(generation, self.startup_model.tag)
        try:
            return generation, LoadedModel(self.startup_model, self.settings.ort_threads)
        except ModelLoadError as exc:
            self.control.give_up(str(exc))
            raise

    @bentoml.on_startup
    async def keep_heartbeat(self) -> None:
        """The watchdog's sign of life, from this worker's event loop (serving/server.py)."""
        async def beat() -> None:
            while True:
                self.control.beat()
                await asyncio.sleep(HEARTBEAT_SECONDS)

        self._heartbeat = asyncio.get_running_loop().create_task(beat())

    def _drain(self, signum: int, frame: Any) -> None:
        """SIGTERM: for `drain_seconds`, answer as usual but report not ready (a load balancer stops
        sending) and close each connection after its response (a keep-alive client reconnects instead
        of racing the close); then stop the way uvicorn does."""
        self.draining = True
        self.control.exiting(f"stopped by SIGTERM after draining {self.settings.drain_seconds:g} s")
        threading.Timer(self.settings.drain_seconds, self._stop_server, (signum, frame)).start()

    async def answer(self, records: list[Any], tasks: list[str] | None) -> dict[str, Any] | JSONResponse:
        rows = [vars(r) for r in records]
        if (canary := self._canary()) is not None and self.canary_guard.wants():
            answered = await self._answer_by_canary(canary, rows, tasks)
            if answered is not None:
                return answered
        model = self.model
        encoded = model.encoder.encode_records(rows)
        numeric, categorical = encoded.numeric, encoded.categorical
        if not np.isfinite(numeric).all():  # in range, yet beyond float32 once standardised
            i, j = map(int, np.argwhere(~np.isfinite(numeric))[0])
            field = model.encoder.numeric_names[j % len(model.encoder.numeric_names)]
            return JSONResponse(error_body("value too large for the model's scale", ["records", i, field]),
                                status_code=400)
        started = time.perf_counter()
        try:
            stacked = await self.batcher.infer(model, numeric, categorical)
        except Exception:
            self.healthy = False  # /readyz reports it until an inference succeeds again
            raise
        self.healthy = True
        if canary is not None:
            self.canary_guard.champion_answered(time.perf_counter() - started)
        return self._respond(model, encoded, stacked, tasks)

    def _respond(self, model: LoadedModel, encoded: EncodedRecords, stacked: np.ndarray,
                 tasks: list[str] | None) -> dict[str, Any]:
        names = list(dict.fromkeys(tasks)) if tasks else [t.name for t in model.served.spec.targets]
        self.metrics.answered(model.tag, names, len(stacked), dict(zip(model.encoder.categorical_names,
                                                                       encoded.oov.tolist(), strict=True)))
        request_id, now = uuid.uuid4().hex, datetime.now(UTC)
        if self.log:
            self.log.append(ServedBatch(request_id, now, model.served, encoded, stacked))
        if (shadow := self.shadow) and model is not shadow.model:
            shadow.offer(request_id, now, encoded, model.served)
        return {"model_version": model.tag, "request_id": request_id,
                "predictions": model.served.outputs(stacked, names if tasks else None)}

    def _canary(self) -> LoadedModel | None:
        """The version that answers the canary share: the shadow, unless this server rolled it back."""
        shadow = self.shadow
        if self.settings.canary.share == 0 or shadow is None or shadow.tag == self.canary_stopped:
            return None
        return shadow.model

    async def _answer_by_canary(self, canary: LoadedModel, rows: list[dict[str, Any]],
                                tasks: list[str] | None) -> dict[str, Any] | None:
        """The canary's answer; None (the champion answers) when it fails or the records do not fit its scale."""
        encoded = canary.encoder.encode_records(rows)
        if not np.isfinite(encoded.numeric).all():
            return None
        started = time.perf_counter()
        try:
            stacked = await self.batcher.infer(canary, encoded.numeric, encoded.categorical)
            ok = bool(np.isfinite(stacked).all())
        except Exception as exc:
            log.error("canary %s failed: %s: %s", canary.tag, type(exc).__name__, exc)
            ok = False
        self.metrics.canary_requests.labels(outcome="answered" if ok else "failed").inc()
        breach = self.canary_guard.canary_answered(ok, time.perf_counter() - started)
        if breach:
            self._roll_back_canary(canary.tag, breach)
        return self._respond(canary, encoded, stacked, tasks) if ok else None

    def _roll_back_canary(self, tag: str, reason: str) -> None:
        self.control.stop_canary(tag, reason)
        self.canary_stopped = tag
        self.metrics.canary_rollbacks.inc()
        self.metrics.canary_active.set(0)
        log.error("canary %s rolled back, the champion answers every request: %s", tag, reason)

    def reload(self) -> dict[str, Any]:
        """Serve the store's current champion in every worker, if it differs, loads and passes
        warm-up here first; otherwise raise ModelLoadError and keep serving what is served."""
        with self.control.lock():
            new = load_champion(self.settings.model_name)
            generation, tag = self.control.target() or (self.generation, self.model.tag)
            shadow, shadowed = self._shadow_wanted(), self.shadow.tag if self.shadow else None
            if new.tag == tag:
                if shadow == shadowed:
                    return {"status": "unchanged", "model_version": tag, "workers": self._workers_on(generation),
                            "shadow": shadow}
                self.control.publish(generation + 1, tag, shadow)  # the same champion, another shadow
                self._set_shadow(shadow)
                self._adopt(generation + 1, self.model)
                self.control.wait_for(generation + 1, self.settings.workers)
                return {"status": "reloaded", "model_version": tag, "workers": self._workers_on(generation + 1),
                        "shadow": self.shadow.tag if self.shadow else None}
            if new.signature != self.startup_model.signature:
                raise ModelLoadError(f"{new.tag} has other features or tasks than {self.startup_model.tag}; "
                                     "the request schema is fixed at start-up: restart the service to serve it")
            self._adopt(generation + 1, LoadedModel(new, self.settings.ort_threads))
            self._set_shadow(shadow)
            self.control.publish(generation + 1, new.tag, shadow)
            reports = self.control.wait_for(generation + 1, self.settings.workers)
            refused = [w for w in reports if (w["failed"] or -1) >= generation + 1]
            if refused:  # every worker goes back to the old version
                self.control.publish(generation + 2, tag, shadowed)
                self._set_shadow(shadowed)
                self._adopt(generation + 2, open_version(tag, self.settings.ort_threads))
                raise ModelLoadError(f"{new.tag}: worker {refused[0]['pid']} refused it ({refused[0]['error']})")
            return {"status": "reloaded", "model_version": new.tag, "workers": self._workers_on(generation + 1),
                    "shadow": self.shadow.tag if self.shadow else None}

    def _shadow_wanted(self) -> str | None:
        return self.startup_shadow and shadow_tag(self.settings.model_name)

    def _set_shadow(self, tag: str | None) -> None:
        """Score `tag` beside the champion from now on (None: no shadow). A shadow that cannot be
        loaded, or does not take the champion's features and tasks, is counted and logged, never served."""
        if tag == (self.shadow.tag if self.shadow else None):
            return
        new = None
        if tag is not None:  # loaded before the swap: the old shadow scores meanwhile
            try:
                model = open_version(tag, self.settings.ort_threads)
                if model.served.signature != self.startup_model.signature:
                    raise ModelLoadError(f"{tag} has other features or tasks than the champion")
            except ModelLoadError as exc:
                log.error("shadow %s is not scored: %s", tag, exc)
                self.metrics.shadow_load_failures.inc()
            else:
                new = ShadowScorer(model, self.settings.prediction_log, self.settings.shadow_share, self.metrics)
        old, self.shadow = self.shadow, new
        if old:
            old.close()
        self.metrics.shadowing(self.shadow.tag if self.shadow else None)

    def _workers_on(self, generation: int) -> int:
        return sum(w["generation"] == generation for w in self.control.workers())

    def _adopt(self, generation: int, model: LoadedModel) -> None:
        self.model, self.generation = model, generation
        self.metrics.serving(model.tag)
        self.control.report(generation, model.tag)

    def _follow_control(self) -> None:
        """Background thread: load what another worker published; the old version serves meanwhile."""
        failed = -1
        while not self._stop.wait(POLL_SECONDS):
            if self.log:
                self.metrics.prediction_log(self.log)
            if self.settings.canary.share > 0:
                self.canary_stopped = (self.control.canary_stopped() or {}).get("tag")
                self.metrics.canary_active.set(1 if self._canary() else 0)
            target = self.control.target()
            if target is None or target[0] <= self.generation or target[0] == failed:
                continue
            generation, tag = target
            try:
                model = self.model if tag == self.model.tag else open_version(tag, self.settings.ort_threads)
            except ModelLoadError as exc:
                failed = generation
                self.control.report(self.generation, self.model.tag, failed=generation, error=str(exc))
                continue
            self._set_shadow(self.control.published_shadow())  # before reporting: a reload waits for the report
            self._adopt(generation, model)

    def _maintain_log(self) -> None:
        """Background thread: compaction and retention (one worker at a time), and the log's disk use."""
        while True:
            try:
                self.metrics.log_maintained(maintain_log(self.settings.prediction_log,
                                                         self.settings.log_compact_after_seconds,
                                                         self.settings.log_retention_days))
            except Exception:  # a full disk fails a compaction: nothing was removed, the next round retries
                log.exception("prediction log maintenance failed")
            if self._stop.wait(self.settings.log_maintenance_seconds):
                return

    async def __is_ready__(self) -> bool:
        return self.healthy and not self.draining and not self.control.any_stalled()

    @bentoml.on_shutdown
    def flush_prediction_log(self) -> None:
        self._stop.set()
        if self.shadow:
            self.shadow.close()
        if self.log:
            self.log.close()


class PredictEndpoint:
    """POST /predict decoded and encoded here, then answered by `MultiTaskModel.answer` — the method
    the BentoML API calls too. BentoML's own HTTP layer for an API (a signature inspection and a JSON
    schema built per request) costs more than the model; the request model, its decoding and the error
    body are the same (`PredictInput`), and the BentoML API stays the published contract."""

    def __init__(self, app: Any, path: str, request: type[PredictInput]) -> None:
        self.app = app
        self.path = path
        self.request = request

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        response = await self.respond(await Request(scope, receive).body())
        if bentoml.get_current_service().draining:
            response.headers["connection"] = "close"
        await response(scope, receive, send)

    async def respond(self, raw: bytes) -> Response:
        svc = bentoml.get_current_service()
        try:
            body = self.request.decode(raw, svc.model.served)
        except ValidationError as exc:
            return JSONResponse(validation_error_body(exc), status_code=400)
        result = await svc.answer(body.records, body.tasks)  # type: ignore[attr-defined]
        return result if isinstance(result, Response) else \
            Response(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def build_service(settings: ServingSettings | None = None) -> Any:
    """The BentoML service for the champion of `settings.model_name` (default: the settings in the
    environment). A champion that cannot be loaded stops the server with the reason."""
    settings = settings or ServingSettings.from_env()
    control = VersionControl(settings.control_dir or default_control_dir())
    try:
        startup = load_champion(settings.model_name)
    except ModelLoadError as exc:
        control.give_up(str(exc))
    wants_shadow = settings.shadow_share > 0 or settings.canary.share > 0
    bound_route_labels()
    request = request_model(record_model(startup.spec, settings.max_category_chars), startup.spec,
                            settings.max_rows, base=PredictInput)

    class MultiTaskModelService(MultiTaskModel):
        @bentoml.api(route="/predict", input_spec=request)
        async def predict(self, records: list[Any], tasks: list[str] | None = None) -> dict[str, Any]:
            """Every requested task's answer for every record, from one model version."""
            return await self.answer(records, tasks)

    MultiTaskModelService.settings = settings
    MultiTaskModelService.start_control = control
    MultiTaskModelService.startup_model = startup
    MultiTaskModelService.startup_shadow = shadow_tag(settings.model_name) if wants_shadow else None
    traced = [] if settings.trace_predictions else ["/predict"]
    service = bentoml.service(name="mtlops", workers=settings.workers, traffic={"timeout": 60},
                              logging={"access": {"enabled": settings.access_log}},
                              tracing={"excluded_urls": ",".join(["/livez", "/readyz", "/metrics", *traced])})(
        bentoml.asgi_app(OPS_ROUTES, path="/")(MultiTaskModelService))
    service.add_asgi_middleware(RestoreRoutePath)  # first added: outermost of ours
    service.add_asgi_middleware(OpenApiDocument, extra_paths=OpenApiDocument.ops_paths())
    service.add_asgi_middleware(JsonOnly, paths=("/predict",))
    service.add_asgi_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.fast_path:
        service.add_asgi_middleware(PredictEndpoint, path="/predict", request=request)
    return service


def __getattr__(name: str) -> Any:
    """`MultiTaskModelService`, built once on first access. BentoML finds a service's import path among
    its module's attributes, so the built service is kept as one."""
    if name != "MultiTaskModelService":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    service = globals()[name] = build_service()
    return service
