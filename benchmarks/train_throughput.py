"""Training throughput of the default multi-task model on this machine, and time per step of `make run`.

What it measures:

1. Hot-loop throughput (training samples/s) of the config's model on CPU with torch using all cores: the
   trainer's own epoch loop `components.training.train.run_epoch` over batches drawn as `train` draws them (randperm
   indexing of in-memory tensors, forward, masked per-task losses, the strategy's backward, AdamW step), next to
   a bare hand-written loop on the same model and batches (`bare_loop`: the floor), at the config's batch size
   and at 512 and 8192. A few warm-up steps are discarded, then whole epochs are timed for at least a fixed wall
   time. Also the end-to-end `components.training.train.train` samples/s over 2 epochs (per-epoch
   validation and checkpointing included), and the peak RSS of this process. The target is 50,000
   samples/s for the default MLP.
2. Seconds per kfp.local step of `mtlops run`: parsed from kfp.local's log (`--pipeline-log PATH`: a run
   folder's `kfp.log`, or a saved `mtlops run --verbose` output), or from a fresh
   end-to-end `mtlops data build` + `mtlops run` in a temporary git repository (`--run-pipeline`), which also
   reports each command's wall time and the peak RSS of the child process tree.

Run from the repository root: `.venv/bin/python -m benchmarks.train_throughput [--quick] [--run-pipeline]`.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from components.config.schema import ProjectConfig, config_to_yaml, load_config
from components.config.tasks import kind_of
from components.data.features import FeatureSpec
from components.data.tables import load_source, select_window, with_labels
from components.training.architectures.hps import HardSharingModel
from components.training.strategies import Weighting, make_strategy
from components.training.train import (
    EpochPlan,
    StepContext,
    TensorData,
    epoch_batches,
    make_autocast,
    run_epoch,
    to_tensors,
    train,
)
from pipelines.steplog import LOG_FILE

TARGET_SAMPLES_PER_S = 50_000
EXTRA_BATCH_SIZES = (512, 8192)
WARMUP_STEPS = 5
ROUNDS = 3  # turns of the trainer's and the bare loop, taken alternately
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


def _fresh(cfg: ProjectConfig, spec: FeatureSpec) -> tuple[HardSharingModel, torch.optim.AdamW, Weighting]:
    tc = cfg.training
    torch.manual_seed(tc.seed)
    model = HardSharingModel(spec, cfg.model)
    strategy = make_strategy(model.task_names, tc.strategy).attach(model)
    optimizer = torch.optim.AdamW([*model.parameters(), *strategy.parameters()], lr=tc.lr,
                                  weight_decay=tc.weight_decay)
    model.train()
    return model, optimizer, strategy


def timed_epochs(epoch: Callable[[list[torch.Tensor]], float], n: int, batch_size: int, seed: int,
                 seconds: float) -> LoopResult:
    """`WARMUP_STEPS` untimed steps, then whole epochs (batches drawn as `train` draws them), at least one, until
    `seconds` have passed. `epoch(batches)` trains on them and returns the sum over tasks of the mean loss."""
    cpu = torch.device("cpu")
    warm_up = epoch_batches(n, batch_size, seed * 100_003, cpu)[:WARMUP_STEPS]
    loss_steps = epoch(warm_up) * len(warm_up)
    steps = samples = 0
    e = 1
    t0 = time.perf_counter()
    while True:
        batches = epoch_batches(n, batch_size, seed * 100_003 + e, cpu)
        loss_steps += epoch(batches) * len(batches)
        steps, samples, e = steps + len(batches), samples + sum(len(b) for b in batches), e + 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return LoopResult(batch_size, steps, samples, elapsed, loss_steps / (len(warm_up) + steps))


def hot_loop(cfg: ProjectConfig, spec: FeatureSpec, data: TensorData, batch_size: int, seconds: float) -> LoopResult:
    """The trainer's own epoch loop (`components.training.train.run_epoch`) on a fresh model."""
    model, optimizer, strategy = _fresh(cfg, spec)
    tasks = {t.name: t for t in cfg.tasks}
    autocast = make_autocast(torch.device("cpu"))

    def epoch(batches: list[torch.Tensor]) -> float:
        return sum(run_epoch(StepContext(model, optimizer, data, tasks, autocast), EpochPlan(strategy),
                             batches).train_loss.values())

    return timed_epochs(epoch, len(data), batch_size, cfg.training.seed, seconds)


