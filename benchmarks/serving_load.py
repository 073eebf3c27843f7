"""Serving benchmark: `mtlops serve` against its limits, and one multi-head service vs K single-task ones.

    python -m benchmarks.serving_load                 # 8 s per run, 2 alternating rounds per cell
    python -m benchmarks.serving_load --quick         # 3 s per run
    python -m benchmarks.serving_load --soak 600      # then 10 minutes of load on mtlops, resident memory sampled
    python -m benchmarks.serving_load --shadow        # also shadow scoring off / on every request / on 10 %

Trains (briefly: serving speed does not depend on accuracy) one flights model with all K=4 heads and
K single-task models of the same architecture, registers them in a throw-away model store, and
measures in the same run, on the same model:
  (a) in-process ONNX Runtime (the limit: `session.run` in a loop, 1 thread),
  (b) the lean floor server (benchmarks/floor_server.py: Starlette + uvicorn, orjson both ways, the same
      encoder and ONNX session, nothing else; as many workers as `mtlops serve`),
  (c) `mtlops serve` (default workers = cores),
  (d) K single-task `mtlops serve`s loaded at once (a client needing every answer waits for the
      slowest: its throughput is the slowest service's),
at concurrency 1, 8, 32 x batch 1, 64, 256, loaded by `wrk` (a native generator; `apt-get install -y wrk`)
bounded in time, on loopback. (b) and (c) run side by side and are measured in alternating rounds
(floor, mtlops, floor, mtlops, ...) so drift in the machine's load hits both alike. wrk opens its
connections at once and the kernel may hand them all to one worker: each run records every worker's
share of the CPU time, and a cell's figure is the median over its balanced runs (no worker above
75 %), flagged where none was balanced. Latency: wrk's p50/p99/p99.9 and the raw maximum. Also where
the time of one request goes (in-process, per stage), and the resident memory of each server's
process tree over the run. Prints tables and writes benchmarks/results/serving.md.
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

import httpx
import numpy as np
import orjson
import pandas as pd
import psutil
import torch
from rich.console import Console

from components.artifacts import registry
from components.artifacts.export import export_onnx
from components.artifacts.inference import ONNX_FILE, onnx_session
from components.config.schema import ProjectConfig, config_to_yaml, load_config
from components.data.features import SPEC_FILE, FeatureSpec
from components.data.tables import load_source, sample_rows, select_window, with_labels
from components.training.stl import single_task_config
from components.training.train import train
from serving.client import to_records
from serving.launch import ServerProcess, free_port
from serving.runtime import ServedModel, record_model, request_model, usable_cpus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serving.md"
CONCURRENCY = (1, 8, 32)
BATCHES = (1, 64, 256)
PROFILED_BATCHES = (1, 256)
SHADOW_SHARES = (0.0, 1.0, 0.1)  # off, every request, one in ten
REFERENCE_STAGE = "for reference: JSON parse alone (orjson)"
BALANCED_SHARE = 0.75  # a run where one worker did more of the work than this is not counted (accept imbalance)
console = Console(width=140)
WRK_SCRIPT = """
local f = io.open(os.getenv("BODY_FILE"), "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50": %f, "p99": %f, "p999": %f, "max": %f}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


@dataclass
class Run:
    """One wrk run against one server."""

    records_per_s: float
    requests: int
    failed: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    top_worker_share: float  # the busiest worker's share of the server's CPU time during the run


@dataclass
class Cell:
    setup: str
    concurrency: int
    batch: int
    runs: list[Run]

    @property
    def counted(self) -> list[Run]:
        balanced = [r for r in self.runs if self._balanced(r)]
        return balanced or self.runs

    @property
    def balanced(self) -> bool:
        return any(self._balanced(r) for r in self.runs)

    def _balanced(self, run: Run) -> bool:
        # one connection keeps one worker busy whatever the kernel does: imbalance only counts from c=2
        return self.concurrency == 1 or run.top_worker_share <= BALANCED_SHARE

    def median(self, field: str) -> float:
        return statistics.median(getattr(r, field) for r in self.counted)

    @property
    def records_per_s(self) -> float:
        return self.median("records_per_s")

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.runs)

    @property
    def max_ms(self) -> float:
        return max(r.max_ms for r in self.runs)


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


