"""Monitoring benchmark: seconds per `monitoring.drift.monitor` run by window size, with and
without sampling.

    python -m benchmarks.monitor_speed                       # 10k / 100k / 300k rows, sampled and not
    python -m benchmarks.monitor_speed --sizes 10000 --repeats 1

Trains a flights model briefly (1 epoch on a 10% sample of the training window: monitoring speed
does not depend on accuracy), exports it and scores rows of Jan-Jun (reference) and Jul-Dec
(current) 2013 (drawn with replacement above ~170k rows) with the ONNX graph into the prediction
log's format, labels attached, so each run computes feature drift, prediction drift and per-task
quality. A run includes the report, its JSON and HTML. Unsampled runs above `--unsampled-limit`
rows are skipped (upstream issue #1526 reports hours on large unsampled tables).
Prints a table and writes benchmarks/results/monitoring.md.

Also measures the bootstrap interval of each task's realized metric (`monitoring.quality_draws`
resamples): every resample scored by its own metric call (`TaskKind.resampled` of the base class)
against all resamples at once from row counts (the task type's override, what `monitor` runs), on
the same resamples, with the largest difference between the two; and the seconds to fit the
label-free quality estimators on one OpenMP thread and on all cores, as the machine is found and
next to one busy process (a node shared with another job)
(benchmarks/results/monitoring_bootstrap.md; `--quality-only` for just these, a few minutes).

Also measures why categorical features are compared over their top values: the Jensen-Shannon
distance between two disjoint samples of the same months, value by value vs top values + other
(benchmarks/results/monitoring_category_noise.md; `--noise-only` for just this, seconds).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from components.artifacts.export import export_onnx
from components.artifacts.inference import OnnxModel
from components.artifacts.predictions import score_frame
from components.config.schema import parse_config
from components.data.tables import label_column, load_source, sample_rows, with_labels
from components.training.train import train
from monitoring.drift import DEFAULT_SAMPLE_SIZE, monitor

ROOT = Path(__file__).resolve().parents[1]


def scored(model: OnnxModel, frame: pd.DataFrame, cfg) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    out = score_frame(model, frame, "bench")
    for t in cfg.tasks:
        out[label_column(t.name)] = frame[label_column(t.name)].to_numpy()
    return out


def category_noise(first: pd.DataFrame, cfg, console: Console, top: int) -> list[str]:  # type: ignore[no-untyped-def]
    """Jensen-Shannon distance of each categorical feature between two disjoint samples of the same
    months (no drift at all), compared value by value and over the reference's top values + other."""
    import numpy as np
    from evidently.legacy.calculations.stattests import jensenshannon_stat_test
    from evidently.legacy.core import ColumnType

    train_window = first[first[cfg.data.time_column] < cfg.data.windows.train.end]
    order = np.random.default_rng(0).permutation(len(train_window))
    table = Table(title="no-drift noise: Jensen-Shannon distance, two disjoint samples of the training window "
                        "(drift at >= 0.1)")
    cols = ["feature (values)", *(f"{n:,} rows {how}" for n in (4_000, 20_000) for how in ("raw", f"top {top}"))]
    for col in cols:
        table.add_column(col, justify="right")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for f in cfg.features.categorical:
        cells = []
        for n in (4_000, 20_000):
            a = train_window[f.name].iloc[order[:n]].astype(str)
            b = train_window[f.name].iloc[order[n:2 * n]].astype(str)
            kept = set(a.value_counts().index[:top])
            bucket = [x.where(x.isin(kept), "(other)") for x in (a, b)]
            for pair in ((a, b), bucket):
                cells.append(f"{jensenshannon_stat_test(*pair, ColumnType.Categorical, None).drift_score:.3f}")
        row = [f"{f.name} ({train_window[f.name].nunique():,})", *cells]
        table.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
    console.print(table)
    return lines


