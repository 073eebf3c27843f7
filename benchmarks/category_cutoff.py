"""How often a value of a high-cardinality categorical must occur to get its own embedding: a `min_frequency` sweep.

An embedding row per aircraft (`tailnum`, ~3,700 values in Jan–Apr) or flight number (~2,600) lets the network
memorise identities that do not carry over to later months: schedules and aircraft rotations change. For each
cut-off in `--cutoffs` the `--columns` get `min_frequency` = that cut-off (rarer values share the
out-of-vocabulary embedding; a null keeps its own), the config trains with seeds 0..`--seeds`-1, and each run is
scored on the validation window (May: the cut-off is chosen there) and on every task on the later test window
(June). A cut-off above every count keeps no value of those columns (only null vs not-null).

Writes `<out>.md` (the table) and `journals/<out>.runs.jsonl` (a run journal: a stopped sweep resumes). Run from the
repository root:

    .venv/bin/python -m benchmarks.category_cutoff                     # configs/flights.yaml, 5 seeds: ~10 min
    .venv/bin/python -m benchmarks.category_cutoff --cutoffs 30 200 --seeds 3 --training lr=0.002
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.common import (  # the sibling benchmark: its runner pieces and journal
    RESULTS,
    ROOT,
    MethodSummary,
    RunJournal,
    RunResult,
    beside,
    journal_file,
    load_windows,
    results_header,
    seed_runs,
    setting_overrides,
    test_metrics,
    with_min_frequency,
    with_training,
)
from components.config.schema import ProjectConfig, load_config
from components.config.tasks import higher_is_better
from components.data.features import FeatureSpec
from components.training.train import train

VALIDATION = "validation:"  # prefix of the validation-window metric in a run's metrics


def with_cutoff(cfg: ProjectConfig, columns: list[str], cutoff: int) -> ProjectConfig:
    """`cfg` with `min_frequency: cutoff` on each of `columns` (categorical features of the config)."""
    return with_min_frequency(cfg, dict.fromkeys(columns, cutoff), "--columns")


def run(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, test_df: pd.DataFrame,
        work: Path) -> RunResult:
    result = train(cfg, train_df, val_df, work, progress=False)
    primary = cfg.primary_task.name
    validation = test_metrics(work, cfg, val_df)[primary]
    return RunResult(test_metrics(work, cfg, test_df) | {VALIDATION + primary: validation}, result.wall_s,
                     result.train_flops)


def vocabulary_sizes(cfg: ProjectConfig, train_df: pd.DataFrame, columns: list[str]) -> dict[str, int]:
    spec = FeatureSpec.fit(train_df, cfg)
    return {v.name: len(v.values) for v in spec.categorical if v.name in columns}


def markdown(cfg: ProjectConfig, summaries: list[MethodSummary], sizes: list[dict[str, int]], header: str) -> str:
    primary = cfg.primary_task
    cells = [f"validation {primary.name} {primary.metric}", *(f"{t.name} {t.metric}" for t in cfg.tasks)]
    lines = [header, "", "| min_frequency | values kept | " + " | ".join(cells) + " | train GFLOPs |",
             "|---" * (len(cells) + 3) + "|"]
    keys = [VALIDATION + primary.name, *(t.name for t in cfg.tasks)]
    for summary, size in zip(summaries, sizes, strict=True):
        kept = ", ".join(f"{name} {n:,}" for name, n in size.items())
        values = [f"{summary.mean(k):.4f} ± {summary.std(k):.4f}" for k in keys]
        flops = summary.flops()
        lines.append(f"| {summary.name} | {kept} | " + " | ".join(values) + f" | {(flops or 0) / 1e9:,.0f} |")
    better = max if higher_is_better(primary.metric) else min  # type: ignore[arg-type]
    best = better(summaries, key=lambda s: s.mean(VALIDATION + primary.name))
    lines += ["", f"Best on the validation window: min_frequency {best.name} "
              f"({primary.name} {primary.metric} {best.mean(VALIDATION + primary.name):.4f})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "flights.yaml"))
    parser.add_argument("--columns", nargs="+", default=["tailnum", "flight_number"])
    parser.add_argument("--cutoffs", nargs="+", type=int, default=[30, 100, 200, 100_000])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=1.0, help="row sample of the data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "category_cutoff"), help="output path without suffix")
    parser.add_argument("--training", action="append", default=[], metavar="FIELD=VALUE",
                        help="a `training:` setting over the config's, e.g. lr=0.002 (YAML value; repeatable)")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="a `model:` setting over the config's, e.g. dropout=0.1 (YAML value; repeatable)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model_settings = setting_overrides(args.model)
    training = setting_overrides(args.training, "training") | {"threads": args.threads, "device": "cpu"}
    base = with_training(load_config(args.config), model=model_settings or None, **training)
    configs = {cutoff: with_cutoff(base, args.columns, cutoff) for cutoff in args.cutoffs}
    train_df, val_df, test_df = load_windows(base, args.fraction)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    journal = RunJournal(journal_file(out, "runs"),
                         # the key: the config with the swept columns' own cut-off taken out
                         {"config": with_cutoff(base, args.columns, 1).model_dump(mode="json"),
                          "columns": args.columns, "fraction": args.fraction})
    console = Console(stderr=True)
    t0 = time.perf_counter()
    summaries = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as bar, tempfile.TemporaryDirectory(prefix="cutoff-") as tmp:
        job = bar.add_task("runs", total=len(configs) * args.seeds)
        for cutoff, cfg in configs.items():
            summaries.append(seed_runs(
                str(cutoff), args.seeds, journal,
                lambda seed, c=cfg, n=cutoff: run(with_training(c, seed=seed), train_df, val_df, test_df,
                                                  Path(tmp) / f"{n}-{seed}"), bar, job))
    sizes = [vocabulary_sizes(cfg, train_df, args.columns) for cfg in configs.values()]
    header = (results_header(f"`min_frequency` of {', '.join(args.columns)} on `{Path(args.config).name}`",
                             "category_cutoff.py", argv, args.threads, "cpu", args.fraction,
                             (train_df, val_df, test_df), base.training.epochs)
              + f", seeds 0..{args.seeds - 1}, mean ± std over seeds. Training: "
              + ", ".join(f"{k}={v}" for k, v in base.training.model_dump(include={"lr", "weight_decay",
                                                                                   "batch_size", "ema_decay"}).items())
              + f", dropout={base.model.dropout}, hidden={base.model.hidden}. "
              f"Whole sweep: {(time.perf_counter() - t0) / 60:.1f} min.")
    text = markdown(base, summaries, sizes, header)
    beside(out, ".md").write_text(text)
    table = Table(title=f"min_frequency of {', '.join(args.columns)}")
    for name in ("min_frequency", f"validation {base.primary_task.name}",
                 *(f"{t.name} {t.metric}" for t in base.tasks)):
        table.add_column(name, justify="right")
    for s in summaries:
        table.add_row(s.name, *(f"{s.mean(k):.4f}" for k in (VALIDATION + base.primary_task.name,
                                                             *(t.name for t in base.tasks))))
    console.print(table)
    console.print(f"wrote {beside(out, '.md')}")


if __name__ == "__main__":
    main()
