"""The pipeline steps as plain functions over paths.

Each takes the config as YAML text (what a kfp parameter carries) and reads and
writes files; the kfp wrappers in `pipelines/` only map artifacts to these paths.
Each step runs in a fresh process, so torch, ONNX and BentoML are imported only by
the steps that use them (importing all of them costs ~5 s per step).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from components.config.schema import ProjectConfig, config_from_yaml, config_to_yaml, only_reads, parse_config
from components.data.columns import check_columns
from components.data.tables import (
    build_partitions,
    partition_dir,
    partitions_for,
    read_window,
    sample_rows,
    split_assignment,
    with_labels,
)
from components.data.validate import report_to_dicts, validate_or_raise
from components.data.versioning import data_version, dvc_md5, ensure_dvc_repo, pull, track_files


def _cfg(config_yaml: str) -> ProjectConfig:
    return config_from_yaml(config_yaml, "<pipeline parameter config_yaml>")


# What each step reads of the config: a whole section ("training") or one field of one ("training.seed").
# The pipelines hand each step only these (`step_configs`), so an edit of anything else (an alert
# threshold, the monitoring settings) leaves the step's input, and so its kfp cache key, as it was.
# tests/test_pipeline_e2e.py records what every step reads while it runs and fails when this is not it.
STEP_READS: dict[str, tuple[str, ...]] = {
    "ingest": ("data", "features", "tasks", "training.seed"),
    "validate": ("data", "features", "tasks", "leakage", "training.seed"),
    "split": ("data",),
    "train": ("features", "tasks", "model", "training"),
    "export": ("data.time_column", "tasks", "registry.parity_rows", "registry.parity_atol", "training.seed"),
    "register": ("tasks", "registry"),
    "pbt": ("data.split", "data.time_column", "features", "tasks", "model", "training"),  # pipelines/pbt.py
}


def step_configs(config_yaml: str, steps: Iterable[str] = STEP_READS) -> dict[str, str]:
    """The config each of `steps` is given: only what it reads (`STEP_READS`), the rest at its defaults."""
    cfg = _cfg(config_yaml)
    return {step: config_to_yaml(only_reads(cfg, STEP_READS[step])) for step in steps}


def ingest(config_yaml: str, data_root: str, out_path: str, git_revision: str = "unknown") -> dict:
    """Read the DVC-tracked partitions covering all windows, derive labels, write one
    parquet. Returns lineage: the DVC md5 of every partition read and the git revision."""
    cfg = _cfg(config_yaml)
    check_columns(cfg, Path(data_root), "<pipeline parameter config_yaml>")
    w = cfg.data.windows
    bounds = (pd.Timestamp(w.train.start), pd.Timestamp(w.test.end)) if w else (None, None)
    df, lineage = _read_versioned(cfg, Path(data_root), *bounds)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out_path, index=False)
    return {**lineage, "rows": len(df), "git_revision": git_revision}


def _read_versioned(cfg: ProjectConfig, root: Path, start: pd.Timestamp | None,
                    end: pd.Timestamp | None) -> tuple[pd.DataFrame, dict]:
    """The DVC-tracked partitions covering [start, end) (every partition without bounds), pulled if
    absent, sampled, labelled; with the md5 of every partition read."""
    part_dir = partition_dir(cfg, root)
    paths = partitions_for(cfg, part_dir, start, end)
    absent = [p for p in paths if not p.exists() and Path(str(p) + ".dvc").exists()]
    if absent:
        pull(root, absent)
    df = read_window(cfg, part_dir, start, end)
    md5s = {str(p.relative_to(root)): dvc_md5(p) for p in paths}
    df = with_labels(sample_rows(df, cfg.data.sample_fraction, cfg.training.seed), cfg)
    return df, {"data_version": data_version(md5s), "partitions": md5s}


CONTINUAL_STEPS = ("validate", "train", "export", "register")  # the steps after `prepare_continual`
# what a continual run registers as its model's lineage, from `prepare_continual`'s output
CONTINUAL_LINEAGE = ("data_version", "partitions", "git_revision", "train_on", "replay_rows", "warm_start")


def prepare_continual(config_yaml: str, data_root: str, new_start: str, new_end: str, train_path: str,
                      validation_path: str, new_test_path: str, old_test_path: str,
                      git_revision: str = "unknown") -> dict:
    """The data of one continual retraining: the new window split by time into train /
    validation / new test, plus older rows as `retraining.train_on` says (a replay sample, the
    last months, or everything), plus the old held-out window (the config's test window, never
    trained on) on which the gate checks for forgetting. The new test rows come after every row
    the challenger trains on, and the champion predates the new window: the gate scores both
    models on rows neither has seen.
    Returns (under `config_yaml`) the config the run trains with (warm start for `warm_replay`), and under
    `step_configs` the parts of it each later step reads (`step_configs`)."""
    from components.artifacts.registry import champion, check_retirements

    cfg = _cfg(config_yaml)
    if cfg.data.split.method != "time":
        raise ValueError(f"continual retraining takes a new time window, and data.split is "
                         f"'{cfg.data.split.method}': rebuild the data (`mtlops data build`) and run the training "
                         "pipeline (`mtlops run`): its gate compares the challenger with the champion on the "
                         "test split")
    current = champion(cfg.registry.model_name)
    check_retirements(cfg, current)  # before any training: a task does not go by accident
    r, w, time = cfg.retraining, cfg.data.windows, cfg.data.time_column
    start, end = pd.Timestamp(new_start), pd.Timestamp(new_end)
    if start < pd.Timestamp(w.test.end):
        raise ValueError(f"the new window starts {start:%Y-%m-%d}, inside the held-out window "
                         f"[{w.test.start:%Y-%m-%d}, {w.test.end:%Y-%m-%d}) the gate uses for old data")
    df, lineage = _read_versioned(cfg, Path(data_root), pd.Timestamp(w.train.start), end)
    t = df[time]
    in_old_test = (t >= pd.Timestamp(w.test.start)) & (t < pd.Timestamp(w.test.end))
    history = df[(t < start) & ~in_old_test]
    if r.train_on == "warm_replay":
        history = history.sample(n=min(r.replay_rows, len(history)), random_state=cfg.training.seed)
    elif r.train_on == "sliding":
        history = history[history[time] >= end - pd.DateOffset(months=r.sliding_months)]
    new = df[(t >= start) & (t < end)].sort_values(time, kind="stable")
    a = int(len(new) * (1 - r.validation_fraction - r.new_test_fraction))
    b = int(len(new) * (1 - r.new_test_fraction))
    parts = {"train": pd.concat([history, new.iloc[:a]]).sort_values(time, kind="stable"),
             "validation": new.iloc[a:b], "new_test": new.iloc[b:], "old_test": df[in_old_test]}
    for name, path in (("train", train_path), ("validation", validation_path), ("new_test", new_test_path),
                       ("old_test", old_test_path)):
        if parts[name].empty:
            raise ValueError(f"continual retraining: the {name} part is empty (new window {new_start}..{new_end})")
        parts[name].to_parquet(path, index=False)
    return {**lineage, "git_revision": git_revision, "train_on": r.train_on,
            "replay_rows": len(history) if r.train_on == "warm_replay" else None,
            "rows": {k: len(v) for k, v in parts.items()},
            "warm_start": str(current.tag) if current and r.warm_start else None,
            "config_yaml": (run_config := config_to_yaml(continual_config(cfg, current.path if current else None))),
            "step_configs": step_configs(run_config, CONTINUAL_STEPS)}


def continual_config(cfg: ProjectConfig, champion_dir: str | None) -> ProjectConfig:
    """The config a retraining run trains with: warm start from the champion's folder, `retraining.epochs`.
    Validated again as a whole, because the cross-checks read the epoch budget it replaces."""
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw["training"].update(warm_start=champion_dir if cfg.retraining.warm_start else None,
                           epochs=cfg.retraining.epochs or cfg.training.epochs)
    return parse_config(raw, "<retraining: training.epochs from retraining.epochs>")


def validate(config_yaml: str, dataset_path: str, report_path: str) -> dict:
    """Raises `DataValidationError` (with the readable report) on any violation."""
    report = validate_or_raise(pd.read_parquet(dataset_path), _cfg(config_yaml))
    Path(report_path).write_text(json.dumps(report_to_dicts(report), indent=1))
    return {"checks": len(report)}


def split(config_yaml: str, dataset_path: str, train_path: str, validation_path: str, test_path: str) -> dict:
    """Rows to train / validation / test by `data.split`; a time split keeps time order, never shuffled across time."""
    cfg = _cfg(config_yaml)
    df = pd.read_parquet(dataset_path)
    side = split_assignment(df, cfg)
    counts = {}
    for name, path in (("train", train_path), ("validation", validation_path), ("test", test_path)):
        part = df[(side == name).to_numpy()].reset_index(drop=True)
        if part.empty:
            where = getattr(cfg.data.windows, name) if cfg.data.windows else cfg.data.split
            raise ValueError(f"the {name} split has no rows ({where})")
        if cfg.data.time_column:
            part = part.sort_values(cfg.data.time_column, kind="stable")
        part.to_parquet(path, index=False)
        counts[name] = len(part)
    return counts


def train_model(config_yaml: str, train_path: str, validation_path: str, model_dir: str,
                resume: bool = False) -> dict:
    from components.training.train import train

    r = train(_cfg(config_yaml), pd.read_parquet(train_path), pd.read_parquet(validation_path), Path(model_dir),
              resume=resume, progress=True)
    return {"best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "samples_per_s": r.samples_per_s,
            "wall_s": r.wall_s, "train_flops": r.train_flops, "validation": r.validation}


def evaluate_model(model_dir: str, train_path: str, test_path: str, metrics_path: str) -> dict:
    from components.training.evaluate import evaluate, save_metrics

    result = evaluate(Path(model_dir), pd.read_parquet(train_path), pd.read_parquet(test_path))
    save_metrics(result, Path(metrics_path))
    return result


def export_model(config_yaml: str, model_dir: str, train_path: str, test_path: str, onnx_dir: str) -> dict:
    """ONNX export + parity check (a parity failure raises and fails the pipeline), then the
    monitoring reference: a sample of the training window scored by the exported graph."""
    from components.artifacts.export import check_parity, export_onnx
    from components.artifacts.inference import OnnxModel
    from components.artifacts.predictions import write_reference

    cfg = _cfg(config_yaml)
    test = pd.read_parquet(test_path)
    export_onnx(Path(model_dir), Path(onnx_dir), test)
    report = check_parity(Path(model_dir), Path(onnx_dir), test, cfg.registry.parity_rows, cfg.registry.parity_atol)
    write_reference(OnnxModel(Path(onnx_dir)), pd.read_parquet(train_path), cfg)
    return {"rows": report.rows, "max_abs_diff": max(report.max_abs_diff.values())}


def register_model(config_yaml: str, onnx_dir: str, metrics_path: str, test_path: str, lineage: dict,
                   decision_path: str, old_test_path: str = "") -> dict:
    """Register as challenger, gate against the champion, write and return the decision.
    With `old_test_path` (continual retraining) the gate also checks the old window."""
    from components.artifacts.export import PARITY_FILE
    from components.artifacts.registry import promote_if_better, register

    cfg = _cfg(config_yaml)
    metrics = json.loads(Path(metrics_path).read_text())
    parity = json.loads((Path(onnx_dir) / PARITY_FILE).read_text())
    tag = register(Path(onnx_dir), cfg, {**metrics, "parity": parity}, lineage)
    old = pd.read_parquet(old_test_path) if old_test_path else None
    decision = promote_if_better(cfg, tag, pd.read_parquet(test_path), old)
    out = {"tag": tag, "promoted": decision.promote, "shadowed": decision.shadow, "reasons": decision.reasons,
           "champion_before": decision.champion_tag, "challenger": decision.challenger,
           "champion": decision.champion}
    Path(decision_path).write_text(json.dumps(out, indent=1))
    return out


def build_dataset(cfg: ProjectConfig, root: Path, track: bool = True) -> dict[str, str]:
    """Materialise the source into monthly partitions and version them with DVC
    (init once, one .dvc pointer per partition, push to the default remote).
    Returns {partition path: md5}."""
    paths = build_partitions(cfg, root, partition_dir(cfg, root))
    if not track:
        return {str(p.relative_to(root)): "" for p in paths}
    ensure_dvc_repo(root, cfg.data.dvc_remote)
    return track_files(root, paths)
