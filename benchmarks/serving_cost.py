"""What one multi-head model costs to serve against the tuned LightGBM alternative: one booster per task.

Trains the config's default multi-head network (`configs/flights.yaml` as it is) and exports it to the ONNX graph
`mtlops serve` runs; trains one LightGBM booster per task with each task's tuned setting from the tuning journal
(`benchmarks/results/journals/tune_methods.optuna.jsonl`, studies `LightGBM/<task>`; the untuned setting where a
study is missing). Then, in one process and one thread each, in alternating turns, it times what a service does per
request from the same JSON records, batch 1, 64 and 1024:
  - the graph: `RecordEncoder.encode` (what `/predict` runs) and one `session.run` for every task;
  - the boosters: the same records to LightGBM's matrix (numeric values, a category's code by dict lookup: the
    cheapest encoding a booster service could use; checked equal to LightGBM's own pandas path) and one
    `predict` per task, each on the trees up to its early-stopping round.
Also each one's June test metrics (one seed; the 5-seed comparison is benchmarks/results/tune_methods.md), size
on disk and parameters / trees. Prints the tables and writes `benchmarks/results/serving_cost.md`.

    .venv/bin/python -m benchmarks.serving_cost --quick     # 10% rows, 150 rounds, 0.3 s a cell: ~30 s
    .venv/bin/python -m benchmarks.serving_cost             # all rows, the config's epochs, 2000 rounds
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.common import (  # the sibling benchmark: data windows, the boosters, the test metrics
    LGBM_PARAMS,
    RESULTS,
    ROOT,
    LightGBMModels,
    beside,
    fit_lightgbm,
    load_windows,
    machine,
    test_metrics,
    with_training,
)
from components.artifacts.export import export_onnx
from components.artifacts.inference import ONNX_FILE, OnnxModel, onnx_session
from components.config.schema import load_config
from components.data.features import FIRST_VALUE_INDEX, OOV_INDEX, SPEC_FILE, FeatureSpec
from components.training.train import load_trained, train
from serving.client import to_records

BATCHES = (1, 64, 1024)
TUNING_JOURNAL = RESULTS / "journals" / "tune_methods.optuna.jsonl"


class BoosterRecordEncoder:
    """Records (mappings of plain Python values, None for null) to the float matrix the boosters predict on, in
    NumPy and dict lookups only, like the graph's `RecordEncoder`: a numeric value as it is (null as missing), a
    categorical value as its vocabulary code (`LightGBMModels.frame`: null and rare or unseen values have codes of
    their own)."""

    def __init__(self, models: LightGBMModels) -> None:
        self.names = models.feature_names
        self.lookups = {v.name: {value: float(FIRST_VALUE_INDEX + i) for i, value in enumerate(v.values)}
                        for v in models.spec.categorical}
        self.null_codes = {v.name: float(v.null_index) for v in models.spec.categorical}

    def encode(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        out = np.empty((len(records), len(self.names)), dtype=np.float64)
        for j, name in enumerate(self.names):
            lookup = self.lookups.get(name)
            if lookup is None:
                out[:, j] = np.array([np.nan if r[name] is None else r[name] for r in records], dtype=np.float64)
            else:
                null = self.null_codes[name]
                out[:, j] = [null if r[name] is None else lookup.get(str(r[name]), float(OOV_INDEX)) for r in records]
        return out


def tuned_booster_params(tasks: list[str], journal: Path) -> dict[str, dict[str, float | int]]:
    """Each task's best LightGBM setting from the tuning journal; a task without a study gets the untuned one."""
    import optuna

    from benchmarks.tune_methods import LIGHTGBM_SPACE, with_values

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not journal.exists():
        return {}
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    return {task: with_values(LGBM_PARAMS, LIGHTGBM_SPACE,
                              optuna.load_study(study_name=f"LightGBM/{task}", storage=storage).best_params)
            for task in tasks if f"LightGBM/{task}" in names}


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    """Median µs of one call, over calls made for at least `seconds` (and at least 5) after one warm-up call."""
    fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def interleaved(cells: dict[str, Callable[[], object]], seconds: float, turns: int = 3) -> dict[str, float]:
    """Each cell's per-call µs: the median of `turns` turns taken alternately, so drifting load hits all alike."""
    seen: dict[str, list[float]] = {name: [] for name in cells}
    for _ in range(turns):
        for name, fn in cells.items():
            seen[name].append(per_call_us(fn, seconds))
    return {name: statistics.median(v) for name, v in seen.items()}


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "flights.yaml"))
    parser.add_argument("--quick", action="store_true", help="10%% rows, 150 rounds, 0.3 s a cell")
    parser.add_argument("--fraction", type=float, default=None, help="row sample of the data (default 1, quick 0.1)")
    parser.add_argument("--epochs", type=int, default=None, help="the network's epoch budget (default the config's)")
    parser.add_argument("--rounds", type=int, default=None, help="LightGBM's round cap (default 2000, quick 150)")
    parser.add_argument("--seconds", type=float, default=None, help="timing per cell and turn (default 1, quick 0.3)")
    parser.add_argument("--threads", type=int, default=2, help="training threads (timing is always one thread)")
    parser.add_argument("--journal", default=str(TUNING_JOURNAL), help="Optuna journal with the LightGBM studies")
    parser.add_argument("--out", default=None, help="output path without suffix (default benchmarks/results/...)")
    args = parser.parse_args(argv)

    fraction = args.fraction if args.fraction is not None else (0.1 if args.quick else 1.0)
    rounds = args.rounds or (150 if args.quick else 2000)
    seconds = args.seconds or (0.3 if args.quick else 1.0)
    base = load_config(args.config)
    epochs = args.epochs or base.training.epochs
    out = Path(args.out) if args.out else RESULTS / f"serving_cost{'_quick' if args.quick else ''}"
    torch.set_num_threads(args.threads)
    cfg = with_training(base, epochs=epochs, threads=args.threads, device="cpu")
    console = Console(stderr=True)
    train_df, val_df, test_df = load_windows(cfg, fraction)
    tasks = [t.name for t in cfg.tasks]
    params = tuned_booster_params(tasks, Path(args.journal))
    console.print(f"{len(train_df):,} train / {len(val_df):,} validation / {len(test_df):,} test rows; boosters: "
                  f"tuned setting for {sorted(params) or 'no task'}, untuned for the rest")

    with tempfile.TemporaryDirectory(prefix="mtlops-serving-cost-") as tmp:
        work = Path(tmp)
        with console.status("training the multi-head network and exporting it to ONNX"):
            train(cfg, train_df, val_df, work / "model", progress=False)
            export_onnx(work / "model", work / "onnx", train_df)
        net_metrics = test_metrics(work / "model", cfg, test_df)
        model, _, _ = load_trained(work / "model")
        net_params = sum(p.numel() for p in model.parameters())
        onnx_bytes = (work / "onnx" / ONNX_FILE).stat().st_size
        spec = FeatureSpec.load(work / "onnx" / SPEC_FILE)
        session, encoder = onnx_session(work / "onnx" / ONNX_FILE, threads=1), spec.record_encoder()
        with console.status(f"training {len(tasks)} LightGBM boosters"):
            boosters = fit_lightgbm(cfg, train_df, val_df, seed=cfg.training.seed, threads=args.threads,
                                    rounds=rounds, params=params)
        gbm_metrics = boosters.metrics(cfg.tasks, test_df)
        trees = {task: b.best_iteration * b.num_model_per_iteration()  # type: ignore[attr-defined]
                 for task, b in boosters.boosters.items()}
        gbm_bytes = sum(len(b.model_to_string(num_iteration=b.best_iteration).encode())  # type: ignore[attr-defined]
                        for b in boosters.boosters.values())
        booster_encoder = BoosterRecordEncoder(boosters)

        def predict_boosters(x: np.ndarray) -> list[np.ndarray]:
            return [b.predict(x, raw_score=True, num_iteration=b.best_iteration, num_threads=1)  # type: ignore[attr-defined]
                    for b in boosters.boosters.values()]

        records = to_records(test_df, cfg.features.names)
        check = test_df.head(max(BATCHES))
        fast, own = predict_boosters(booster_encoder.encode(records[: len(check)])), boosters.raw_scores(check)
        for task, got in zip(boosters.boosters, fast, strict=True):  # the timed path answers what LightGBM's own does
            np.testing.assert_allclose(got, own[task], rtol=1e-9, atol=1e-9, err_msg=task)
        numeric, categorical, _ = encoder.encode(records[: len(check)])
        graph = dict(zip([o.name for o in session.get_outputs()],
                         session.run(None, {"numeric": numeric, "categorical": categorical}), strict=True))
        for task, want in OnnxModel(work / "onnx", threads=1).predict_frame(check).items():
            np.testing.assert_allclose(graph[task], want, rtol=1e-5, atol=1e-5, err_msg=task)

        results: dict[int, dict[str, float]] = {}
        for batch in BATCHES:
            rows = records[:batch]
            feeds = dict(zip(("numeric", "categorical"), encoder.encode(rows)[:2], strict=True))
            x = booster_encoder.encode(rows)
            with console.status(f"timing batch {batch}"):
                results[batch] = interleaved({
                    "graph encode": lambda r=rows: encoder.encode(r),
                    "graph model": lambda f=feeds: session.run(None, f),
                    "boosters encode": lambda r=rows: booster_encoder.encode(r),
                    "boosters model": lambda a=x: predict_boosters(a),
                }, seconds)

    k = len(tasks)
    cost = Table(title=f"µs per request, one thread: one ONNX graph ({k} tasks) vs {k} LightGBM boosters")
    for col in ("batch", "graph encode", "graph model", "graph total", "boosters encode", "boosters model",
                "boosters total", "graph / boosters", f"≤ 1/{k}"):
        cost.add_column(col, justify="right")
    lines = ["| batch | graph encode µs | graph model µs | **graph total µs** | boosters encode µs | boosters model µs "
             f"| **boosters total µs** | graph / boosters | ≤ 1/{k} |", "|---" * 9 + "|"]
    for batch, r in results.items():
        graph_total, gbm_total = r["graph encode"] + r["graph model"], r["boosters encode"] + r["boosters model"]
        ratio = graph_total / gbm_total
        cells = [f"{batch:,}", f"{r['graph encode']:,.0f}", f"{r['graph model']:,.0f}", f"{graph_total:,.0f}",
                 f"{r['boosters encode']:,.0f}", f"{r['boosters model']:,.0f}", f"{gbm_total:,.0f}", f"{ratio:.2f}",
                 "yes" if ratio <= 1 / k else "no"]
        cost.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    quality = Table(title="the two models: June test metrics (one seed), size")
    heads = [f"{t.name} {t.metric}" for t in cfg.tasks] + ["on disk", "parameters / trees"]
    for col in ["model", *heads]:
        quality.add_column(col, justify="right")
    rows_q = [
        ["one multi-head network (ONNX)", *(f"{net_metrics[t]:.4f}" for t in tasks), f"{onnx_bytes / 1024:,.0f} KiB",
         f"{net_params:,} parameters"],
        [f"{k} LightGBM boosters", *(f"{gbm_metrics[t]:.4f}" for t in tasks), f"{gbm_bytes / 1024:,.0f} KiB",
         f"{sum(trees.values()):,} trees ({', '.join(f'{t} {n:,}' for t, n in trees.items())})"],
    ]
    for row in rows_q:
        quality.add_row(*row)
    console.print(cost, quality)

    command = ("python -m benchmarks.serving_cost " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    text = (f"# Serving cost: one multi-head ONNX graph vs one LightGBM booster per task\n\n"
            f"Command: `{command}`  \nMachine: {machine(1, 'cpu')}  \n"
            f"Data: `{Path(args.config).name}`, {fraction:.0%} row sample; {len(train_df):,} train / {len(val_df):,} "
            f"validation / {len(test_df):,} test rows. The network: the config as it is, {epochs} epochs max. The "
            f"boosters: {rounds} rounds max, early-stopped on the validation window, tuned setting of "
            f"{', '.join(sorted(params)) or 'no task'} from `{Path(args.journal).name}`. Timing: one thread each, "
            f"median per call of 3 alternating turns of ≥ {seconds:g} s, from the same JSON-ready records.\n\n"
            + "\n".join(lines) + "\n\n| model | " + " | ".join(heads) + " |\n" + "|---" * (len(heads) + 1) + "|\n"
            + "\n".join("| " + " | ".join(r) + " |" for r in rows_q) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    beside(out, ".md").write_text(text)
    console.print(f"wrote {beside(out, '.md')}")
    return results


if __name__ == "__main__":
    main()
