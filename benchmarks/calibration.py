"""Each classification head's log loss with and without temperature scaling, beside its trivial baseline's.

For each config given, the network trains twice on its train split (the config as it is, `training.calibration`
set to `none` and to `temperature`, the same seed), and every binary and multiclass head is scored on the test
split: the gated metric (which scaling leaves alone) and the log loss, against the trivial model's (the
training split's class frequencies). Writes `benchmarks/results/calibration.md`. Run from the repository root:

    nice .venv/bin/python -m benchmarks.calibration                                   # every shipped config
    .venv/bin/python -m benchmarks.calibration --config configs/txhousing.yaml --seeds 1
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import RESULTS, ROOT, machine, with_training
from components.config.schema import load_config
from components.data.tables import load_source, sample_rows, split_assignment, with_labels
from components.training.calibration import CALIBRATED_TYPES, load_temperatures
from components.training.evaluate import evaluate
from components.training.train import train

CONFIGS = ("flights", "txhousing", "diamonds")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", default=None, help="config path (repeatable; default: all "
                        "shipped configs)")
    parser.add_argument("--fraction", type=float, default=1.0, help="row sample of the data")
    parser.add_argument("--epochs", type=int, default=None, help="epoch budget (default the config's)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "calibration.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = args.config or [str(ROOT / "configs" / f"{name}.yaml") for name in CONFIGS]
    lines = ["| config | task | gated metric | uncalibrated | calibrated | log loss uncalibrated | log loss calibrated "
             "| log loss trivial | temperature |", "|---" * 9 + "|"]
    for path in paths:
        base = load_config(path)
        df = with_labels(sample_rows(load_source(base.data), args.fraction, seed=0), base)
        side = split_assignment(df, base)
        train_df, val_df, test_df = (df[side == name] for name in ("train", "validation", "test"))
        scores: dict[str, list[dict]] = {"none": [], "temperature": []}
        temperatures: list[dict[str, float]] = []
        for seed in range(args.seeds):
            for calibration in scores:
                cfg = with_training(base, epochs=args.epochs or base.training.epochs, threads=args.threads,
                                    device="cpu", seed=seed, calibration=calibration)
                with tempfile.TemporaryDirectory(prefix="mtlops-calibration-") as tmp:
                    train(cfg, train_df, val_df, Path(tmp), progress=False)
                    scores[calibration].append(evaluate(Path(tmp), train_df, test_df))
                    if calibration == "temperature":
                        temperatures.append(load_temperatures(Path(tmp)))
        for task in (t for t in base.tasks if t.type in CALIBRATED_TYPES):
            def mean(calibration: str, part: str, metric: str, name: str = task.name,
                     runs: dict[str, list[dict]] = scores) -> float:
                return statistics.fmean(s[part][name][metric] for s in runs[calibration])

            t = statistics.fmean(x[task.name] for x in temperatures)
            lines.append(f"| {Path(path).name} | {task.name} | {task.metric} | {mean('none', 'test', task.metric):.4f} "
                         f"| {mean('temperature', 'test', task.metric):.4f} | {mean('none', 'test', 'log_loss'):.4f} "
                         f"| **{mean('temperature', 'test', 'log_loss'):.4f}** | "
                         f"{mean('none', 'baseline', 'log_loss'):.4f} | {t:.3f} |")
    command = ("python -m benchmarks.calibration " + shlex.join(argv if argv is not None else sys.argv[1:])).strip()
    text = (f"# Temperature scaling: log loss on the test split, beside the trivial baseline's\n\nCommand: "
            f"`{command}`  \nMachine: {machine(args.threads, 'cpu')}  \nData: {args.fraction:.0%} row sample, each "
            f"config's own splits and epoch budget, seeds 0..{args.seeds - 1} (means). The same network trained "
            f"with `training.calibration: none` and `temperature`; the trivial model predicts the training "
            f"split's class frequencies.\n\n" + "\n".join(lines) + "\n")
    Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
