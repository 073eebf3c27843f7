"""Serving benchmark: one multi-head service vs K single-task services, on loopback.

    python benchmarks/serving.py            # 8 s per cell
    python benchmarks/serving.py --quick    # 3 s per cell

Trains (briefly: serving speed does not depend on accuracy) one flights model with
all K=4 heads and K single-task models of the same architecture, registers them in
a throw-away model store, starts `mtlops serve` for each, and drives them with a
bounded async httpx load generator (bounded in time and in requests). For the K
single-task setup one "request" asks all K services concurrently, as a client that
needs every prediction must; its latency is that of the slowest answer.

Also: ONNX Runtime vs PyTorch eager for the same model in-process (1 thread each),
and the resident memory of the service process trees. Prints tables and writes
benchmarks/results/serving.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="mtlops-bench-serving-")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `serving` is the package there, not this script

import httpx
import numpy as np
import pandas as pd
import psutil
import torch
from rich.console import Console
from rich.table import Table

from components import registry
from components.config import ProjectConfig, config_to_yaml, load_config
from components.data import load_source, sample_rows, select_window, with_labels
from components.export import export_onnx
from components.inference import ONNX_FILE, onnx_session
from components.stl import single_task_config
from components.train import load_trained, to_tensors, train
from serving.client import to_records
from serving.launch import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serving.md"
CONCURRENCY = (1, 8, 32)
BATCHES = (1, 64)
console = Console(width=140)


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


def payloads(frame: pd.DataFrame, cfg: ProjectConfig, batch: int, n: int = 32) -> list[bytes]:
    rows = to_records(frame, cfg.features.names)
    return [json.dumps({"records": rows[i * batch:(i + 1) * batch]}).encode() for i in range(n)]


async def drive(urls: list[str], bodies: list[bytes], concurrency: int, batch: int, seconds: float,
                max_requests: int) -> Cell:
    latencies: list[float] = []
    failed = 0
    limits = httpx.Limits(max_connections=concurrency * len(urls) + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        stop_at = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal failed
            i = k
            while time.perf_counter() < stop_at and len(latencies) + failed < max_requests:
                body = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    answers = await asyncio.gather(*(client.post(u + "/predict", content=body,
                                                                 headers={"content-type": "application/json"})
                                                     for u in urls))
                except httpx.TransportError:  # a dropped connection is a failed request, not a crash
                    failed += 1
                    continue
                if all(a.status_code == 200 for a in answers):
                    latencies.append(time.perf_counter() - t0)
                else:
                    failed += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    q = np.percentile(ms, [50, 95, 99]) if len(ms) else [float("nan")] * 3
    return Cell("", concurrency, batch, len(latencies), failed, len(latencies) * batch / elapsed, *q)


def tree_rss_mib(pid: int) -> float:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def run_setup(label: str, configs: list[Path], frame: pd.DataFrame, cfg: ProjectConfig, work: Path,
              seconds: float, max_requests: int) -> tuple[list[Cell], float]:
    servers = [ServerProcess(c, work / f"{c.stem}.out", env={"MTLOPS_ORT_THREADS": "1"}, max_rows=max(BATCHES),
                             prediction_log=work / f"{c.stem}-predictions") for c in configs]
    try:
        for s in servers:
            s.wait_ready()
        urls = [s.url for s in servers]
        cells = []
        for batch in BATCHES:
            bodies = payloads(frame, cfg, batch)
            asyncio.run(drive(urls, bodies, 1, batch, 1.0, 50))  # warm-up
            for c in CONCURRENCY:
                cell = asyncio.run(drive(urls, bodies, c, batch, seconds, max_requests))
                cell.setup = label
                cells.append(cell)
                console.print(f"  {label} c={c} batch={batch}: {cell.records_per_s:,.0f} records/s, "
                              f"p99 {cell.p99_ms:.1f} ms, {cell.failed} failed")
        rss = sum(tree_rss_mib(s.proc.pid) for s in servers)
    finally:
        for s in servers:
            s.stop()
    return cells, rss


def onnx_vs_eager(model_dir: Path, onnx_dir: Path, frame: pd.DataFrame, repeats: int) -> list[tuple[int, float, float]]:
    torch.set_num_threads(1)
    model, spec, _ = load_trained(model_dir)
    model.eval()
    session = onnx_session(onnx_dir / ONNX_FILE, threads=1)
    out = []
    for batch in BATCHES:
        data = to_tensors(frame.head(batch), spec)
        feeds = {"numeric": data.numeric.numpy(), "categorical": data.categorical.numpy()}

        def timed(fn) -> float:  # type: ignore[no-untyped-def]
            for _ in range(20):
                fn()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return statistics.median(times) * 1e6

        with torch.inference_mode():
            eager = timed(lambda d=data: model(d.numeric, d.categorical))
        ort = timed(lambda f=feeds: session.run(None, f))
        out.append((batch, ort, eager))
    return out


def markdown(cells: list[Cell], k: int, rss: dict[str, float], infer: list[tuple[int, float, float]],
             args: argparse.Namespace) -> str:
    lines = [f"# Serving benchmark ({'quick' if args.quick else 'full'})", "",
             f"Command: `python benchmarks/serving.py{' --quick' if args.quick else ''}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
             f"torch {torch.__version__}; load generator on the same machine; ONNX Runtime 1 thread per service.",
             "", f"## One multi-head service vs K={k} single-task services (a request needs all K answers)", "",
             "| concurrency | batch | multi-head rec/s | K single rec/s | ratio | multi p50/p95/p99 ms "
             "| K single p50/p95/p99 ms | failed |", "|---|---|---|---|---|---|---|---|"]
    multi = {(c.concurrency, c.batch): c for c in cells if c.setup == "multi-head"}
    single = {(c.concurrency, c.batch): c for c in cells if c.setup != "multi-head"}
    for key, m in multi.items():
        s = single[key]
        lines.append(f"| {key[0]} | {key[1]} | {m.records_per_s:,.0f} | {s.records_per_s:,.0f} | "
                     f"{m.records_per_s / s.records_per_s:.2f}× | {m.p50_ms:.1f} / {m.p95_ms:.1f} / {m.p99_ms:.1f} | "
                     f"{s.p50_ms:.1f} / {s.p95_ms:.1f} / {s.p99_ms:.1f} | {m.failed + s.failed} |")
    lines += ["", "## Memory (resident, whole process tree)", "", "| setup | RSS MiB |", "|---|---|"]
    lines += [f"| {name} | {v:,.0f} |" for name, v in rss.items()]
    lines += ["", "## In-process inference, multi-head model (median µs per call, 1 thread)", "",
              "| batch | ONNX Runtime | PyTorch eager | speed-up |", "|---|---|---|---|"]
    lines += [f"| {b} | {o:.0f} | {e:.0f} | {e / o:.1f}× |" for b, o, e in infer]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per cell instead of 8")
    parser.add_argument("--max-requests", type=int, default=20_000, help="bound per cell")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 8.0

    work = Path(tempfile.mkdtemp(prefix="mtlops-bench-work-"))
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

    cells, rss = [], {}
    m_cells, rss["multi-head service"] = run_setup("multi-head", [work / "bench-multi.yaml"], test, multi_cfg, work,
                                                   seconds, args.max_requests)
    s_cells, rss[f"{len(tasks)} single-task services"] = run_setup(
        "single", [work / f"bench-single-{t.replace('_', '-')}.yaml" for t in tasks], test, multi_cfg, work,
        seconds, args.max_requests)
    cells = m_cells + s_cells
    infer = onnx_vs_eager(multi_dir, multi_dir.parent / "onnx", test, repeats=300 if args.quick else 1000)

    text = markdown(cells, len(tasks), rss, infer, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    table = Table(title="serving: records/s and p99 (ms)")
    for col in ("setup", "concurrency", "batch", "records/s", "p50", "p95", "p99", "failed"):
        table.add_column(col, justify="right")
    for c in cells:
        table.add_row(c.setup, str(c.concurrency), str(c.batch), f"{c.records_per_s:,.0f}", f"{c.p50_ms:.1f}",
                      f"{c.p95_ms:.1f}", f"{c.p99_ms:.1f}", str(c.failed))
    console.print(table)
    console.print(text)


if __name__ == "__main__":
    main()
