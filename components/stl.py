"""Single-task learning (STL): the baseline every MTL table needs, one model per task through the same trainer."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.config import ProjectConfig, parse_config
from components.train import TrainResult, train


def single_task_config(cfg: ProjectConfig, task: str) -> ProjectConfig:
    """`cfg` with `task` as its only (and so primary) task, trained with plain EW and no MT2ST schedule."""
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw["tasks"] = [{**t, "primary": True} for t in raw["tasks"] if t["name"] == task]
    if not raw["tasks"]:
        raise ValueError(f"unknown task '{task}' (known: {[t.name for t in cfg.tasks]})")
    raw["training"]["strategy"] = {"name": "ew"}
    raw["training"].pop("mt2st", None)
    raw.pop("alerts", None)  # the policy may name the other tasks
    keep = {*cfg.features.names, task}
    for key in ("per_column_method", "per_column_threshold"):
        raw["monitoring"][key] = {k: v for k, v in raw["monitoring"][key].items() if k in keep}
    if "leakage" in raw:  # a kept leak of another task does not concern this one
        raw["leakage"]["allow_leaky"] = [a for a in raw["leakage"].get("allow_leaky", [])
                                         if a.get("task") in (None, task)]
    return parse_config(raw, f"<single-task {task}>")


def train_stl(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, out_dir: Path,
              progress: bool = True) -> dict[str, TrainResult]:
    """One model per task under `out_dir/<task>/`, each early-stopped on its own validation metric."""
    return {t.name: train(single_task_config(cfg, t.name), train_df, val_df, Path(out_dir) / t.name,
                          progress=progress) for t in cfg.tasks}
