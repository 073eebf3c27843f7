"""Training throughput of the default multi-task model on this machine, and time per step of `make run`.

What it measures:

1. Hot-loop throughput (training samples/s) of the config's model on CPU with torch using all cores: the
   trainer's own `components.train.train_step` over batches drawn as `train` draws them (randperm indexing of
   in-memory tensors, forward, masked per-task losses, the strategy's backward, AdamW step), at the config's
   batch size and at 512 and 8192. A few warm-up steps are discarded, then each batch size is timed for a
   fixed wall time. Also the end-to-end `components.train.train` samples/s over 2 epochs (per-epoch
   validation and checkpointing included), and the peak RSS of this process. The target is 50,000
   samples/s for the default MLP.
2. Seconds per kfp.local step of `mtlops run`: parsed from a saved log (`--pipeline-log PATH`), or from a fresh
   end-to-end `mtlops data build` + `mtlops run` in a temporary git repository (`--run-pipeline`), which also
   reports each command's wall time and the peak RSS of the child process tree.

Run from the repository root: `.venv/bin/python benchmarks/train_throughput.py [--quick] [--run-pipeline]`.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from components.architectures.hps import HardSharingModel
from components.config import ProjectConfig, config_to_yaml, load_config
from components.data import load_source, select_window, with_labels
from components.features import FeatureSpec
from components.strategies import make_strategy
from components.train import TensorData, make_autocast, to_tensors, train, train_step

TARGET_SAMPLES_PER_S = 50_000
EXTRA_BATCH_SIZES = (512, 8192)
WARMUP_STEPS = 5
TIMED_S, QUICK_TIMED_S = 3.0, 1.0
E2E_EPOCHS = 2
MTLOPS = Path(sys.executable).with_name("mtlops")
# kfp.local: "16:52:41.073 - INFO - Executing task 'ingest-op'" / "... - Task 'ingest-op' finished with status SUCCESS"
STEP_LINE = re.compile(r"(\d{2}):(\d{2}):(\d{2}\.\d+) - \w+ - (?:Executing task '(?P<start>[^']+)'"
                       r"|Task '(?P<end>[^']+)' finished with status (?P<status>\w+))")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
DAY_S = 86_400
# Runs argv[2:] and writes its tree's peak RSS (KiB) to argv[1]. A small separate process because Linux starts a
# child's ru_maxrss at its parent's RSS at fork (the pre-exec high-water mark is kept), so commands forked straight
# from this benchmark would report at least its own footprint.
RSS_PROBE = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
             "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")


@dataclass
class LoopResult:
    batch_size: int
    steps: int
    samples: int
    seconds: float
    mean_loss: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds


@dataclass
class StepTiming:
    name: str
    status: str
    seconds: float


def mib(maxrss_kib: int) -> str:
    """`ru_maxrss` is in KiB on Linux."""
    return f"{maxrss_kib / 1024:,.0f}"


def verdict(samples_per_s: float) -> str:
    return "[green]PASS[/green]" if samples_per_s >= TARGET_SAMPLES_PER_S else "[red]MISS[/red]"


def batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Row indices batch after batch, epoch after epoch, drawn as `train` draws them."""
    steps = (n + batch_size - 1) // batch_size
    epoch = 0
    while True:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for s in range(steps):
            yield perm[s * batch_size:(s + 1) * batch_size]
        epoch += 1


def hot_loop(cfg: ProjectConfig, spec: FeatureSpec, data: TensorData, batch_size: int, seconds: float) -> LoopResult:
    """Train a fresh model for `WARMUP_STEPS` untimed steps, then for at least `seconds` of timed steps."""
    tc = cfg.training
    torch.manual_seed(tc.seed)
    model = HardSharingModel(spec, cfg.model)
    task_names = model.task_names
    task_specs = {t.name: t for t in cfg.tasks}
    strategy = make_strategy(task_names, tc.strategy).attach(model)  # as the trainer does: Jacobian methods need it
    optimizer = torch.optim.AdamW([*model.parameters(), *strategy.parameters()], lr=tc.lr,
                                  weight_decay=tc.weight_decay)
    loss_sums = {name: torch.zeros(()) for name in task_names}
    model.train()

    autocast = make_autocast(torch.device("cpu"))

    def step(idx: torch.Tensor) -> int:
        losses = train_step(model, strategy, optimizer, data, idx, task_specs, autocast)
        for name in task_names:
            loss_sums[name] += losses[name].detach()
        return len(idx)

    draw = batches(len(data), batch_size, tc.seed)
    for _ in range(WARMUP_STEPS):
        step(next(draw))
    steps = samples = 0
    elapsed = 0.0
    t0 = time.perf_counter()
    while elapsed < seconds:
        samples += step(next(draw))
        steps += 1
        elapsed = time.perf_counter() - t0
    mean_loss = float(sum(loss_sums.values())) / (WARMUP_STEPS + steps)
    return LoopResult(batch_size, steps, samples, elapsed, mean_loss)


