"""What tailnum's null indicator is worth on flights' `cancelled` task, and what removing it costs.

A missing tail number in nycflights13 means the flight was cancelled (P(cancelled | no tailnum) = 1.0 in
the training window): the aircraft is recorded only for flights that flew or were cancelled late. The
leakage check flags it (components/data/leakage.py, null purity). This trains the reference config with
tailnum's nulls as their own category (`nulls: own`, the leak), as unknown (`nulls: unknown`: they share the
out-of-vocabulary embedding with rare aircraft) and without tailnum at all, for several seeds, and scores the
June test window: every task's metric, and `cancelled` ROC-AUC on the rows with a tail number (where the
null indicator cannot help).

    .venv/bin/python -m benchmarks.tailnum_null --seeds 3        # writes benchmarks/results/tailnum_null.md
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

from components.config.schema import ProjectConfig, load_config, parse_config
from components.config.tasks import sigmoid
from components.data.tables import label_column, load_source, select_window, with_labels
from components.training.train import evaluate_tensors, load_trained, predict_raw, to_tensors, train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tailnum_null.md"
LABELS = {"own": "`nulls: own` (null has its own embedding)", "unknown": "`nulls: unknown` (null = out of vocabulary)",
          "dropped": "not a feature"}


def with_tailnum_nulls(cfg: ProjectConfig, nulls: str, seed: int) -> ProjectConfig:
    """The config with tailnum's `nulls` set, or without the tailnum feature (`dropped`)."""
    raw = copy.deepcopy(cfg.model_dump(mode="json", exclude_none=True))
    categorical = raw["features"]["categorical"]
    raw["features"]["categorical"] = [f for f in categorical if nulls != "dropped" or f["name"] != "tailnum"]
    for f in raw["features"]["categorical"]:
        if f["name"] == "tailnum":
            f["nulls"] = nulls
    raw["training"]["seed"] = seed
    raw["leakage"]["allow_leaky"] = []
    return parse_config(raw, f"<tailnum nulls: {nulls}>")


def run(cfg: ProjectConfig, frames: dict[str, pd.DataFrame], out: Path) -> dict[str, float]:
    train(cfg, frames["train"], frames["validation"], out, progress=False)
    model, spec, _ = load_trained(out)
    test = frames["test"]
    data = to_tensors(test, spec)
    scores = {t: m[cfg.task(t).metric] for t, m in evaluate_tensors(model, data, spec.targets).items()}
    p = sigmoid(predict_raw(model, data)["cancelled"].astype(np.float64))
    y = test[label_column("cancelled")].to_numpy()
    has_tail = test["tailnum"].notna().to_numpy()
    scores["cancelled_with_tailnum"] = float(roc_auc_score(y[has_tail], p[has_tail]))
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "flights.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    base = load_config(args.config)
    df = with_labels(load_source(base.data), with_tailnum_nulls(base, "own", 0))
    w = base.data.windows
    frames = {name: select_window(df, base.data.time_column, getattr(w, name).start, getattr(w, name).end)
              for name in ("train", "validation", "test")}
    columns = [*(t.name for t in base.tasks), "cancelled_with_tailnum"]
    results: dict[str, list[dict[str, float]]] = {"own": [], "unknown": [], "dropped": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for nulls in results:
                cfg = with_tailnum_nulls(base, nulls, seed)
                results[nulls].append(run(cfg, frames, Path(tmp) / f"{nulls}-{seed}"))
                print(f"seed {seed} nulls {nulls}: {results[nulls][-1]}", file=sys.stderr)
    table = Table(title=f"flights, test window June 2013, {args.seeds} seeds (mean ± std)")
    table.add_column("tailnum")
    for c in columns:
        table.add_column(c, justify="right")
    lines = ["| tailnum | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for nulls, runs in results.items():
        cells = [f"{np.mean([r[c] for r in runs]):.4f} ± {np.std([r[c] for r in runs]):.4f}" for c in columns]
        table.add_row(LABELS[nulls], *cells)
        lines.append(f"| {LABELS[nulls]} | " + " | ".join(cells) + " |")
    Console().print(table)
    metrics = ", ".join(f"{t.name}: {t.metric}" for t in base.tasks)
    header = [f"# tailnum's null indicator on flights ({args.seeds} seeds)", "",
              f"`python -m benchmarks.tailnum_null --seeds {args.seeds}` on {platform.machine()}, "
              f"{os.cpu_count()} CPUs. Metrics: {metrics}; `cancelled_with_tailnum`: cancelled ROC-AUC on "
              "the test rows that have a tail number.", ""]
    args.out.write_text("\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
