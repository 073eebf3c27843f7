"""The whole-lifecycle cost of one multi-head model against K single-task models, over the Jul–Dec replay.

Two arms run the same month-by-month replay (`pipelines.cli.simulate.simulate`: the champion scores the month, the
monitor compares it with the champion's reference, the alert policy decides, a retrain runs the retraining
pipeline's steps in the replay's Python (`steps="in-process"`), the gate promotes or rejects):
  - 1 model: the config as it is (one multi-head network, one gate, one monitor, one service);
  - K models: one replay per task with `components.training.stl.single_task_config(cfg, task)` (its own model
    name in the registry, its own gate, monitor, retraining and service).
Each replay starts from its own initial champion, trained by the training pipeline's steps (ingest, validate,
split, train, evaluate, export, register: what `make run` runs through kfp.local) called in the replay's process,
and runs in a process of its own (the model store is per process), one after another. All of it lives in one
temporary project: a git repo whose data is built and DVC-tracked by `mtlops data build` (its own DVC remote), one
model store (`BENTOML_HOME`) shared by the arms under distinct model names; nothing outside it is touched.

Measured per arm: training + retraining wall time and training FLOPs (counted by the trainer), the monitoring time
of each month (Evidently's report and the drift thresholds of a new champion: `monitoring.drift.monitor` and
`monitoring.windows.model_calibration`, timed around the calls the replay makes), the artifacts (models trained,
gated, promoted; monitoring runs; services; the model store on disk), every task's served metric per month, and at
serving the arm's final champions behind `mtlops serve` (1 service, or K loaded at once: a client needing every
answer waits for the slowest, so its rate is the K arm's): rec/s at batch 1 and 64 under `wrk` (c=8, the arms in
alternating rounds) and the resident memory of the server process trees (idle, and the peak sampled under load).
Prints the tables and writes `benchmarks/results/lifecycle_cost[_quick].md` and `.png`.

    .venv/bin/python -m benchmarks.lifecycle_cost --quick   # Jul-Sep, 25% rows, 3 epochs: ~10 min on 2 cores
    .venv/bin/python -m benchmarks.lifecycle_cost           # Jul-Dec, all rows, the config's epochs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from benchmarks.serving_load import WRK_SCRIPT, wrk
from components.config.schema import ProjectConfig, config_to_yaml, load_config, parse_config
from components.config.tasks import higher_is_better
from components.training.stl import single_task_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MTLOPS = Path(sys.executable).parent / "mtlops"
# the overrides of `mtlops simulate --quick` (pipelines/cli/main.py), and its months
QUICK = {"data": {"sample_fraction": 0.25}, "training": {"epochs": 3}, "retraining": {"replay_rows": 12_500},
         "monitoring": {"sample_size": 5000, "calibration_draws": 50}}
QUICK_MONTHS = "2013-07..2013-09"
MONTHS = "2013-07..2013-12"
BATCHES = (1, 64)
CONCURRENCY = 8
FIRST_PORT = 38100
ONE, K = "1 model", "K models"
OUTCOME = {"": "-", "promoted": "P", "rejected": "R", "shadowed": "S", "failed": "F"}  # a retrain, in the tables
console = Console(width=150)


# ---- the arms' configs ------------------------------------------------------------------------------------------

def with_overrides(cfg: ProjectConfig, overrides: dict[str, dict[str, Any]]) -> ProjectConfig:
    raw = cfg.model_dump(mode="json", exclude_none=True)
    for section, fields in overrides.items():
        raw[section].update(fields)
    return parse_config(raw, "<lifecycle benchmark>")


def model_name(task: str | None) -> str:
    return "lifecycle-mtl" if task is None else f"lifecycle-stl-{task.replace('_', '-')}"  # BentoML: no underscores


def arm_configs(cfg: ProjectConfig, work: Path) -> dict[str, list[tuple[str, ProjectConfig]]]:
    """arm -> [(model name, config)]: the config as it is, and one single-task config per task; each with its own
    model name and Evidently workspace."""
    def own(c: ProjectConfig, name: str) -> ProjectConfig:
        return with_overrides(c, {"registry": {"model_name": name},
                                  "monitoring": {"workspace": str(work / "runs" / name / "evidently")}})

    return {ONE: [(model_name(None), own(cfg, model_name(None)))],
            K: [(model_name(t.name), own(single_task_config(cfg, t.name), model_name(t.name))) for t in cfg.tasks]}


def month_names(months: str) -> list[str]:
    import pandas as pd

    first, last = months.split("..")
    return [str(m) for m in pd.period_range(first, last, freq="M")]


# ---- one replay, in its own process (`_replay`) -----------------------------------------------------------------

def initial_champion(cfg: ProjectConfig, root: Path, run_dir: Path) -> dict:
    """The training pipeline's steps (pipelines/training.py), in its order, in this process: the initial champion."""
    from components import steps
    from components.data.versioning import git_revision

    run_dir.mkdir(parents=True, exist_ok=True)
    path = {n: str(run_dir / n) for n in ("dataset", "report", "train", "validation", "test", "model",
                                          "metrics_json", "onnx_model", "decision")}
    config_yaml = config_to_yaml(cfg)
    t0 = time.perf_counter()
    lineage = steps.ingest(config_yaml, str(root), path["dataset"], git_revision(root))
    steps.validate(config_yaml, path["dataset"], path["report"])
    steps.split(config_yaml, path["dataset"], path["train"], path["validation"], path["test"])
    summary = steps.train_model(config_yaml, path["train"], path["validation"], path["model"])
    steps.evaluate_model(path["model"], path["train"], path["test"], path["metrics_json"])
    steps.export_model(config_yaml, path["model"], path["train"], path["test"], path["onnx_model"])
    decision = steps.register_model(config_yaml, path["onnx_model"], path["metrics_json"], path["test"],
                                    {k: lineage.get(k) for k in ("data_version", "partitions", "rows", "git_revision")},
                                    path["decision"])
    if not decision["promoted"]:
        raise SystemExit(f"{cfg.registry.model_name}: the initial model was not promoted: {decision['reasons']}")
    return {"seconds": time.perf_counter() - t0, "train_s": summary["wall_s"], "train_flops": summary["train_flops"]}