def bootstrap_table(cfg, current: pd.DataFrame, console: Console, sizes: list[int]) -> list[str]:  # type: ignore[no-untyped-def]
    import numpy as np

    from components.config.tasks import TaskKind, kind_of
    from monitoring.drift import bootstrap_counts, labelled_raw

    draws = cfg.monitoring.quality_draws
    table = Table(title=f"bootstrap interval of the realized metric, {draws} resamples: seconds per task")
    cols = ["task (metric)", "rows", "a metric call per resample", "row counts, all at once", "speed-up",
            "largest difference"]
    for col in cols:
        table.add_column(col, justify="right")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for n in sizes:
        frame = current.head(n)
        for task in cfg.tasks:
            target, raw, y = labelled_raw(task, frame)
            kind = kind_of(target)
            counts = bootstrap_counts(len(y), draws, 0)
            seconds, values = [], []
            for how in (TaskKind.resampled, type(kind).resampled):
                t0 = time.perf_counter()
                values.append(how(kind, target, task.metric, raw, y, counts))
                seconds.append(time.perf_counter() - t0)
            row = [f"{task.name} ({task.metric})", f"{len(y):,}", f"{seconds[0]:.2f}", f"{seconds[1]:.3f}",
                   f"{seconds[0] / seconds[1]:.0f}x", f"{np.nanmax(np.abs(values[0] - values[1])):.1e}"]
            table.add_row(*row)
            lines.append("| " + " | ".join(row) + " |")
    console.print(table)
    return lines


def _busy() -> None:
    while True:
        pass


def _fit_seconds(cfg, reference: pd.DataFrame, threads: int, out) -> None:  # type: ignore[no-untyped-def]
    from threadpoolctl import threadpool_limits

    from monitoring.estimation import fit_estimators

    with threadpool_limits(threads):
        t0 = time.perf_counter()
        fit_estimators(cfg, reference)
        out.put(time.perf_counter() - t0)


