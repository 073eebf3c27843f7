"""Serving benchmark: `mtlops serve` against its limits, and one multi-head service vs K single-task ones.

    python benchmarks/serving.py            # 8 s per cell
    python benchmarks/serving.py --quick    # 3 s per cell

Trains (briefly: serving speed does not depend on accuracy) one flights model with all K=4 heads and
K single-task models of the same architecture, registers them in a throw-away model store, and
measures in the same run, on the same model:
  (a) in-process ONNX Runtime (the limit: `session.run` in a loop, 1 thread),
  (b) the bare floor server (benchmarks/floor_server.py: Starlette + uvicorn, same JSON, same
      encoder, same ONNX session, nothing else; as many workers as `mtlops serve`),
  (c) `mtlops serve` (default workers = cores),
  (d) K single-task `mtlops serve`s loaded at once (a client needing every answer waits for the
      slowest: its throughput is the slowest service's),
at concurrency 1, 8, 32 x batch 1, 64, loaded by `wrk` (a native generator; `apt-get install -y wrk`)
bounded in time, on loopback. Also where the time of one request goes (in-process, per stage), and
the resident memory of each server's process tree. Prints tables and writes benchmarks/results/serving.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="mtlops-bench-serving-")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `serving` is the package there, not this script

import httpx
import numpy as np
import orjson
import pandas as pd
import psutil
import torch
from pydantic import create_model
from rich.console import Console
from rich.table import Table

from components import registry
from components.config import ProjectConfig, config_to_yaml, load_config
from components.data import load_source, sample_rows, select_window, with_labels
from components.export import export_onnx
from components.features import SPEC_FILE, FeatureSpec
from components.inference import ONNX_FILE, onnx_session
from components.stl import single_task_config
from components.train import train
from serving.client import to_records
from serving.launch import ServerProcess, free_port
from serving.runtime import ServedModel, record_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serving.md"
CONCURRENCY = (1, 8, 32)
BATCHES = (1, 64)
console = Console(width=140)
WRK_SCRIPT = """
local f = io.open(os.getenv("BODY_FILE"), "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50": %f, "p95": %f, "p99": %f}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


@dataclass
class Cell:
    setup: str
    concurrency: int
    batch: int
    requests: int
    failed: int
    records_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def flights_config(task: str | None, name: str) -> ProjectConfig:
    """The reference config (all heads) or its single-task version, trained for one epoch."""
    cfg = load_config(ROOT / "configs" / "flights.yaml")
    cfg = single_task_config(cfg, task) if task else cfg
    return cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": 1, "threads": 2}),
                                  "registry": cfg.registry.model_copy(update={"model_name": name})})


def build_model(cfg: ProjectConfig, frame: pd.DataFrame, work: Path) -> Path:
    """Train, export, register and promote; returns the export folder."""
    w = cfg.data.windows
    model_dir, onnx_dir = work / cfg.registry.model_name / "model", work / cfg.registry.model_name / "onnx"
    train(cfg, select_window(frame, cfg.data.time_column, w.train.start, w.train.end),
          select_window(frame, cfg.data.time_column, w.validation.start, w.validation.end), model_dir, progress=False)
    export_onnx(model_dir, onnx_dir, frame.head(64))
    registry.promote(cfg.registry.model_name, registry.register(onnx_dir, cfg, {}, {"data_version": "benchmark"}))
    (work / f"{cfg.registry.model_name}.yaml").write_text(config_to_yaml(cfg))
    return model_dir


def write_bodies(frame: pd.DataFrame, cfg: ProjectConfig, work: Path) -> dict[int, Path]:
    rows = to_records(frame, cfg.features.names)
    paths = {}
    for batch in BATCHES:
        paths[batch] = work / f"body-{batch}.json"
        paths[batch].write_text(json.dumps({"records": rows[:batch]}))
    return paths


def wrk(urls: list[str], body: Path, concurrency: int, seconds: float, script: Path) -> list[dict]:
    """One wrk per URL, all at once; each result as wrk's Lua `done` printed it."""
    procs = [subprocess.Popen(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--timeout", "10s",
                               "-s", str(script), u + "/predict"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "BODY_FILE": str(body)}) for u in urls]
    out = []
    for p in procs:
        text = p.communicate(timeout=seconds + 60)[0]
        out.append(json.loads(next(line[4:] for line in text.splitlines() if line.startswith("WRK "))))
    return out


def cell(label: str, results: list[dict], concurrency: int, batch: int) -> Cell:
    """The slowest service decides (for one service, that one)."""
    slow = min(results, key=lambda r: r["requests"] / r["duration_us"])
    return Cell(label, concurrency, batch, slow["requests"], sum(r["errors"] + r["non2xx"] for r in results),
                slow["requests"] * batch / (slow["duration_us"] / 1e6),
                max(r["p50"] for r in results) / 1000, max(r["p95"] for r in results) / 1000,
                max(r["p99"] for r in results) / 1000)