def timed(calls: list[float], fn: Callable) -> Callable:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            calls.append(time.perf_counter() - t0)
    return wrapper


def replay(config: Path, root: Path, months: list[str], out: Path) -> dict:
    """The initial champion, then `simulate` over `months` with every retrain in-process; the monitoring calls the
    replay makes are timed (the replay imports them when it starts, so wrapping the modules' functions reaches it)."""
    import monitoring.drift
    import monitoring.windows
    from pipelines.cli.simulate import simulate

    cfg = load_config(config)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    initial = initial_champion(cfg, root, out / "initial")
    monitor_s: list[float] = []
    calibration_s: list[float] = []
    monitoring.drift.monitor = timed(monitor_s, monitoring.drift.monitor)
    monitoring.windows.model_calibration = timed(calibration_s, monitoring.windows.model_calibration)
    rows = simulate(cfg, root, months, out, progress=True, steps="in-process")
    return {"model": cfg.registry.model_name, "initial": initial, "rows": [asdict(r) for r in rows],
            "monitor_s": monitor_s, "calibration_s": calibration_s, "wall_s": time.perf_counter() - t0,
            "load": [load_start, os.getloadavg()[0]],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ---- serving ----------------------------------------------------------------------------------------------------

def tree_rss_mib(pid: int) -> float:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


class RssPeak:
    """The largest sum of the process trees' RSS, sampled every `every` s while running."""

    def __init__(self, pids: list[int], every: float = 0.2) -> None:
        self.pids, self.every, self.peak = pids, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(tree_rss_mib(p) for p in self.pids))
            self._stop.wait(self.every)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure_serving(arms: dict[str, list[tuple[str, ProjectConfig]]], configs: dict[str, Path], work: Path,
                    bodies: dict[int, Path], seconds: float, rounds: int) -> dict[str, dict]:
    """Every arm's services started at once; per batch, `rounds` alternating rounds (arm A, arm B, A, B ...)."""
    from serving.launch import ServerProcess

    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    port = iter(range(FIRST_PORT, FIRST_PORT + 100))
    servers: dict[str, list[ServerProcess]] = {}
    try:
        for arm, models in arms.items():
            servers[arm] = [ServerProcess(configs[name], work / f"serve-{name}.out", port=next(port),
                                          prediction_log=work / f"serve-{name}-log", max_rows=max(BATCHES))
                            for name, _ in models]
        for arm in servers:
            for s in servers[arm]:
                s.wait_ready()
        time.sleep(2)
        out = {arm: {"services": len(ss), "processes": sum(1 + len(psutil.Process(s.proc.pid).children(True))
                                                           for s in ss),
                     "idle_mib": sum(tree_rss_mib(s.proc.pid) for s in ss), "peak_mib": 0.0, "rps": {},
                     "p50_ms": {}, "failed": 0} for arm, ss in servers.items()}
        for batch in BATCHES:
            for ss in servers.values():
                wrk([s.url for s in ss], bodies[batch], CONCURRENCY, 1, script)  # warm-up
            runs: dict[str, list[tuple[float, float]]] = {arm: [] for arm in servers}
            for _ in range(rounds):
                for arm, ss in servers.items():
                    with RssPeak([s.proc.pid for s in ss]) as rss:
                        results = wrk([s.url for s in ss], bodies[batch], CONCURRENCY, seconds, script)
                    out[arm]["peak_mib"] = max(out[arm]["peak_mib"], rss.peak)
                    out[arm]["failed"] += sum(r["errors"] + r["non2xx"] for r in results)
                    slowest = min(results, key=lambda r: r["requests"] / r["duration_us"])
                    runs[arm].append((slowest["requests"] * batch / (slowest["duration_us"] / 1e6),
                                      max(r["p50"] for r in results) / 1000))
            for arm, rs in runs.items():
                out[arm]["rps"][batch] = statistics.median(r for r, _ in rs)
                out[arm]["p50_ms"][batch] = statistics.median(p for _, p in rs)
                rounds_text = ", ".join(f"{r:,.0f}" for r, _ in rs)
                console.print(f"  serving {arm} batch {batch}: {out[arm]['rps'][batch]:,.0f} rec/s "
                              f"(rounds: {rounds_text}), peak {out[arm]['peak_mib']:,.0f} MiB")
        return out
    finally:
        for ss in servers.values():
            for s in ss:
                s.stop()


