"""The prediction log as an operated data set: an hour of the service's parts before and after compaction.

Under the serving benchmark's load the writer made ~17 parquet parts a minute (9.7 M records, 30 MB, 105 parts in
6 minutes), ~25k small files a day. This writes one hour of parts at that pace with `write_log_part` (the
writer's own function) from flights rows in the log's format (request keys, the features as received, one
column group per task), then times what a monitoring run pays to read the hour, compacts it with
`compact_log` (what `mtlops serve` runs every minute on parts over an hour old), and reads it again: parts,
bytes, read time and rows (in = out) for both, and the compaction's own time.

    .venv/bin/python -m benchmarks.prediction_log --quick   # 120 parts of 500 rows: ~15 s
    .venv/bin/python -m benchmarks.prediction_log           # 1,020 parts of 1,500 rows (one hour), ~2 min
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import track
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]

from components.artifacts.predictions import (  # noqa: E402
    compact_log,
    log_usage,
    maintenance_lock,
    read_prediction_log,
    write_log_part,
)
from components.config.schema import load_config  # noqa: E402
from components.config.tasks import kind_of  # noqa: E402
from components.data.tables import load_source  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def log_rows(cfg_path: Path, rows: int, seed: int) -> pd.DataFrame:
    """Flights rows as the service logs them: keys, features as received, every task's output columns."""
    cfg = load_config(cfg_path)
    source = load_source(cfg.data, ROOT).sample(n=rows, random_state=seed, replace=True).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    outputs = {kind_of(task).monitored_column(task.name): rng.random(rows) for task in cfg.tasks}
    return pd.concat([pd.DataFrame({"request_id": [f"r{i // 4}" for i in range(rows)],
                                    "record_index": np.arange(rows) % 4, "model_version": "flights-mtl:bench"}),
                      source[cfg.features.names], pd.DataFrame(outputs)], axis=1)


def timed_read(log_dir: Path) -> tuple[float, int]:
    start = time.perf_counter()
    frame = read_prediction_log(log_dir)
    return time.perf_counter() - start, len(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "flights.yaml")
    parser.add_argument("--parts", type=int, default=1020, help="parts in the hour (17 a minute under load)")
    parser.add_argument("--rows-per-part", type=int, default=1500)
    parser.add_argument("--quick", action="store_true", help="120 parts of 500 rows")
    parser.add_argument("--out", type=Path, default=RESULTS / "prediction_log.md")
    args = parser.parse_args()
    parts, rows = (120, 500) if args.quick else (args.parts, args.rows_per_part)
    pool = log_rows(args.config, rows * 20, seed=0)  # parts are drawn from a pool: realistic values, quick to make

    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp) / "predictions"
        hour = pd.Timestamp.now(tz="UTC").floor("h")
        for k in track(range(parts), description="writing an hour of parts"):
            frame = pool.iloc[(k % 20) * rows:(k % 20 + 1) * rows].copy()
            frame["request_id"] = frame["request_id"] + f"-{k}"
            frame.insert(2, "timestamp", hour + pd.to_timedelta(np.linspace(k, k + 1, rows, endpoint=False)
                                                                * 3600 / parts, unit="s"))
            write_log_part(frame, log_dir)
        before, (read_before, rows_before) = log_usage(log_dir), timed_read(log_dir)
        start = time.perf_counter()
        with maintenance_lock(log_dir):
            done = compact_log(log_dir, min_age_seconds=0)
        compaction_s = time.perf_counter() - start
        after, (read_after, rows_after) = log_usage(log_dir), timed_read(log_dir)

    table = Table(title=f"One hour of the prediction log: {parts:,} parts x {rows:,} rows")
    for column in ("", "parts", "MiB on disk", "read the hour (s)", "rows read"):
        table.add_column(column, justify="right")
    table.add_row("as written", f"{before.parts:,}", f"{before.bytes / 2**20:.1f}", f"{read_before:.2f}",
                  f"{rows_before:,}")
    table.add_row("compacted", f"{after.parts:,}", f"{after.bytes / 2**20:.1f}", f"{read_after:.2f}",
                  f"{rows_after:,}")
    Console().print(table)
    summary = (f"compaction: {compaction_s:.2f} s for {done.rows:,} rows ({done.rows / compaction_s:,.0f} rows/s), "
               f"rows in = rows out: {rows_before == rows_after == parts * rows}; a day at this pace: "
               f"{24 * before.parts:,} parts as written, {24 * after.parts} compacted")
    Console().print(summary)
    args.out.write_text(
        f"# The prediction log, compacted\n\n`{' '.join(['python -m benchmarks.prediction_log', *sys.argv[1:]])}`\n\n"
        f"| | parts | MiB on disk | read the hour (s) | rows read |\n|---|---|---|---|---|\n"
        f"| as written | {before.parts:,} | {before.bytes / 2**20:.1f} | {read_before:.2f} | {rows_before:,} |\n"
        f"| compacted | {after.parts:,} | {after.bytes / 2**20:.1f} | {read_after:.2f} | {rows_after:,} |\n\n"
        f"{summary}.\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