def cpu_seconds(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out.append(t.user + t.system)
        except psutil.Error:
            out.append(0.0)
    return out


class Target:
    """A running server under load: its URL(s), the processes that answer, its process tree's root."""

    def __init__(self, label: str, urls: list[str], root_pids: list[int]) -> None:
        self.label, self.urls, self.root_pids = label, urls, root_pids
        self.rss: list[float] = []

    def workers(self) -> list[int]:
        pids = []
        for root in self.root_pids:
            children = psutil.Process(root).children(recursive=True)
            pids += [c.pid for c in children if c.status() != psutil.STATUS_ZOMBIE] or [root]
        return pids

    def run(self, body: Path, batch: int, concurrency: int, seconds: float, script: Path) -> Run:
        """The slowest server decides (for one server, that one)."""
        workers = self.workers()
        before = cpu_seconds(workers)
        results = wrk(self.urls, body, concurrency, seconds, script)
        used = [max(0.0, a - b) for a, b in zip(cpu_seconds(workers), before, strict=True)]
        self.rss.append(sum(tree_rss_mib(p) for p in self.root_pids))
        slow = min(results, key=lambda r: r["requests"] / r["duration_us"])
        return Run(slow["requests"] * batch / (slow["duration_us"] / 1e6), slow["requests"],
                   sum(r["errors"] + r["non2xx"] for r in results), max(r["p50"] for r in results) / 1000,
                   max(r["p99"] for r in results) / 1000, max(r["p999"] for r in results) / 1000,
                   max(r["max"] for r in results) / 1000, max(used) / sum(used) if sum(used) > 0 else 1.0)


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


def measure(targets: list[Target], bodies: dict[int, Path], seconds: float, rounds: int, script: Path,
            batches: tuple[int, ...] = BATCHES) -> list[Cell]:
    """Every cell for every target, the targets alternating within each cell (A B A B ...)."""
    cells = []
    for batch in batches:
        for t in targets:
            wrk(t.urls, bodies[batch], 1, 1, script)  # warm-up
        for c in CONCURRENCY:
            row = [Cell(t.label, c, batch, []) for t in targets]
            for _ in range(rounds):
                for t, cell in zip(targets, row, strict=True):
                    cell.runs.append(t.run(bodies[batch], batch, c, seconds, script))
            for cell in row:
                console.print(f"  {cell.setup} c={c} batch={batch}: {cell.records_per_s:,.0f} records/s, "
                              f"p50 {cell.median('p50_ms'):.2f} ms, p99 {cell.median('p99_ms'):.1f} ms, "
                              f"max {cell.max_ms:.0f} ms, busiest worker "
                              f"{'/'.join(f'{r.top_worker_share:.0%}' for r in cell.runs)}, {cell.failed} failed")
            cells += row
    return cells


def start_mtlops(configs: list[Path], work: Path) -> list[ServerProcess]:
    servers = [ServerProcess(c, work / f"{c.stem}.out", max_rows=max(BATCHES),
                             prediction_log=work / f"{c.stem}-predictions") for c in configs]
    for s in servers:
        s.wait_ready()
    return servers


def measure_shadow(config: Path, cfg: ProjectConfig, onnx_dir: Path, bodies: dict[int, Path], seconds: float,
                   rounds: int, script: Path, work: Path) -> list[Cell]:
    """`mtlops serve` with no shadow, scoring a shadow (a registered copy of the champion) on every
    request, and on 10 % of them: three servers side by side, measured in alternating rounds."""
    registry.start_shadow(cfg.registry.model_name, registry.register(onnx_dir, cfg, {}, {"data_version": "shadow"}))
    servers = [ServerProcess(config, work / f"shadow-{share:g}.out", max_rows=max(BATCHES),
                             prediction_log=work / f"shadow-{share:g}-predictions",
                             env={"MTLOPS_SHADOW_SHARE": str(share)}) for share in SHADOW_SHARES]
    try:
        for server in servers:
            server.wait_ready()
        targets = [Target(shadow_label(share), [s.url], [s.proc.pid]) for share, s in zip(SHADOW_SHARES, servers,
                                                                                         strict=True)]
        return measure(targets, bodies, seconds, rounds, script, batches=(1, 64))
    finally:
        for server in servers:
            server.stop()


def shadow_label(share: float) -> str:
    return "shadow off" if share == 0 else f"shadow {share:.0%}"


def start_floor(onnx_dir: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.floor_server", str(onnx_dir),
                             "--port", str(port), "--workers", str(usable_cpus())],
                            stdout=(work / "floor.out").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/")
    return proc, url


def soak(server: ServerProcess, body: Path, seconds: float, script: Path,
         every: float = 10.0) -> list[tuple[float, float]]:
    """Load mtlops for `seconds` (c=8) and sample its process tree's resident memory every `every` s."""
    proc = subprocess.Popen(["wrk", "-t1", "-c8", f"-d{seconds:.0f}s", "--timeout", "10s", "-s", str(script),
                             server.url + "/predict"], stdout=subprocess.DEVNULL,
                            env={**os.environ, "BODY_FILE": str(body)})
    samples, start = [], time.monotonic()
    while proc.poll() is None:
        samples.append((time.monotonic() - start, tree_rss_mib(server.proc.pid)))
        time.sleep(every)
    return samples


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
    schema = request_model(record_model(spec), spec, max(BATCHES))
    out = []
    for batch in BATCHES:
        raw = bodies[batch].read_bytes()
        rows = [vars(r) for r in schema.model_validate_json(raw).records]  # type: ignore[attr-defined]
        encoded = encoder.encode_records(rows)
        feeds = {"numeric": encoded.numeric, "categorical": encoded.categorical}
        outs = session.run(None, feeds)
        stacked = np.concatenate([o.reshape(batch, -1) for o in outs], axis=1)
        answer = {"predictions": served.outputs(stacked, None)}
        out.append((batch, {
            "parse + validate (pydantic)": timed_us(lambda r=raw: schema.model_validate_json(r), repeats),
            "encode (RecordEncoder)": timed_us(lambda r=rows: encoder.encode_records(r), repeats),
            "ONNX Runtime": timed_us(lambda f=feeds: session.run(None, f), repeats),
            "format outputs": timed_us(lambda s=stacked: served.outputs(s, None), repeats),
            "JSON encode (orjson)": timed_us(lambda a=answer: orjson.dumps(a), repeats),
            REFERENCE_STAGE: timed_us(lambda r=raw: orjson.loads(r), repeats),
        }))
    return out


# Where a live worker's CPU goes: py-spy samples of the frames holding the GIL, each attributed to the
# innermost frame from a known owner (generic frames — NumPy, asyncio, threading — are skipped over).
# py-spy names a frame `function (package/module.py:line)`.
LAYERS = (
    ("(onnxruntime/", "ONNX Runtime"),
    ("(pydantic", "request validation (pydantic)"),
    ("(serving/prediction_log", "prediction log (writer thread)"),
    ("(pandas/", "prediction log (writer thread)"),
    ("(pyarrow/", "prediction log (writer thread)"),
    ("(prometheus_client/", "Prometheus metrics (BentoML's and ours)"),
    ("(components/data/features", "encode (RecordEncoder)"),
    ("(components/config/tasks", "format outputs"),
    ("(serving/runtime", "format outputs"),
    ("(serving/", "ours: endpoint, guards, micro-batcher"),
    ("floor_server", "floor: its endpoint"),
    ("(opentelemetry/", "BentoML: OpenTelemetry middleware"),
    ("(bentoml/", "BentoML: middleware (metrics, timeout, errors), app"),
    ("(_bentoml_impl/", "BentoML: middleware (metrics, timeout, errors), app"),
    ("(starlette/", "Starlette: routing, responses"),
    ("(uvicorn/", "uvicorn: HTTP parsing, socket writes"),
    ("(httptools/", "uvicorn: HTTP parsing, socket writes"),
    ("orjson", "JSON (orjson)"),
)


def layer_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for marker, layer in LAYERS:
            if marker in frame:
                return layer
    return "other (event loop, threads, interpreter)"


def live_profile(url: str, root_pid: int, body: Path, script: Path, seconds: float, raw: Path) -> dict[str, float]:
    """µs of GIL-holding CPU per request by layer, in the worker that wrk (c=1, one connection: one
    worker) keeps busy, sampled by py-spy; {} where py-spy is missing or not allowed to attach."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {}
    load = subprocess.Popen(["wrk", "-t1", "-c1", f"-d{seconds + 4:.0f}s", "--timeout", "10s", "-s", str(script),
                             url + "/predict"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "BODY_FILE": str(body)})
    time.sleep(1.5)
    workers = [c.pid for c in psutil.Process(root_pid).children(recursive=True)] or [root_pid]
    before = cpu_seconds(workers)
    time.sleep(0.5)
    busy = max(zip(cpu_seconds(workers), before, workers, strict=True), key=lambda t: t[0] - t[1])[2]
    rate = 250
    spied = subprocess.run([spy, "record", "-p", str(busy), "-d", f"{seconds:.0f}", "-r", str(rate), "-f", "raw",
                            "-o", str(raw), "--gil", "--nonblocking"], capture_output=True, text=True)
    text = load.communicate(timeout=seconds + 60)[0]
    if spied.returncode != 0 or not raw.exists():
        console.print(f"py-spy could not sample: {spied.stderr.strip()[-300:]}")
        return {}
    done = json.loads(next(line[4:] for line in text.splitlines() if line.startswith("WRK ")))
    requests = done["requests"] / (done["duration_us"] / 1e6) * seconds
    samples: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        samples[layer_of(stack)] = samples.get(layer_of(stack), 0) + int(count)
    return {layer: n / rate / requests * 1e6 for layer, n in sorted(samples.items(), key=lambda kv: -kv[1])}


def markdown(cells: list[Cell], k: int, rss: dict[str, list[float]], profile: list[tuple[int, dict[str, float]]],
             live: dict[tuple[str, int], dict[str, float]], soaked: list[tuple[float, float]],
             args: argparse.Namespace) -> str:
    by = {(c.setup, c.concurrency, c.batch): c for c in cells}
    ort_us = {b: stages["ONNX Runtime"] for b, stages in profile}
    command = "python -m benchmarks.serving_load" + (" --quick" if args.quick else "") + \
        (f" --rounds {args.rounds}" if args.rounds != 2 else "") + (f" --soak {args.soak:.0f}" if args.soak else "") + \
        (" --no-single" if args.no_single else "") + (" --no-profile" if args.no_profile else "") + \
        (" --shadow" if args.shadow else "") + \
        (f" --out {args.out}" if args.out != RESULTS else "")
    lines = [f"# Serving benchmark ({'quick' if args.quick else 'full'})", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
             f"torch {torch.__version__}; load generator (`wrk`, 1 thread) on the same machine; "
             f"{usable_cpus()} workers per server, ONNX Runtime 1 thread per worker; "
             f"load average at start {args.load_at_start}; {args.rounds} alternating rounds of {args.seconds:.0f} s "
             "per cell and server.", "",
             "## `mtlops serve` vs the lean floor server vs in-process ONNX Runtime", "",
             "In-process ORT is one thread calling `session.run` in a loop (the limit of one core). rec/s: the "
             "median over a cell's balanced runs (* : no run was balanced, all counted). Latency in ms: wrk's "
             "p50 / p99 / p99.9 (medians over the runs), and the largest single request of any run. "
             "Busiest worker: its share of the server's CPU time, per run.", "",
             "| c | batch | ORT rec/s | floor rec/s | mtlops rec/s | mtlops / floor | floor p50/p99/p99.9 · max "
             "| mtlops p50/p99/p99.9 · max | busiest worker (floor; mtlops) | failed |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def lat(c: Cell) -> str:
        return f"{c.median('p50_ms'):.2f} / {c.median('p99_ms'):.1f} / {c.median('p999_ms'):.1f} · {c.max_ms:.0f}"

    def rate(c: Cell) -> str:
        return f"{c.records_per_s:,.0f}{'' if c.balanced else '*'}"

    def shares(c: Cell) -> str:
        return "/".join(f"{r.top_worker_share:.0%}" for r in c.runs)

    for c in CONCURRENCY:
        for b in BATCHES:
            f, m = by[("floor", c, b)], by[("mtlops", c, b)]
            lines.append(f"| {c} | {b} | {b / ort_us[b] * 1e6:,.0f} | {rate(f)} | {rate(m)} | "
                         f"**{m.records_per_s / f.records_per_s:.2f}** | {lat(f)} | {lat(m)} "
                         f"| {shares(f)}; {shares(m)} | {f.failed + m.failed} |")
    off = [c for c in cells if c.setup == shadow_label(0.0)]
    if off:
        lines += ["", "## Shadow scoring's cost (`mtlops serve` with a shadow version on every request, on 10 %)", "",
                  "Three servers side by side, alternating rounds; the shadow is a registered copy of the champion. "
                  "rec/s relative to no shadow; latency p50 / p99 ms.", "",
                  "| c | batch | off rec/s | 100 % rec/s (× off) | 10 % rec/s (× off) | off p50/p99 | 100 % p50/p99 "
                  "| 10 % p50/p99 | failed |", "|---|---|---|---|---|---|---|---|---|"]
        for base in off:
            full, tenth = (by[(shadow_label(share), base.concurrency, base.batch)] for share in SHADOW_SHARES[1:])
            lines.append(
                f"| {base.concurrency} | {base.batch} | {base.records_per_s:,.0f} | {full.records_per_s:,.0f} "
                f"({full.records_per_s / base.records_per_s:.2f}) | {tenth.records_per_s:,.0f} "
                f"({tenth.records_per_s / base.records_per_s:.2f}) | "
                + " | ".join(f"{c.median('p50_ms'):.2f} / {c.median('p99_ms'):.1f}" for c in (base, full, tenth))
                + f" | {base.failed + full.failed + tenth.failed} |")
    singles = [c for c in cells if c.setup == "single"]
    if singles:
        lines += ["", f"## One multi-head service vs K={k} single-task services (a client needs all K answers)", "",
                  "All K services are loaded at once; the slowest one's rate is the client's.", "",
                  "| c | batch | multi-head rec/s | K single rec/s | ratio | multi p50/p99 ms "
                  "| K single p50/p99 ms (slowest) | failed |", "|---|---|---|---|---|---|---|---|"]
        for s in singles:
            m = by[("mtlops", s.concurrency, s.batch)]
            lines.append(f"| {s.concurrency} | {s.batch} | {m.records_per_s:,.0f} | {s.records_per_s:,.0f} | "
                         f"{m.records_per_s / s.records_per_s:.2f}× | {m.median('p50_ms'):.2f} / "
                         f"{m.median('p99_ms'):.1f} | {s.median('p50_ms'):.2f} / {s.median('p99_ms'):.1f} | "
                         f"{m.failed + s.failed} |")
    lines += ["", "## Memory (resident, whole process tree, MiB): after start, after each run, at the end", "",
              "| server | idle | min | max | last |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {v[0]:,.0f} | {min(v):,.0f} | {max(v):,.0f} | {v[-1]:,.0f} |" for name, v in rss.items()]
    if soaked:
        warm_t, warm = soaked[min(3, len(soaked) - 1)]
        peak, last = max(m for _, m in soaked), soaked[-1][1]
        lines += ["", f"## Soak: `mtlops serve` under wrk (c=8, batch 64) for {args.soak:.0f} s", "",
                  f"Resident memory of the process tree after warm-up (t = {warm_t:.0f} s): "
                  f"{warm:,.0f} MiB; peak {peak:,.0f} MiB; at the end {last:,.0f} MiB "
                  f"(**{(last - warm) / warm:+.1%}** from warm-up, peak {(peak - warm) / warm:+.1%}).", "",
                  "| t (s) | " + " | ".join(f"{t:.0f}" for t, _ in soaked) + " |",
                  "|---|" + "---|" * len(soaked),
                  "| RSS MiB | " + " | ".join(f"{m:,.0f}" for _, m in soaked) + " |"]
    lines += ["", "## Where one request's time goes (in-process, median µs per stage, 1 thread)", "",
              "| stage | " + " | ".join(f"batch {b}" for b, _ in profile) + " |",
              "|---|" + "---|" * len(profile)]
    for stage in profile[0][1]:
        if stage != REFERENCE_STAGE:
            lines.append(f"| {stage} | " + " | ".join(f"{stages[stage]:,.0f}" for _, stages in profile) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(v for k, v in st.items() if k != REFERENCE_STAGE):,.0f}**"
                                             for _, st in profile) + " |")
    lines.append(f"| _{REFERENCE_STAGE}_ | " + " | ".join(f"_{st[REFERENCE_STAGE]:,.0f}_" for _, st in profile) + " |")
    if any(live.values()):
        columns = sorted(live, key=lambda key: (key[1], key[0]))
        layers = list(dict.fromkeys(layer for key in columns for layer in live[key]))
        lines += ["", "## Where a live worker's CPU goes (py-spy, wrk c=1, µs of GIL-holding CPU per request)", "",
                  "One connection keeps one worker busy; py-spy samples that worker's frames while they hold the GIL "
                  "and each sample goes to the innermost frame of a known owner. The socket writes run inside "
                  "uvicorn's frames with the GIL held (uvloop writes at once), so they count there.", "",
                  "| layer | " + " | ".join(f"{server} batch {batch}" for server, batch in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for layer in layers:
            lines.append(f"| {layer} | " + " | ".join(f"{live[key].get(layer, 0.0):,.0f}" for key in columns) + " |")
        lines.append("| **total** | " + " | ".join(f"**{sum(live[key].values()):,.0f}**" for key in columns) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per run instead of 8")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per cell and server")
    parser.add_argument("--soak", type=float, default=0.0, help="then load mtlops this many seconds, sampling memory")
    parser.add_argument("--no-single", action="store_true", help="skip the K single-task services")
    parser.add_argument("--no-profile", action="store_true", help="skip py-spy's view of a live worker")
    parser.add_argument("--shadow", action="store_true", help="also: shadow scoring off / on every request / on 10%%")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: `apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk`")
    args.load_at_start = f"{os.getloadavg()[0]:.2f}"
    args.seconds = 3.0 if args.quick else 8.0

    work = Path(tempfile.mkdtemp(prefix="mtlops-bench-work-"))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    multi_cfg = flights_config(None, "bench-multi")
    df = load_source(multi_cfg.data)
    df = with_labels(sample_rows(df[df[multi_cfg.data.time_column] < "2013-07-01"].reset_index(drop=True), 0.1, 0),
                     multi_cfg)
    tasks = [t.name for t in multi_cfg.tasks]
    console.print(f"training 1 multi-head{'' if args.no_single else f' + {len(tasks)} single-task'} models "
                  "(1 epoch each) ...")
    multi_dir = build_model(multi_cfg, df, work)
    if not args.no_single:
        for t in tasks:
            build_model(flights_config(t, f"bench-single-{t.replace('_', '-')}"), df, work)
    test = select_window(df, multi_cfg.data.time_column, "2013-06-01", "2013-07-01").reset_index(drop=True)
    bodies = write_bodies(test, multi_cfg, work)
    onnx_dir = multi_dir.parent / "onnx"

    profile = request_profile(onnx_dir, bodies, repeats=300 if args.quick else 1000)
    floor_proc, floor_url = start_floor(onnx_dir, work)
    (mtlops,) = start_mtlops([work / "bench-multi.yaml"], work)
    soaked: list[tuple[float, float]] = []
    try:
        targets = [Target("floor", [floor_url], [floor_proc.pid]), Target("mtlops", [mtlops.url], [mtlops.proc.pid])]
        for t in targets:
            t.rss.append(sum(tree_rss_mib(p) for p in t.root_pids))
        cells = measure(targets, bodies, args.seconds, args.rounds, script)
        live = {} if args.no_profile else {
            (t.label, batch): live_profile(t.urls[0], t.root_pids[0], bodies[batch], script, 2 * args.seconds,
                                           work / f"py-spy-{t.label}-{batch}.txt")
            for batch in PROFILED_BATCHES for t in targets}
        if args.soak:
            console.print(f"soak: {args.soak:.0f} s of load on mtlops ...")
            soaked = soak(mtlops, bodies[64], args.soak, script)
        rss = {"floor server": targets[0].rss, "mtlops serve (multi-head)": targets[1].rss}
    finally:
        floor_proc.terminate()
        floor_proc.wait(timeout=30)
        mtlops.stop()
    if not args.no_single:
        singles = start_mtlops([work / f"bench-single-{t.replace('_', '-')}.yaml" for t in tasks], work)
        try:
            target = Target("single", [s.url for s in singles], [s.proc.pid for s in singles])
            target.rss.append(sum(tree_rss_mib(p) for p in target.root_pids))
            cells += measure([target], bodies, args.seconds, 1, script)
            rss[f"{len(tasks)} single-task mtlops serves"] = target.rss
        finally:
            for s in singles:
                s.stop()

    if args.shadow:
        console.print("shadow scoring: off / 100% / 10% ...")
        cells += measure_shadow(work / "bench-multi.yaml", multi_cfg, onnx_dir, bodies, args.seconds, args.rounds,
                                script, work)
    text = markdown(cells, len(tasks), rss, profile, live, soaked, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    console.print(text)


if __name__ == "__main__":
    main()