# ---- the project and the arms -----------------------------------------------------------------------------------

def build_project(cfg: ProjectConfig, work: Path) -> tuple[Path, float]:
    """A git repo with the config's data built by `mtlops data build` (DVC-tracked, its own remote) and committed."""
    root = work / "project"
    (root / "configs").mkdir(parents=True)
    cfg_path = root / "configs" / "data.yaml"
    cfg_path.write_text(config_to_yaml(with_overrides(cfg, {"data": {"dvc_remote": str(work / "dvc-remote")}})))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "bench@example.com"],
                ["git", "config", "user.name", "bench"]):
        subprocess.run(cmd, cwd=root, check=True)
    t0 = time.perf_counter()
    with (work / "data-build.log").open("w") as log:
        subprocess.run([str(MTLOPS), "data", "build", "--config", str(cfg_path), "--root", str(root)], cwd=root,
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - t0
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "data"], cwd=root, check=True)
    (work / "data_build_s").write_text(f"{seconds:.1f} {os.getloadavg()[0]:.2f}")  # seconds, load at its end
    return root, seconds


def run_replay(name: str, config: Path, root: Path, months: str, work: Path) -> dict:
    out = work / "runs" / name
    record = out / "record.json"
    if not record.exists():  # a kept work folder (--work) resumes with the replays still missing
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        console.print(f"replay {name} ...")
        t0 = time.perf_counter()
        with (out / "replay.log").open("w") as log:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.lifecycle_cost", "_replay", "--config",
                                   str(config), "--root", str(root), "--months", months, "--out", str(out)],
                                  stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "COLUMNS": "160", "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            raise SystemExit(f"the replay of {name} failed ({proc.returncode}): {out / 'replay.log'}")
        r = json.loads(record.read_text())
        r["process_s"] = time.perf_counter() - t0  # with the Python start and imports
        record.write_text(json.dumps(r, indent=1))
    r = json.loads(record.read_text())
    console.print(f"  {name}: {r['wall_s']:.0f} s, retrains " +
                  ", ".join(row["retrain"] or "—" for row in r["rows"]))
    return r


def store_mib(work: Path, name: str) -> float:
    folder = work / "bentoml" / "models" / name
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


