"""Single-task learning (STL): the baseline every MTL table needs, one model per task through the same trainer."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.config.schema import ProjectConfig, parse_config
from components.training.train import TrainResult, train


def single_task_config(cfg: ProjectConfig, task: str) -> ProjectConfig:
    """`cfg` with `task` as its only (and so primary) task, trained with plain EW and no MT2ST schedule."""
    if task not in [t.name for t in cfg.tasks]:
        raise ValueError(f"unknown task '{task}' (known: {[t.name for t in cfg.tasks]})")
    raw = cfg.for_tasks([task]).model_dump(mode="json", exclude_none=True)
    raw["training"]["strategy"] = {"name": "ew"}
    raw["training"].pop("mt2st", None)
    return parse_config(raw, f"<single-task {task}>")


def train_stl(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, out_dir: Path,
              progress: bool = True) -> dict[str, TrainResult]:
    """One model per task under `out_dir/<task>/`, each early-stopped on its own validation metric."""
    return {t.name: train(single_task_config(cfg, t.name), train_df, val_df, Path(out_dir) / t.name,
                          progress=progress) for t in cfg.tasks}