def tree_rss_mib(pid: int) -> float:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def load_cells(label: str, urls: list[str], bodies: dict[int, Path], seconds: float, script: Path) -> list[Cell]:
    cells = []
    for batch in BATCHES:
        wrk(urls, bodies[batch], 1, 1, script)  # warm-up
        for c in CONCURRENCY:
            cells.append(cell(label, wrk(urls, bodies[batch], c, seconds, script), c, batch))
            last = cells[-1]
            console.print(f"  {label} c={c} batch={batch}: {last.records_per_s:,.0f} records/s, "
                          f"p50 {last.p50_ms:.2f} ms, p99 {last.p99_ms:.1f} ms, {last.failed} failed")
    return cells


def run_mtlops(label: str, configs: list[Path], bodies: dict[int, Path], work: Path, seconds: float,
               script: Path) -> tuple[list[Cell], float]:
    servers = [ServerProcess(c, work / f"{c.stem}.out", max_rows=max(BATCHES),
                             prediction_log=work / f"{c.stem}-predictions") for c in configs]
    try:
        for s in servers:
            s.wait_ready()
        cells = load_cells(label, [s.url for s in servers], bodies, seconds, script)
        rss = sum(tree_rss_mib(s.proc.pid) for s in servers)
    finally:
        for s in servers:
            s.stop()
    return cells, rss


def run_floor(onnx_dir: Path, bodies: dict[int, Path], work: Path, seconds: float,
              script: Path) -> tuple[list[Cell], float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "floor_server.py"), str(onnx_dir),
                             "--port", str(port), "--workers", str(os.cpu_count() or 1)],
                            stdout=(work / "floor.out").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        cells = load_cells("floor", [f"http://127.0.0.1:{port}"], bodies, seconds, script)
        rss = tree_rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return cells, rss


