"""ASGI middleware in front of the service: 413 for bodies over the limit and 415 for anything but
JSON, both before any parsing, and the OpenAPI document as the service really answers.

Every error the service sends has one shape, `ErrorResponse`: {"error": message, "detail": [...]},
`detail` naming each offending location, e.g. ["records", 2, "city"] for record 2's `city`
(pydantic's errors, as BentoML returns them for a request that fails the schema).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

Scope = dict[str, Any]
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
ERROR_SCHEMA = {
    "type": "object", "title": "ErrorResponse", "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "detail": {"type": "array", "items": {
            "type": "object", "required": ["loc", "msg", "type"],
            "properties": {"loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                           "msg": {"type": "string"}, "type": {"type": "string"}}}},
    },
}


def duplicate_key(body: bytes, keys: int, records: int) -> list[str | int] | None:
    """Where a key repeats in a request body that already passed the schema (every JSON parser here
    keeps the last value silently), or None. `keys` is how many keys the parsed body has. Every key
    is followed by exactly one literal colon, so a body with no more colons than keys has no repeat:
    one single-byte count settles the usual body; only one with more colons (a repeat, or a colon
    inside a string) is parsed again, pair by pair, to find the repeat."""
    if body.count(b":") <= keys:
        return None
    objects: list[int] = [0]  # the records are the only nested objects; they close in order, the top level last
    found: list[list[str | int]] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [k for k, _ in items]
        if len(set(names)) < len(names) and not found:
            repeated = next(k for i, k in enumerate(names) if k in names[:i])
            found.append(["records", objects[0], repeated] if objects[0] < records else [repeated])
        objects[0] += 1
        return dict(items)

    json.loads(body, object_pairs_hook=pairs)
    return found[0] if found else None


ROUTES = ("/predict", "/model", "/admin/reload", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/")
STATIC_PREFIX = "/static_content/"
ORIGINAL_PATH = "mtlops.original_path"


def route_label(path: str) -> str:
    """The path as a metric label: the service's own routes as they are, everything else one label."""
    if path in ROUTES:
        return path
    return STATIC_PREFIX if path.startswith(STATIC_PREFIX) else "unmatched"


def bound_route_labels() -> None:
    """BentoML labels its request metrics with the raw path, so every unknown path a scanner tries
    becomes a new series in /metrics. Its metrics middleware is the outermost one and is looked up
    when the app is built: give it a subclass that sees the route label as the path;
    `RestoreRoutePath` (the outermost middleware of ours) puts the real path back."""
    from bentoml._internal.server.http import instruments

    base = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "bounded", False):
        return

    class BoundedRouteMetrics(base):  # type: ignore[misc, valid-type]
        bounded = True

        async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and (label := route_label(scope["path"])) != scope["path"]:
                scope = {**scope, "path": label, ORIGINAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = BoundedRouteMetrics


class RestoreRoutePath:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if ORIGINAL_PATH in scope:
            scope = {**scope, "path": scope[ORIGINAL_PATH]}
        await self.app(scope, receive, send)


def error_body(message: str, loc: Sequence[str | int] | None = None) -> dict[str, Any]:
    """An `ErrorResponse`; with `loc`, one detail entry naming the offending location."""
    if loc is None:
        return {"error": message}
    return {"error": message, "detail": [{"loc": list(loc), "msg": message, "type": "value_error"}]}


def validation_error_body(exc: ValidationError) -> dict[str, Any]:
    """The 400 body of a request the schema refuses: what BentoML's API layer answers a ValidationError
    with (`_bentoml_impl.server.app`, `api_endpoint_wrapper`), so the fast path answers the same."""
    return {"error": f"{exc.error_count()} validation error for {exc.title}",
            "detail": exc.errors(include_context=False, include_input=False)}


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        chunks, size, more = [], 0, True
        while more:  # chunked bodies declare no length: count what arrives
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any) -> None:
        await _send_json(send, 413, error_body(f"request body larger than {self.max_bytes} bytes "
                                               "(MTLOPS_MAX_BODY_BYTES)"))