def bare_loop(cfg: ProjectConfig, spec: FeatureSpec, data: TensorData, batch_size: int, seconds: float) -> LoopResult:
    """The floor on the same model and batches: a hand-written loop with the task losses inlined (each target
    cleaned and masked once, before the loop), their plain sum, backward and AdamW; no strategy, no dicts of
    losses kept. What the trainer's loop costs on top of it is the overhead to explain."""
    model, optimizer, _ = _fresh(cfg, spec)
    losses = {t.name: (kind_of(t), t.loss) for t in cfg.tasks}
    targets = {name: torch.nan_to_num(y) for name, y in data.targets.items()}
    counts = {name: (~torch.isnan(y)).float() for name, y in data.targets.items()}

    def epoch(batches: list[torch.Tensor]) -> float:
        total = torch.zeros(())
        for idx in batches:
            out = model(data.numeric[idx], data.categorical[idx])
            loss = sum((kind.loss(name_, out[name], targets[name][idx]) * counts[name][idx]).sum()
                       / counts[name][idx].sum().clamp_min(1) for name, (kind, name_) in losses.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
            total += loss.detach()  # type: ignore[union-attr]
        return float(total) / max(len(batches), 1)

    return timed_epochs(epoch, len(data), batch_size, cfg.training.seed, seconds)


def _sum(runs: list[LoopResult]) -> LoopResult:
    steps = sum(r.steps for r in runs)
    return LoopResult(runs[0].batch_size, steps, sum(r.samples for r in runs), sum(r.seconds for r in runs),
                      sum(r.mean_loss * r.steps for r in runs) / steps)


def interleaved(cfg: ProjectConfig, spec: FeatureSpec, data: TensorData, batch_size: int,
                seconds: float) -> tuple[LoopResult, LoopResult]:
    """(trainer, bare), each timed in `ROUNDS` turns taken alternately, so that load which comes and goes during
    the run falls on both alike."""
    hot, bare = [], []
    for r in range(ROUNDS):
        for loop, runs in ((hot_loop, hot), (bare_loop, bare))[::1 if r % 2 else -1]:
            runs.append(loop(cfg, spec, data, batch_size, seconds))
    return _sum(hot), _sum(bare)


def throughput(console: Console, cfg: ProjectConfig, quick: bool, threads: int) -> None:
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
    for item, value in (("torch", torch.__version__), ("torch threads", str(torch.get_num_threads())),
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
    table = Table(title=f"hot loop: forward + masked losses + backward + AdamW ({ROUNDS} alternate turns of "
                        f"{WARMUP_STEPS} warm-up steps and whole epochs for ≥ {seconds / ROUNDS:.1f} s)")
    for col in ("batch size", "loop", "steps", "seconds", "ms/step", "samples/s", "vs bare", "target", "result",
                "mean loss"):
        table.add_column(col, justify="right")
    for bs in sizes:
        label = f"{bs} (config)" if bs == cfg.training.batch_size else str(bs)
        hot, bare = interleaved(cfg, spec, data, bs, seconds / ROUNDS)
        for name, r in (("trainer", hot), ("bare", bare)):
            table.add_row(label if name == "trainer" else "", name, str(r.steps), f"{r.seconds:.2f}",
                          f"{1000 * r.seconds / r.steps:.1f}", f"{r.samples_per_s:,.0f}",
                          f"{r.samples_per_s / bare.samples_per_s:.2f}x", f"≥ {TARGET_SAMPLES_PER_S:,}",
                          verdict(r.samples_per_s), f"{r.mean_loss:.4f}")
    table.caption = (f"trainer: components.training.train.run_epoch with the config's strategy "
                     f"({cfg.training.strategy.name}); "
                     "bare: the same model and batches in a hand-written loop (benchmarks/train_throughput.py "
                     "bare_loop). Mean loss: sum over tasks of the masked losses, averaged over all steps run")
    console.print(table)

    e2e_cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": E2E_EPOCHS})})
    with tempfile.TemporaryDirectory(prefix="mtlops-bench-train-") as out:
        result = train(e2e_cfg, train_df, val_df, Path(out), progress=False)
    e2e = Table(title=f"end-to-end components.training.train.train: {result.epochs_run} epochs, batch "
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
        run_s, _, run_rss = run_child([str(MTLOPS), "run", *common, "--pipeline-root", str(tmp / "runs" / "kfp")],
                                      tmp, env)
        log = next((tmp / "runs" / "kfp").glob(f"*/{LOG_FILE}")).read_text(errors="replace")  # kfp.local's output

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
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (default: all cores; 1 is steadier on a loaded machine)")
    parser.add_argument("--quick", action="store_true",
                        help=f"time {QUICK_TIMED_S:.0f} s per batch size, only the config's batch size")
    parser.add_argument("--pipeline-log", type=Path, metavar="PATH",
                        help="a saved log of `mtlops run`: print seconds per step")
    parser.add_argument("--run-pipeline", action="store_true",
                        help="run `mtlops data build` + `mtlops run` in a temporary git repo (minutes)")
    args = parser.parse_args()

    console = Console(width=None if sys.stdout.isatty() else 160)
    throughput(console, load_config(args.config), args.quick, args.threads)
    if args.pipeline_log:
        steps = parse_pipeline_log(args.pipeline_log.read_text(errors="replace"))
        if not steps:
            raise SystemExit(f"no kfp.local task start/finish lines found in {args.pipeline_log}")
        console.print(steps_table(steps, f"{args.pipeline_log}: seconds per kfp.local step"))
    if args.run_pipeline:
        run_pipeline(console, args.config)


if __name__ == "__main__":
    main()