# the gate's words for a failed check (components/artifacts/registry.py)
BLOCKING = ("WORSE", "BEYOND", "BELOW BASELINE")


def rejections(work: Path, name: str, record: dict) -> list[tuple[str, str]]:
    """(month, the gate's failed checks) of each retrain of `name` that was not promoted: its decision files, in the
    order they were written, are the months that retrained."""
    decisions = sorted((work / "runs" / name / "kfp").glob("*/decision"), key=lambda p: p.stat().st_mtime)
    months = [row["month"] for row in record["rows"] if row["retrain"] in ("promoted", "rejected", "shadowed")]
    out = []
    for month, path in zip(months, decisions, strict=True):
        decision = json.loads(path.read_text())
        if not decision["promoted"]:
            blocks = [r.split(": BELOW BASELINE")[0].split(" (registry")[0] for r in decision["reasons"]
                      if any(word in r for word in BLOCKING)]
            out.append((month, "; ".join(blocks) or "; ".join(decision["reasons"])))
    return out


def summarize(arms: dict[str, list[tuple[str, ProjectConfig]]], records: dict[str, dict], work: Path,
              served: dict[str, dict], months: list[str]) -> dict[str, dict]:
    """Per arm: the sums over its models."""
    out = {}
    for arm, models in arms.items():
        recs = [records[name] for name, _ in models]
        retrains = [row for r in recs for row in r["rows"] if row["retrain"]]
        per_month = [sum(r["monitor_s"][i] + r["calibration_s"][i] for r in recs) for i in range(len(months))]
        out[arm] = {
            "models": len(models),
            "trained": len(recs) + len(retrains),
            "gated": len(recs) + sum(row["retrain"] in ("promoted", "rejected", "shadowed") for row in retrains),
            "promoted": len(recs) + sum(row["retrain"] == "promoted" for row in retrains),
            "failed": sum(row["retrain"] == "failed" for row in retrains),
            "monitor_runs": sum(len(r["monitor_s"]) for r in recs),
            "store_mib": sum(store_mib(work, name) for name, _ in models),
            "initial_s": sum(r["initial"]["seconds"] for r in recs),
            "initial_train_s": sum(r["initial"]["train_s"] for r in recs),
            "retrain_s": sum(row["retrain_s"] for row in retrains),
            "retrains": len(retrains),
            "flops": sum(r["initial"]["train_flops"] for r in recs) + sum(row["train_flops"] for row in retrains),
            "monitor_month_s": statistics.mean(per_month),
            "monitor_months_s": per_month,
            "replay_s": sum(r["wall_s"] for r in recs),
            "replay_peak_rss_mib": max(r["peak_rss_mib"] for r in recs),
            "serving": served.get(arm, {}),
        }
    return out


def quality(cfg: ProjectConfig, arms: dict[str, list[tuple[str, ProjectConfig]]],
            records: dict[str, dict]) -> dict[str, dict[str, list[float]]]:
    """task -> arm -> the served model's metric per month (the K arm: the replay of that task's model)."""
    out: dict[str, dict[str, list[float]]] = {t.name: {} for t in cfg.tasks}
    for arm, models in arms.items():
        for name, arm_cfg in models:
            for task in arm_cfg.tasks:
                out[task.name][arm] = [row["served"][task.name] for row in records[name]["rows"]]
    return out


# ---- the report -------------------------------------------------------------------------------------------------

