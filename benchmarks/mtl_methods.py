"""Which MTL training method to use on a config: every method through the real trainer, several seeds, test metrics.

For each method and seed it trains on the config's train window (early stopping on the validation window) and
scores every task on the held-out, later test window. It reports per-task test metrics as mean ± std over the
seeds, Δm% against single-task learning (docs/methods.md: the mean over tasks of the relative change of each task's
metric, sign-corrected so positive is better), the training wall time and the training FLOPs counted by the
trainer (`torch.utils.flop_counter.FlopCounterMode` on one step per phase, times the samples trained). A LightGBM
model per task is the tabular practitioner's alternative (its FLOPs are not comparable and are not counted).

Writes `<out>.md` (the table, the command and the machine) and `<out>.png` (primary-task test metric against
training FLOPs). Run from the repository root (needs the `bench` extra: `pip install -e '.[bench]'`):

    .venv/bin/python -m benchmarks.mtl_methods --quick            # < 10 min on 2 CPU cores
    nice .venv/bin/python -m benchmarks.mtl_methods               # the whole train window, 3 seeds
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.common import (
    RESULTS,
    ROOT,
    MethodSummary,
    RunJournal,
    RunResult,
    bench_config,
    beside,
    config_key,
    journal_file,
    load_windows,
    markdown,
    methods,
    mt2st_sweep,
    plot,
    results_header,
    run_lightgbm,
    run_mtl,
    run_pbt,
    run_stl,
    seed_runs,
    setting_overrides,
    with_min_frequency,
    with_training,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "flights.yaml"))
    parser.add_argument("--quick", action="store_true", help="10%% row sample, 4 epochs, small LightGBM")
    parser.add_argument("--fraction", type=float, default=None, help="row sample of the data (default 1, quick 0.1)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch budget (default: the config's; quick 4)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--pbt-population", type=int, default=4, help="PBT members (Q = N/4, E = 1 epoch)")
    parser.add_argument("--only", nargs="*", default=None, help="method names to run (STL always runs)")
    parser.add_argument("--out", default=None, help="output path without suffix (default benchmarks/results/...)")
    parser.add_argument("--mt2st-sweep", action="store_true", help="also run more MT2ST settings (see mt2st_sweep)")
    parser.add_argument("--device", default="cpu", help="training device: cpu, cuda or auto")
    parser.add_argument("--fresh", action="store_true", help="ignore the run journal (journals/<out>.runs.jsonl) "
                        "and rerun all")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="a `model:` setting under every method, e.g. architecture=ft_transformer or "
                             "head_hidden=32 (YAML value; repeatable; a method's own model settings still apply)")
    parser.add_argument("--min-frequency", action="append", default=[], metavar="COLUMN=N",
                        help="a categorical feature's min_frequency over the config's, e.g. tailnum=30 (repeatable)")
    parser.add_argument("--training", action="append", default=[], metavar="FIELD=VALUE",
                        help="a `training:` setting under every method, e.g. batch_size=256 or lr=0.001 (YAML "
                             "value; repeatable; a method's own training settings still apply)")
    args = parser.parse_args(argv)

    from components.config.schema import load_config

    base = with_min_frequency(load_config(args.config), setting_overrides(args.min_frequency, "min-frequency"))
    fraction = args.fraction if args.fraction is not None else (0.1 if args.quick else 1.0)
    epochs = args.epochs or (4 if args.quick else base.training.epochs)
    out = Path(args.out) if args.out else RESULTS / f"mtl_methods{'_quick' if args.quick else ''}"
    torch.set_num_threads(args.threads)
    cfg = bench_config(base, epochs, args.threads, args.device)
    model_settings, training_settings = setting_overrides(args.model), setting_overrides(args.training, "training")
    if model_settings or training_settings:
        cfg = with_training(cfg, model=model_settings or None, **training_settings)
    train_df, val_df, test_df = load_windows(cfg, fraction)

    table = methods(cfg) | (mt2st_sweep(cfg) if args.mt2st_sweep else {})
    chosen = [m for m in table if args.only is None or m in args.only]
    runners: dict[str, Callable[[int, Path], RunResult]] = {
        "STL": lambda seed, work: run_stl(with_training(cfg, seed=seed), train_df, val_df, test_df, work)}
    for name in chosen:
        settings = copy.deepcopy(table[name])
        model = settings.pop("model", None)
        runners[name] = (lambda seed, work, s=settings, m=model:
                         run_mtl(with_training(cfg, model=m, seed=seed, **s), train_df, val_df, test_df, work))
    if args.only is None or "PBT-weights" in args.only:
        runners["PBT-weights"] = lambda seed, work: run_pbt(with_training(cfg, seed=seed), train_df, val_df,
                                                            test_df, population=args.pbt_population)
    lgbm_rounds = 150 if args.quick else 2000
    if args.only is None or "LightGBM" in args.only:
        runners["LightGBM"] = lambda seed, work: run_lightgbm(cfg, train_df, val_df, test_df, seed, args.threads,
                                                              rounds=lgbm_rounds)

    out.parent.mkdir(parents=True, exist_ok=True)
    journal_path = journal_file(out, "runs")
    if args.fresh:
        journal_path.unlink(missing_ok=True)
    journal = RunJournal(journal_path, config_key(args.config, base) | {"fraction": fraction, "epochs": epochs,
                                        "pbt_population": args.pbt_population, "lightgbm_rounds": lgbm_rounds,
                                        "device": args.device} | ({"model": model_settings} if model_settings else {})
                         | ({"training": training_settings} if training_settings else {}))
    console = Console(stderr=True)
    console.print(f"{len(train_df):,} train / {len(val_df):,} validation / {len(test_df):,} test rows, "
                  f"{epochs} epochs, {args.seeds} seeds, {len(runners)} methods")
    summaries: list[MethodSummary] = []
    resumed = sum((name, seed) in journal.done for name in runners for seed in range(args.seeds))
    t0 = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as bar, tempfile.TemporaryDirectory(prefix="mtl-bench-") as tmp:
        job = bar.add_task("runs", total=len(runners) * args.seeds)
        for name, runner in runners.items():
            summaries.append(seed_runs(name, args.seeds, journal,
                                       lambda seed, r=runner, n=name: r(seed, Path(tmp) / f"{n}-{seed}"), bar, job))
    total = time.perf_counter() - t0

    header = (results_header(f"MTL methods on `{Path(args.config).name}`", "mtl_methods.py", argv, args.threads,
                             args.device, fraction, (train_df, val_df, test_df), epochs)
              + f", seeds 0..{args.seeds - 1}. Test metrics are mean ± std over seeds. "
              f"Whole benchmark: {total / 60:.1f} min"
              + (f" ({resumed} runs taken from the journal `{journal_path.name}`)." if resumed else "."))
    text = markdown(cfg, summaries, header)
    beside(out, ".md").write_text(text + f"\n![primary metric vs training FLOPs]({out.name}.png)\n")
    plot(cfg, summaries, beside(out, ".png"), f"{cfg.data.name}: {cfg.primary_task.name} vs training compute")
    print(text)
    console.print(f"wrote {beside(out, '.md')} and {beside(out, '.png')}")


if __name__ == "__main__":
    main()
