"""The floor for `mtlops serve`: the leanest Starlette app that parses the same JSON, encodes it
with the same FeatureSpec and calls the same ONNX graph — no validation, no logging, no metrics;
orjson both ways, the graph's arrays serialized as they are (no per-value Python lists).

    python -m benchmarks.floor_server MODEL_DIR --port 3200 --workers 2

MODEL_DIR is an exported model folder (model.onnx + feature_spec.json). benchmarks/serving_load.py
starts it beside `mtlops serve` so both are measured in the same run.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from components.artifacts.inference import ONNX_FILE, onnx_session
from components.data.features import SPEC_FILE, FeatureSpec


def build_app(model_dir: Path, threads: int = 1) -> Starlette:
    spec = FeatureSpec.load(model_dir / SPEC_FILE)
    encoder = spec.record_encoder()
    session = onnx_session(model_dir / ONNX_FILE, threads)
    names = [o.name for o in session.get_outputs()]

    async def predict(request: Request) -> Response:
        records = orjson.loads(await request.body())["records"]
        numeric, categorical, _ = encoder.encode(records)
        outs = session.run(None, {"numeric": numeric, "categorical": categorical})
        body = dict(zip(names, outs, strict=True))
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def app() -> Starlette:  # uvicorn --factory entry point (one per worker process)
    return build_app(Path(os.environ["FLOOR_MODEL_DIR"]), int(os.environ.get("FLOOR_ORT_THREADS", "1")))


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--port", type=int, default=3200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ort-threads", type=int, default=1)
    args = parser.parse_args()
    os.environ["FLOOR_MODEL_DIR"] = str(args.model_dir.resolve())
    os.environ["FLOOR_ORT_THREADS"] = str(args.ort_threads)
    uvicorn.run("benchmarks.floor_server:app", factory=True, host="127.0.0.1", port=args.port, workers=args.workers,
                log_level="warning", access_log=False, app_dir=str(Path(__file__).resolve().parents[1]))