def cost_rows(s: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(what, 1 model, K models, K / 1) rows; a cell's text may carry more than the number the ratio is of."""
    def row(label: str, value: Callable[[dict], float], fmt: str = "{:,.0f}",
            text: Callable[[dict], str] | None = None) -> tuple[str, str, str, str]:
        a, b = value(s[ONE]), value(s[K])
        show = text or (lambda x: fmt.format(value(x)))
        return label, show(s[ONE]), show(s[K]), f"{b / a:.2f}×" if a else "—"

    rows = [
        row("models to build, gate, deploy and monitor each cycle", lambda x: x["models"]),
        row("models trained (initial + retrains)", lambda x: x["trained"]),
        row("gate decisions", lambda x: x["gated"]),
        row("promoted (initial + retrains)", lambda x: x["promoted"]),
        row("monitoring runs (Evidently reports)", lambda x: x["monitor_runs"]),
        row("model store on disk, MiB", lambda x: x["store_mib"], "{:,.1f}"),
        row("training FLOPs (initial + retrains), TFLOPs", lambda x: x["flops"] / 1e12, "{:,.2f}"),
        row("initial training pipeline, s (its train step)", lambda x: x["initial_s"],
            text=lambda x: f"{x['initial_s']:,.0f} ({x['initial_train_s']:,.0f})"),
        row("retraining pipelines, s (runs)", lambda x: x["retrain_s"],
            text=lambda x: f"{x['retrain_s']:,.0f} ({x['retrains']})"),
        row("monitoring per month, s (mean over months)", lambda x: x["monitor_month_s"], "{:,.1f}"),
        row("whole replay (initial + every month), s", lambda x: x["replay_s"]),
        row("peak RSS of one replay process, MiB", lambda x: x["replay_peak_rss_mib"]),
    ]
    if s[ONE]["serving"] and s[K]["serving"]:
        rows += [
            row("serving: services (processes)", lambda x: x["serving"]["services"],
                text=lambda x: f"{x['serving']['services']} ({x['serving']['processes']})"),
            row("serving: resident memory idle, MiB", lambda x: x["serving"]["idle_mib"]),
            row("serving: peak resident memory under load, MiB", lambda x: x["serving"]["peak_mib"]),
            *(row(f"serving: rec/s at batch {b}, every task answered", lambda x, b=b: x["serving"]["rps"][b])
              for b in BATCHES),
            *(row(f"serving: p50 latency at batch {b}, ms", lambda x, b=b: x["serving"]["p50_ms"][b], "{:,.1f}")
              for b in BATCHES),
        ]
    return rows


def initial_test(work: Path, arms: dict[str, list[tuple[str, ProjectConfig]]]) -> dict[str, dict[str, float]]:
    """task -> arm -> the initial champion's metric on the config's test window (its evaluate step's)."""
    out: dict[str, dict[str, float]] = {}
    for arm, models in arms.items():
        for name, arm_cfg in models:
            test = json.loads((work / "runs" / name / "initial" / "metrics_json").read_text())["test"]
            for task in arm_cfg.tasks:
                out.setdefault(task.name, {})[arm] = test[task.name][task.metric]
    return out


def quality_rows(cfg: ProjectConfig, q: dict[str, dict[str, list[float]]],
                 initial: dict[str, dict[str, float]]) -> list[tuple[str, ...]]:
    rows = []
    for task in cfg.tasks:
        a, b = statistics.mean(q[task.name][ONE]), statistics.mean(q[task.name][K])
        better = (a > b) == higher_is_better(task.metric)
        rows.append((f"{task.name}{' (primary)' if task.primary else ''}", task.metric, f"{a:.4f}", f"{b:.4f}",
                     f"{b - a:+.4f}", "1 model" if better and a != b else "K models" if a != b else "tie",
                     f"{initial[task.name][ONE]:.4f} / {initial[task.name][K]:.4f}"))
    return rows


def markdown_table(head: list[str], rows: list[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def print_table(title: str, head: list[str], rows: list[tuple[str, ...]]) -> None:
    table = Table(title=title)
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)


def plot(s: dict[str, dict], cfg: ProjectConfig, q: dict[str, dict[str, list[float]]], months: list[str],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, Callable[[dict], float]]] = [
        ("training FLOPs (TFLOPs)", lambda x: x["flops"] / 1e12),
        ("training + retraining pipelines (s)", lambda x: x["initial_s"] + x["retrain_s"]),
        ("monitoring per month (s)", lambda x: x["monitor_month_s"]),
        ("artifacts trained / gated", lambda x: x["trained"]),
    ]
    if s[ONE]["serving"] and s[K]["serving"]:
        panels += [("serving peak RSS (MiB)", lambda x: x["serving"]["peak_mib"]),
                   *((f"rec/s at batch {b}", lambda x, b=b: x["serving"]["rps"][b]) for b in BATCHES)]
    n = len(panels) + len(cfg.tasks)
    cols = 4
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.4 * cols, 3.0 * ((n + cols - 1) // cols)))
    flat = list(axes.flat)
    labels, colours = ["1 multi-head", f"K={len(cfg.tasks)} single-task"], ["tab:blue", "tab:orange"]
    for ax, (title, key) in zip(flat, panels, strict=False):
        values = [key(s[ONE]), key(s[K])]
        ax.bar(labels, values, color=colours)
        for i, v in enumerate(values):
            ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=9)
    for ax, task in zip(flat[len(panels):], cfg.tasks, strict=False):
        for arm, colour, label in zip((ONE, K), colours, labels, strict=True):
            ax.plot([m[2:] for m in months], q[task.name][arm], "o-", color=colour, label=label)
        better = "higher" if higher_is_better(task.metric) else "lower"
        ax.set_title(f"{task.name}{' (primary)' if task.primary else ''}: {task.metric}, {better} is better",
                     fontsize=9)
        ax.tick_params(axis="x", labelsize=7, labelrotation=45)
    flat[len(panels)].legend(fontsize=7)
    for ax in flat[n:]:
        ax.axis("off")
    fig.suptitle("the lifecycle of 1 multi-head model vs K single-task models (one seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(cfg: ProjectConfig, s: dict[str, dict], q: dict[str, dict[str, list[float]]], months: list[str],
           args: argparse.Namespace, setup: dict) -> str:
    k = len(cfg.tasks)
    head = ["", "1 multi-head model", f"K={k} single-task models", "K / 1"]
    costs = cost_rows(s)
    qhead = ["task", "metric", "1 model", "K models", "K − 1", "better", "initial champions, test window: 1 / K"]
    qrows = quality_rows(cfg, q, setup["initial_test"])
    print_table(f"lifecycle cost, {months[0]}..{months[-1]}", head, costs)
    print_table("served metric per task, mean over the months", qhead, qrows)
    mhead = ["month", *(f"{t.name} {t.metric}: 1 / K" for t in cfg.tasks), "retrain: 1 / K"]
    mrows = []
    for i, month in enumerate(months):
        mrows.append((month, *(f"{q[t.name][ONE][i]:.4f} / {q[t.name][K][i]:.4f}" for t in cfg.tasks),
                      f"{setup['retrain'][ONE][i]} / {setup['retrain'][K][i]}"))
    command = "python -m benchmarks.lifecycle_cost " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    overrides = ", ".join(f"{sec}.{k_}={v}" for sec, f in (QUICK if args.quick else {}).items() for k_, v in f.items())
    lines = [
        f"# Lifecycle cost: 1 multi-head model vs K={k} single-task models{' (quick)' if args.quick else ''}", "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; 1-min load "
        f"average {setup['load']} at the starts and ends of the phases "
        f"({'shared with other jobs: the seconds are indicative' if setup['loaded'] else 'otherwise idle'}).  ",
        f"Config: `{args.config}`{f' with {overrides}' if overrides else ''}; retraining "
        f"`{cfg.retraining.trigger}/{cfg.retraining.train_on}`; months {months[0]}..{months[-1]}; one seed "
        f"({cfg.training.seed}).  ",
        f"Whole run {setup['total_s'] / 60:.1f} min: data build {setup['data_s']:.0f} s (shared by both arms), "
        f"the replay processes {setup['total_s'] - setup['data_s'] - setup['serving_s']:.0f} s (one at a time), "
        f"serving {setup['serving_s']:.0f} s.", "",
        "Each arm replays the months as `mtlops simulate` does (score, monitor, alert, retrain in-process, gate) "
        "from its own initial champion (the training pipeline's steps, in-process); the K arm is one replay per task "
        "with `single_task_config` (own model name, gate, monitor, retraining, service), and its numbers are the "
        "sums over its K models. Monitoring: Evidently's report per model and month plus the drift thresholds "
        "calibrated for each new champion. Serving: each arm's final champions behind `mtlops serve` (default "
        f"workers), loaded by `wrk` (c={CONCURRENCY}, {args.rounds} alternating rounds of {setup['seconds']:.0f} s "
        "per batch; the K services at once, the slowest one's rate counted: a client needs every task's answer); "
        "peak RSS sampled every 0.2 s over the process trees.", "",
        *markdown_table(head, costs), "",
        "## Quality: the served model's metric per task, mean over the months", "",
        *markdown_table(qhead, qrows), "",
        "## Per month", "",
        "The served model's metric, 1 model / K models; the retrain after the month: P promoted, R rejected, "
        "F failed, - none (K: one letter per task, in the config's order).", "",
        *markdown_table(mhead, mrows), "",
        "## Why retrains were rejected", "",
        "The gate's failed checks (new window: the month's last rows; old window: the initial test month, June; a "
        "task must also beat its trivial baseline on the new window).", "",
        *markdown_table(["model", "month", "failed checks"], setup["rejections"]), "",
        "## Reading", "", *reading(cfg, s, q, args.quick, setup), "",
    ]
    return "\n".join(lines)


def reading(cfg: ProjectConfig, s: dict[str, dict], q: dict[str, dict[str, list[float]]], quick: bool,
            setup: dict) -> list[str]:
    """A few sentences computed from the numbers (the honest caveats are fixed text)."""
    one, many = s[ONE], s[K]
    k = len(cfg.tasks)
    out = [f"- Compute: the K arm trained {many['flops'] / max(one['flops'], 1):.2f}× the FLOPs of the one model and "
           f"spent {(many['initial_s'] + many['retrain_s']) / max(one['initial_s'] + one['retrain_s'], 1e-9):.2f}× "
           "its training + retraining pipeline time.",
           f"- Monitoring: {many['monitor_month_s']:.1f} s a month for K monitors against {one['monitor_month_s']:.1f} "
           f"s for one ({many['monitor_month_s'] / max(one['monitor_month_s'], 1e-9):.2f}×): each monitor reads the "
           "same features, so most of its cost repeats K times.",
           f"- Artifacts: {many['trained']} models trained and gated against {one['trained']}, "
           f"{many['monitor_runs']} monitoring reports against {one['monitor_runs']}, {k} services against 1."]
    if one["serving"] and many["serving"]:
        sv1, svk = one["serving"], many["serving"]
        out.append(f"- Serving: {svk['peak_mib']:,.0f} MiB peak for the K services against {sv1['peak_mib']:,.0f} "
                   f"({svk['peak_mib'] / sv1['peak_mib']:.1f}×); every task answered at "
                   + ", ".join(f"batch {b} {sv1['rps'][b]:,.0f} vs {svk['rps'][b]:,.0f} rec/s" for b in BATCHES)
                   + " (1 vs K).")
    wins = quality_rows(cfg, q, setup["initial_test"])
    out.append("- Quality (mean served metric over the months): " + "; ".join(
        f"{r[0]} {r[1]} {r[2]} vs {r[3]} ({r[5]})" for r in wins) + ". One seed: differences of the size of the "
        "seed-to-seed spread in `simulate_policies.md` (±0.002–0.005 ROC-AUC) are not evidence either way, and "
        "which retrains a gate lets through varies by seed too (compare the 1-model arm with that file's "
        "`scheduled/warm_replay` row, the same policy over 3 seeds)."
        + (" Quick mode (a quarter of the rows, 3 epochs) says little about quality at the config's budget." if quick
           else ""))
    retrains = {arm: (x["promoted"] - x["models"], x["retrains"]) for arm, x in s.items()}
    out.append(f"- Gates: {retrains[ONE][0]} of {retrains[ONE][1]} retrains promoted for the one model, "
               f"{retrains[K][0]} of {retrains[K][1]} for the K models. One gate over every task is all or nothing: "
               "a retrain that helps some tasks and costs another more than its tolerance is rejected for all, "
               "where K gates promote the tasks it helped.")
    blocked = [(month, [t.name for t in cfg.tasks if t.name in why]) for name, month, why in setup["rejections"]
               if name == model_name(None)]
    if blocked:
        out.append("- The one model's rejected retrains: " + "; ".join(f"{m} ({', '.join(t)})" for m, t in blocked)
                   + ": it kept serving the older champion for every task in the months after, while the K models "
                     "moved on where their own gates let them (the per-month table).")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/flights.yaml"))
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_MONTHS}, the overrides of `mtlops simulate --quick` (25%% rows, 3 epochs, ...)")
    parser.add_argument("--months", default=None, help=f"first..last month (default {MONTHS}; quick {QUICK_MONTHS})")
    parser.add_argument("--seconds", type=float, default=None, help="wrk seconds per run (default 8, quick 4)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating serving rounds per batch")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the project, model store and replays here (a rerun resumes the missing replays)")
    parser.add_argument("--no-serving", action="store_true", help="skip the serving measurement")
    parser.add_argument("--out", type=Path, default=None, help="results path without suffix")
    args = parser.parse_args()
    if not args.no_serving and not shutil.which("wrk"):
        sys.exit("wrk not found: `apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk`")
    t_start = time.perf_counter()
    months = month_names(args.months or (QUICK_MONTHS if args.quick else MONTHS))
    seconds = args.seconds or (4.0 if args.quick else 8.0)
    out = args.out or RESULTS / ("lifecycle_cost_quick" if args.quick else "lifecycle_cost")
    work = (args.work or Path(tempfile.mkdtemp(prefix="mtlops-lifecycle-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["BENTOML_HOME"] = str(work / "bentoml")  # the replays and the servers inherit it
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")

    cfg = load_config(args.config)
    if args.quick:
        cfg = with_overrides(cfg, QUICK)
    if (work / "project" / ".git").exists():
        root = work / "project"
    else:
        console.print(f"building the data project in {work} ...")
        root, _ = build_project(cfg, work)
    data_s, *data_load = (float(x) for x in (work / "data_build_s").read_text().split())
    arms = arm_configs(cfg, work)
    configs = {}
    for models in arms.values():
        for name, c in models:
            configs[name] = work / "configs" / f"{name}.yaml"
            configs[name].parent.mkdir(exist_ok=True)
            configs[name].write_text(config_to_yaml(c))
    records = {name: run_replay(name, configs[name], root, f"{months[0]}..{months[-1]}", work)
               for models in arms.values() for name, _ in models}

    served: dict[str, dict] = {}
    serving_file = work / "serving.json"
    if serving_file.exists():  # measured by an earlier run on this work folder
        served = json.loads(serving_file.read_text())
        for arm in served.values():
            arm["rps"], arm["p50_ms"] = ({int(b): v for b, v in arm[key].items()} for key in ("rps", "p50_ms"))
    elif not args.no_serving:
        t0 = time.perf_counter()
        load = os.getloadavg()[0]
        from pipelines.cli.simulate import month_frame
        from serving.client import to_records

        bodies = {}
        frame = month_frame(cfg, root, months[-1])[0].head(max(BATCHES))  # records of the replay's last month
        rows = to_records(frame, cfg.features.names)
        for b in BATCHES:
            bodies[b] = work / f"body-{b}.json"
            bodies[b].write_text(json.dumps({"records": rows[:b]}))
        console.print("serving ...")
        served = measure_serving(arms, configs, work, bodies, seconds, args.rounds)
        for arm in served.values():
            arm.update(seconds=time.perf_counter() - t0, load=[load, os.getloadavg()[0]], wrk_s=seconds)
        serving_file.write_text(json.dumps(served, indent=1))

    s = summarize(arms, records, work, served, months)
    q = quality(cfg, arms, records)
    loads = [*data_load, *(x for r in records.values() for x in r["load"]), *(x for arm in served.values()
                                                                             for x in arm["load"])]
    serving_s = next(iter(served.values()))["seconds"] if served else 0.0
    setup = {"load": f"{min(loads):.2f}–{max(loads):.2f}", "loaded": max(loads) > 1.0, "data_s": data_s,
             "serving_s": serving_s, "seconds": next(iter(served.values()))["wrk_s"] if served else seconds,
             "total_s": data_s + sum(r.get("process_s", r["wall_s"]) for r in records.values()) + serving_s,
             "this_run_s": time.perf_counter() - t_start,
             "initial_test": initial_test(work, arms),
             "rejections": [(name, month, why) for models in arms.values() for name, _ in models
                            for month, why in rejections(work, name, records[name])],
             "retrain": {arm: ["".join(OUTCOME.get(records[name]["rows"][i]["retrain"], "?") for name, _ in models)
                               for i in range(len(months))] for arm, models in arms.items()}}
    text = report(cfg, s, q, months, args, setup)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    plot(s, cfg, q, months, out.with_suffix(".png"))
    (work / "summary.json").write_text(json.dumps({"summary": s, "quality": q, "setup": setup}, indent=1))
    console.print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}; work folder {work}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def replay_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lifecycle_cost.py _replay")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--months", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    record = replay(args.config, args.root, month_names(args.months), args.out)
    (args.out / "record.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_replay"]:
        replay_main(sys.argv[2:])
    else:
        main()