def timed_us(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def request_profile(onnx_dir: Path, bodies: dict[int, Path], repeats: int) -> list[tuple[int, dict[str, float]]]:
    """Median µs of each stage of one /predict, in-process, as the service runs them (1 ORT thread)."""
    spec = FeatureSpec.load(onnx_dir / SPEC_FILE)
    served = ServedModel("bench", onnx_dir, spec)
    session = onnx_session(onnx_dir / ONNX_FILE, threads=1)
    encoder = spec.record_encoder()
    request_model = create_model("Input", records=(list[record_model(spec)], ...))  # type: ignore[valid-type]
    out = []
    for batch in BATCHES:
        raw = bodies[batch].read_bytes()
        parsed = request_model.model_validate_json(raw)
        rows = [vars(r) for r in parsed.records]
        numeric, categorical, _ = encoder.encode(rows)
        feeds = {"numeric": numeric, "categorical": categorical}
        outs = session.run(None, feeds)
        stacked = np.concatenate([o.reshape(batch, -1) for o in outs], axis=1)
        answer = {"predictions": served.outputs(stacked, None)}
        out.append((batch, {
            "parse + validate (pydantic)": timed_us(lambda r=raw: request_model.model_validate_json(r), repeats),
            "encode (RecordEncoder)": timed_us(lambda r=rows: encoder.encode(r), repeats),
            "ONNX Runtime": timed_us(lambda f=feeds: session.run(None, f), repeats),
            "format outputs": timed_us(lambda s=stacked: served.outputs(s, None), repeats),
            "JSON encode (orjson)": timed_us(lambda a=answer: orjson.dumps(a), repeats),
        }))
    return out


def markdown(cells: list[Cell], k: int, rss: dict[str, float], profile: list[tuple[int, dict[str, float]]],
             args: argparse.Namespace) -> str:
    by = {(c.setup, c.concurrency, c.batch): c for c in cells}
    ort_us = {b: stages["ONNX Runtime"] for b, stages in profile}
    lines = [f"# Serving benchmark ({'quick' if args.quick else 'full'})", "",
             f"Command: `python benchmarks/serving.py{' --quick' if args.quick else ''}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
             f"torch {torch.__version__}; load generator (`wrk`, 1 thread) on the same machine; "
             f"{os.cpu_count()} workers per server, ONNX Runtime 1 thread per worker; "
             f"load average at start {args.load_at_start}.", "",
             "## `mtlops serve` vs the bare floor server vs in-process ONNX Runtime", "",
             "In-process ORT is one thread calling `session.run` in a loop (the limit of one core).", "",
             "| concurrency | batch | in-process ORT rec/s | floor rec/s | mtlops rec/s | floor / mtlops "
             "| floor p50/p95/p99 ms | mtlops p50/p95/p99 ms | failed (floor, mtlops) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in CONCURRENCY:
        for b in BATCHES:
            f, m = by[("floor", c, b)], by[("mtlops", c, b)]
            lines.append(f"| {c} | {b} | {b / ort_us[b] * 1e6:,.0f} | {f.records_per_s:,.0f} | {m.records_per_s:,.0f} "
                         f"| {f.records_per_s / m.records_per_s:.2f}× | {f.p50_ms:.2f} / {f.p95_ms:.2f} / "
                         f"{f.p99_ms:.1f} | {m.p50_ms:.2f} / {m.p95_ms:.2f} / {m.p99_ms:.1f} "
                         f"| {f.failed}, {m.failed} |")
    lines += ["", f"## One multi-head service vs K={k} single-task services (a client needs all K answers)", "",
              "All K services are loaded at once; the slowest one's rate is the client's.", "",
              "| concurrency | batch | multi-head rec/s | K single rec/s | ratio | multi p50/p99 ms "
              "| K single p50/p99 ms (slowest) | failed |", "|---|---|---|---|---|---|---|---|"]
    for c in CONCURRENCY:
        for b in BATCHES:
            m, s = by[("mtlops", c, b)], by[("single", c, b)]
            lines.append(f"| {c} | {b} | {m.records_per_s:,.0f} | {s.records_per_s:,.0f} | "
                         f"{m.records_per_s / s.records_per_s:.2f}× | {m.p50_ms:.2f} / {m.p99_ms:.1f} | "
                         f"{s.p50_ms:.2f} / {s.p99_ms:.1f} | {m.failed + s.failed} |")
    lines += ["", "## Memory (resident, whole process tree)", "", "| server | RSS MiB |", "|---|---|"]
    lines += [f"| {name} | {v:,.0f} |" for name, v in rss.items()]
    lines += ["", "## Where one request's time goes (in-process, median µs per stage, 1 thread)", "",
              "| stage | " + " | ".join(f"batch {b}" for b, _ in profile) + " |",
              "|---|" + "---|" * len(profile)]
    for stage in profile[0][1]:
        lines.append(f"| {stage} | " + " | ".join(f"{stages[stage]:,.0f}" for _, stages in profile) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(st.values()):,.0f}**" for _, st in profile) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per cell instead of 8")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: `apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk`")
    args.load_at_start = f"{os.getloadavg()[0]:.2f}"
    seconds = 3.0 if args.quick else 8.0

    work = Path(tempfile.mkdtemp(prefix="mtlops-bench-work-"))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    multi_cfg = flights_config(None, "bench-multi")
    df = load_source(multi_cfg.data)
    df = with_labels(sample_rows(df[df[multi_cfg.data.time_column] < "2013-07-01"].reset_index(drop=True), 0.1, 0),
                     multi_cfg)
    tasks = [t.name for t in multi_cfg.tasks]
    console.print(f"training 1 multi-head + {len(tasks)} single-task models (1 epoch each) ...")
    multi_dir = build_model(multi_cfg, df, work)
    for t in tasks:
        build_model(flights_config(t, f"bench-single-{t.replace('_', '-')}"), df, work)
    test = select_window(df, multi_cfg.data.time_column, "2013-06-01", "2013-07-01").reset_index(drop=True)
    bodies = write_bodies(test, multi_cfg, work)
    onnx_dir = multi_dir.parent / "onnx"

    rss = {}
    profile = request_profile(onnx_dir, bodies, repeats=300 if args.quick else 1000)
    floor, rss["floor server"] = run_floor(onnx_dir, bodies, work, seconds, script)
    mtlops, rss["mtlops serve (multi-head)"] = run_mtlops("mtlops", [work / "bench-multi.yaml"], bodies, work,
                                                          seconds, script)
    single, rss[f"{len(tasks)} single-task mtlops serves"] = run_mtlops(
        "single", [work / f"bench-single-{t.replace('_', '-')}.yaml" for t in tasks], bodies, work, seconds, script)
    cells = floor + mtlops + single

    text = markdown(cells, len(tasks), rss, profile, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    table = Table(title="serving: records/s and latency (ms)")
    for col in ("server", "concurrency", "batch", "records/s", "p50", "p95", "p99", "failed"):
        table.add_column(col, justify="right")
    for c in cells:
        table.add_row(c.setup, str(c.concurrency), str(c.batch), f"{c.records_per_s:,.0f}", f"{c.p50_ms:.2f}",
                      f"{c.p95_ms:.2f}", f"{c.p99_ms:.1f}", str(c.failed))
    console.print(table)
    console.print(text)


if __name__ == "__main__":
    main()