class JsonOnly:
    """415 for a POST to `paths` whose content type is not application/json (or missing)."""

    def __init__(self, app: Any, paths: Sequence[str]) -> None:
        self.app = app
        self.paths = set(paths)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            declared = dict(scope.get("headers", [])).get(b"content-type", b"").decode("latin-1")
            if declared.split(";")[0].strip().lower() != "application/json":
                await _send_json(send, 415, error_body(
                    f"content type must be application/json, got {declared or 'none'!r}", ["header", "content-type"]))
                return
        await self.app(scope, receive, send)


class OpenApiDocument:
    """GET /docs.json: BentoML's generated document, corrected to what the service answers —
    every error is an `ErrorResponse` (BentoML documents another shape), /predict's 413 and 415,
    and the routes BentoML does not list (`extra_paths`)."""

    def __init__(self, app: Any, extra_paths: dict[str, Any]) -> None:
        self.app = app
        self.extra_paths = extra_paths

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/docs.json":
            await self.app(scope, receive, send)
            return
        status, chunks = 500, []

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        if status != 200:
            await _send_json(send, status, error_body("could not generate the OpenAPI document"))
            return
        await _send_json(send, 200, self.corrected(json.loads(b"".join(chunks))))

    def corrected(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc.setdefault("components", {}).setdefault("schemas", {})["ErrorResponse"] = ERROR_SCHEMA
        errors = {"400": "the request does not fit the schema (each detail names record and field)",
                  "413": "request body too large", "415": "content type is not application/json",
                  "500": "unexpected server error"}
        for item in doc.get("paths", {}).values():
            op = item.get("post")
            if op and "requestBody" in op:
                op["requestBody"]["required"] = True
                body = op["requestBody"]["content"]["application/json"]["schema"]
                body["additionalProperties"] = False
                for prop in body.get("properties", {}).values():
                    if "default" in prop and prop["default"] is None:  # BentoML drops the null of Optional
                        prop["nullable"] = True
                op["responses"] = {"200": op["responses"]["200"], **{
                    code: {"description": why, "content": {"application/json": {"schema": ERROR_REF}}}
                    for code, why in errors.items()}}
        doc["paths"].update(self.extra_paths)
        return doc

    @staticmethod
    def ops_paths() -> dict[str, Any]:
        def error(why: str) -> dict[str, Any]:
            return {"description": why, "content": {"application/json": {"schema": ERROR_REF}}}

        reloaded = {"type": "object", "required": ["status", "model_version", "workers"], "properties": {
            "status": {"type": "string", "enum": ["reloaded", "unchanged"]}, "model_version": {"type": "string"},
            "workers": {"type": "integer", "description": "workers serving that version"}}}
        version = {"type": "string", "nullable": True, "description": "a model version"}
        task = {"type": "object", "required": ["name", "type", "introduced_by"], "properties": {
            "name": {"type": "string"}, "type": {"type": "string"},
            "introduced_by": version | {"description": "the version that added the task (null: not recorded)"}}}
        retired = {"type": "object", "required": ["name", "retired_by"], "properties": {
            "name": {"type": "string"}, "retired_by": version | {"description": "the version that dropped it"}}}
        model = {"type": "object", "required": ["model_version", "tasks", "retired_tasks", "features"],
                 "properties": {"model_version": {"type": "string"}, "tasks": {"type": "array", "items": task},
                                "retired_tasks": {"type": "array", "items": retired,
                                                  "description": "a `tasks` filter naming one of these gets a 400"}}}
        return {
            "/model": {"get": {
                "tags": ["Service APIs"], "operationId": "mtlops__model",
                "description": "The served version: its tasks (with the version that added each), the tasks retired "
                               "before it, features, training metrics, data lineage.",
                "responses": {"200": {"description": "the served model", "content": {"application/json": {
                    "schema": model}}}}}},
            "/admin/reload": {"post": {
                "tags": ["Service APIs"], "operationId": "mtlops__admin_reload",
                "description": "Serve the store's current champion in every worker "
                               "(Authorization: Bearer $MTLOPS_ADMIN_TOKEN).",
                "responses": {"200": {"description": "every worker serves the champion",
                                      "content": {"application/json": {"schema": reloaded}}},
                              "401": error("missing or wrong bearer token"),
                              "403": error("admin endpoints disabled: no MTLOPS_ADMIN_TOKEN"),
                              "409": error("the champion cannot be served; the old version keeps serving")}}},
        }