def throughput(console: Console, cfg: ProjectConfig, quick: bool) -> None:
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    df = with_labels(load_source(cfg.data), cfg)
    w, tcol = cfg.data.windows, cfg.data.time_column
    train_df = select_window(df, tcol, w.train.start, w.train.end)
    val_df = select_window(df, tcol, w.validation.start, w.validation.end)
    spec = FeatureSpec.fit(train_df, cfg)
    data = to_tensors(train_df, spec)
    prep_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in HardSharingModel(spec, cfg.model).parameters())

    setup = Table(title="setup")
    setup.add_column("item")
    setup.add_column("value", justify="right")
    for item, value in (("torch", torch.__version__), ("torch threads (all cores)", str(torch.get_num_threads())),
                        ("model", f"{cfg.model.trunk} {cfg.model.hidden}, {n_params:,} params"),
                        ("numeric / categorical inputs", f"{data.numeric.shape[1]} / {data.categorical.shape[1]}"),
                        ("tasks", ", ".join(t.name for t in cfg.tasks)),
                        ("train rows", f"{len(train_df):,}"), ("validation rows", f"{len(val_df):,}"),
                        ("load + labels + FeatureSpec + tensors", f"{prep_s:.1f} s"),
                        ("load average 1 / 5 / 15 min", " / ".join(f"{v:.2f}" for v in os.getloadavg()))):
        setup.add_row(item, value)
    setup.caption = "a load average near the core count before the run means other work competes for the cores"
    console.print(setup)

    sizes = [cfg.training.batch_size] if quick else sorted({cfg.training.batch_size, *EXTRA_BATCH_SIZES})
    seconds = QUICK_TIMED_S if quick else TIMED_S
    table = Table(title=f"hot loop: forward + masked losses + backward + AdamW ({WARMUP_STEPS} warm-up steps, "
                        f"≥ {seconds:.0f} s timed)")
    for col in ("batch size", "steps", "seconds", "ms/step", "samples/s", "target", "result", "mean loss"):
        table.add_column(col, justify="right")
    for bs in sizes:
        r = hot_loop(cfg, spec, data, bs, seconds)
        label = f"{bs} (config)" if bs == cfg.training.batch_size else str(bs)
        table.add_row(label, str(r.steps), f"{r.seconds:.2f}", f"{1000 * r.seconds / r.steps:.1f}",
                      f"{r.samples_per_s:,.0f}", f"≥ {TARGET_SAMPLES_PER_S:,}", verdict(r.samples_per_s),
                      f"{r.mean_loss:.4f}")
    table.caption = "mean loss: sum over tasks of the masked losses, averaged over all steps run"
    console.print(table)

    e2e_cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": E2E_EPOCHS})})
    with tempfile.TemporaryDirectory(prefix="mtlops-bench-train-") as out:
        result = train(e2e_cfg, train_df, val_df, Path(out), progress=False)
    e2e = Table(title=f"end-to-end components.train.train: {result.epochs_run} epochs, batch "
                      f"{cfg.training.batch_size}, validation + checkpoint every epoch")
    for col in ("epochs", "wall s", "samples/s", "target", "result", f"val {cfg.primary_task.name}"):
        e2e.add_column(col, justify="right")
    primary = cfg.primary_task
    e2e.add_row(str(result.epochs_run), f"{result.wall_s:.2f}", f"{result.samples_per_s:,.0f}",
                f"≥ {TARGET_SAMPLES_PER_S:,}", verdict(result.samples_per_s),
                f"{primary.metric}={result.validation[primary.name][primary.metric]:.4f}")
    console.print(e2e)
    console.print(f"peak RSS of this process (data load + all of the above): "
                  f"{mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)} MiB")