def estimator_threads_table(cfg, reference: pd.DataFrame, console: Console,  # type: ignore[no-untyped-def]
                            limit_s: float = 180) -> list[str]:
    """Each fit in its own process, stopped after `limit_s` (a stalled fit is reported as such)."""
    import multiprocessing

    cores = os.cpu_count() or 1
    cols = ["OpenMP threads", "machine", "seconds to fit the estimators"]
    table = Table(title=f"label-free quality estimators on {len(reference):,} reference rows ({cores} cores)")
    for col in cols:
        table.add_column(col, justify="right")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for extra in (0, 1):  # a node shared with one other CPU-bound job
        machine = "+1 busy process" if extra else "as found"
        neighbours = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(extra)]
        for p in neighbours:
            p.start()
        try:
            for threads in (1, cores):
                result: multiprocessing.Queue = multiprocessing.Queue()
                fit = multiprocessing.Process(target=_fit_seconds, args=(cfg, reference, threads, result))
                fit.start()
                fit.join(limit_s)
                if fit.is_alive():
                    fit.terminate()
                    seconds = f"> {limit_s:.0f} (stopped)"
                else:
                    seconds = f"{result.get():.2f}"
                row = [str(threads), machine, seconds]
                table.add_row(*row)
                lines.append("| " + " | ".join(row) + " |")
        finally:
            for p in neighbours:
                p.terminate()
    console.print(table)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    ap.add_argument("--sample-sizes", type=int, nargs="+", default=[5_000, DEFAULT_SAMPLE_SIZE])
    ap.add_argument("--unsampled-limit", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=2, help="runs per cell; the fastest is reported")
    ap.add_argument("--noise-only", action="store_true", help="only the categorical no-drift noise table")
    ap.add_argument("--quality-only", action="store_true",
                    help="only the bootstrap interval and quality-estimator tables")
    args = ap.parse_args()
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "flights.yaml").read_text())
    raw["training"].update({"epochs": 1})
    cfg = parse_config(raw)
    console = Console()
    with console.status("loading flights"):
        df = with_labels(load_source(cfg.data), cfg)
        t = cfg.data.time_column
        first, second = df[df[t] < "2013-07-01"], df[df[t] >= "2013-07-01"]
    out = ROOT / "benchmarks" / "results"
    if not args.quality_only:
        noise = category_noise(first, cfg, console, cfg.monitoring.top_categories)
        (out / "monitoring_category_noise.md").write_text("\n".join(noise) + "\n")
        if args.noise_only:
            return
    with console.status("training a 1-epoch model"):
        tmp = Path(tempfile.mkdtemp(prefix="mtlops-bench-monitoring-"))
        w = cfg.data.windows
        train_df = sample_rows(first[first[t] < w.train.end].reset_index(drop=True), 0.1, 0)
        val_df = sample_rows(first[(first[t] >= w.validation.start) & (first[t] < w.validation.end)]
                             .reset_index(drop=True), 0.1, 0)
        train(cfg, train_df, val_df, tmp / "model", progress=False)
        export_onnx(tmp / "model", tmp / "onnx", val_df)
        model = OnnxModel(tmp / "onnx")
        top = max(args.sizes)
        # half a year is ~170k flights: larger windows are drawn with replacement
        reference_all = scored(model, first.sample(n=top, replace=top > len(first), random_state=0), cfg)
        current_all = scored(model, second.sample(n=top, replace=top > len(second), random_state=1), cfg)
    bootstrap = bootstrap_table(cfg, current_all, console, [5_000, DEFAULT_SAMPLE_SIZE])
    estimators = estimator_threads_table(cfg, reference_all.head(DEFAULT_SAMPLE_SIZE), console)
    (out / "monitoring_bootstrap.md").write_text("\n".join([*bootstrap, "", *estimators]) + "\n")
    if args.quality_only:
        return

    table = Table(title=f"seconds per monitor run, fastest of {args.repeats} ({len(cfg.features.names)} features, "
                        f"{len(cfg.tasks)} tasks, labels attached; {platform.machine()}, {os.cpu_count()} cores)")
    for col in ("rows per window", "sample size", "rows compared", "seconds", "drifted features"):
        table.add_column(col, justify="right")
    rows_md = []
    for n in args.sizes:
        reference, current = reference_all.head(n), current_all.head(n)
        for size in [*args.sample_sizes, None]:
            if size is None and n > args.unsampled_limit:
                table.add_row(f"{n:,}", "none", f"{n:,}", f"skipped (> {args.unsampled_limit:,})", "")
                rows_md.append((n, "none", n, "skipped", ""))
                continue
            if size is not None and size >= n:
                continue
            times = []
            for _ in range(args.repeats):  # the fastest of a few: other jobs share this machine
                t0 = time.perf_counter()
                s = monitor(cfg, reference, current, tmp / f"run-{n}-{size}", window="2013-07",
                            model_version="bench", sample_size=size or n)
                times.append(time.perf_counter() - t0)
            secs = min(times)
            label = f"{size:,}" if size else "none"
            table.add_row(f"{n:,}", label, f"{s.sampled_current:,}", f"{secs:.1f}", str(len(s.drifted_features)))
            rows_md.append((n, label, s.sampled_current, f"{secs:.1f}", len(s.drifted_features)))
    console.print(table)
    console.print(f"default sample size: {DEFAULT_SAMPLE_SIZE:,} rows per window (monitoring.sample_size)")
    lines = ["| rows per window | sample size | rows compared | seconds | drifted features |", "|---|---|---|---|---|"]
    lines += [f"| {n:,} | {lab} | {c:,} | {s} | {d} |" for n, lab, c, s, d in rows_md]
    (out / "monitoring.md").write_text("\n".join(lines) + f"\n\ndefault sample size: {DEFAULT_SAMPLE_SIZE:,}\n")
    console.print(f"wrote {out / 'monitoring.md'} and {out / 'monitoring_category_noise.md'}")


if __name__ == "__main__":
    main()