def parse_pipeline_log(text: str) -> list[StepTiming]:
    """(step, status, seconds) per finished kfp.local task, in finishing order. Timestamps are time of day only,
    so a step that runs across midnight is taken modulo a day."""
    started: dict[str, float] = {}
    steps = []
    for line in ANSI.sub("", text).splitlines():
        m = STEP_LINE.search(line)
        if not m:
            continue
        h, mi, s = m.group(1, 2, 3)
        at = int(h) * 3600 + int(mi) * 60 + float(s)
        if m["start"]:
            started[m["start"]] = at
        elif m["end"] in started:
            steps.append(StepTiming(m["end"], m["status"], (at - started.pop(m["end"])) % DAY_S))
    return steps


def steps_table(steps: list[StepTiming], title: str) -> Table:
    total = sum(s.seconds for s in steps)
    table = Table(title=title, show_footer=True)
    table.add_column("step", footer="total (sum of steps)")
    table.add_column("status")
    table.add_column("seconds", justify="right", footer=f"{total:.1f}")
    table.add_column("share", justify="right", footer="100%")
    for s in steps:
        table.add_row(s.name, s.status, f"{s.seconds:.1f}", f"{100 * s.seconds / total:.0f}%" if total else "—")
    return table


def run_child(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str, int]:
    """Run `cmd` under `RSS_PROBE`, streaming its output to stderr.
    Returns (wall seconds, captured output, peak RSS in KiB of the largest process of its tree)."""
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    lines = []
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as rss:
        t0 = time.perf_counter()
        with subprocess.Popen([sys.executable, "-S", "-c", RSS_PROBE, rss.name, *cmd], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stderr.write(line)
                lines.append(line)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode} (its output is above)")
        return wall, "".join(lines), int(rss.read())


def run_pipeline(console: Console, config: Path) -> None:
    """`make run` in a temporary git repo: `mtlops data build`, then `mtlops run`, each timed."""
    with tempfile.TemporaryDirectory(prefix="mtlops-bench-run-") as tmp_s:
        tmp = Path(tmp_s)
        cfg = load_config(config)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dvc_remote": str(tmp / "dvc-remote")})})
        cfg_path = tmp / "config.yaml"
        cfg_path.write_text(config_to_yaml(cfg))
        env = {**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "PYTHONUNBUFFERED": "1"}
        subprocess.run(["git", "init", "-q"], cwd=tmp, check=True)
        common = ["--config", str(cfg_path), "--root", str(tmp)]
        build_s, _, build_rss = run_child([str(MTLOPS), "data", "build", *common], tmp, env)
        run_s, log, run_rss = run_child([str(MTLOPS), "run", *common, "--pipeline-root", str(tmp / "runs" / "kfp")],
                                        tmp, env)

    steps = parse_pipeline_log(log)
    console.print(steps_table(steps, f"mtlops run ({cfg.data.name}): seconds per kfp.local step"))
    table = Table(title="make run, end to end (fresh temporary git repo)",
                  caption="peak RSS: ru_maxrss of RUSAGE_CHILDREN after the command exits: the largest single "
                          "process of its tree (the CLI, a kfp step, dvc), not the sum")
    table.add_column("command")
    table.add_column("wall s", justify="right")
    table.add_column("peak RSS MiB", justify="right")
    table.add_row("mtlops data build", f"{build_s:.1f}", mib(build_rss))
    table.add_row("mtlops run", f"{run_s:.1f}", mib(run_rss))
    table.add_row("  of which kfp steps", f"{sum(s.seconds for s in steps):.1f}", "")
    table.add_row("total", f"{build_s + run_s:.1f}", mib(max(build_rss, run_rss)))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/flights.yaml"), help="project YAML")
    parser.add_argument("--quick", action="store_true",
                        help=f"time {QUICK_TIMED_S:.0f} s per batch size, only the config's batch size")
    parser.add_argument("--pipeline-log", type=Path, metavar="PATH",
                        help="a saved log of `mtlops run`: print seconds per step")
    parser.add_argument("--run-pipeline", action="store_true",
                        help="run `mtlops data build` + `mtlops run` in a temporary git repo (minutes)")
    args = parser.parse_args()

    console = Console(width=None if sys.stdout.isatty() else 160)
    throughput(console, load_config(args.config), args.quick)
    if args.pipeline_log:
        steps = parse_pipeline_log(args.pipeline_log.read_text(errors="replace"))
        if not steps:
            raise SystemExit(f"no kfp.local task start/finish lines found in {args.pipeline_log}")
        console.print(steps_table(steps, f"{args.pipeline_log}: seconds per kfp.local step"))
    if args.run_pipeline:
        run_pipeline(console, args.config)


if __name__ == "__main__":
    main()
