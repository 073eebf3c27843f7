"""Data validation against expectations derived from the config: schema, dtypes,
ranges, null shares and label presence. A violation stops the run with a report
that names the column and what was wrong."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
from pandas.api import types as ptypes

from components.config.schema import ProjectConfig
from components.config.tasks import kind_of
from components.data.leakage import leakage_scores
from components.data.tables import label_column, split_assignment


@dataclass(frozen=True)
class Check:
    check: str
    column: str
    ok: bool
    detail: str


class DataValidationError(ValueError):
    def __init__(self, report: list[Check]) -> None:
        self.report = report
        super().__init__(format_report(report, only_failures=True))


def format_report(report: list[Check], only_failures: bool = False) -> str:
    rows = [c for c in report if not (only_failures and c.ok)]
    failed = sum(not c.ok for c in report)
    lines = [f"data validation: {failed} of {len(report)} checks failed"]
    lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.check:<11} {c.column:<24} {c.detail}" for c in rows]
    return "\n".join(lines)


def validate_frame(df: pd.DataFrame, cfg: ProjectConfig) -> list[Check]:
    report: list[Check] = []

    def add(check: str, column: str, ok: bool, detail: str) -> None:
        report.append(Check(check, column, bool(ok), detail))

    add("rows", "<table>", len(df) > 0, f"{len(df):,} rows")
    tcol = cfg.data.time_column
    if tcol and tcol not in df.columns:
        add("schema", tcol, False, "time column missing")
    elif tcol:
        add("dtype", tcol, ptypes.is_datetime64_any_dtype(df[tcol]), f"{df[tcol].dtype} (expected datetime)")
        add("nulls", tcol, df[tcol].notna().all(), f"{df[tcol].isna().sum():,} nulls (none allowed)")
    scol = cfg.data.split_column
    if scol and scol not in df.columns:
        add("schema", scol, False, f"split column missing (split '{cfg.data.split.method}')")
    elif scol:
        add("nulls", scol, df[scol].notna().all(), f"{df[scol].isna().sum():,} nulls (none allowed: "
            f"split '{cfg.data.split.method}' hashes it)")

    for f in cfg.features.numeric:
        if f.name not in df.columns:
            add("schema", f.name, False, "numeric feature column missing")
            continue
        s = df[f.name]
        is_num = ptypes.is_numeric_dtype(s) and not ptypes.is_bool_dtype(s)
        add("dtype", f.name, is_num, f"{s.dtype} (expected a number)")
        if not is_num:
            continue
        _null_check(add, f.name, s, f.allow_null, f.max_null_share)
        lo, hi = f.min, f.max
        if lo is not None or hi is not None:
            bad = ((s < lo) if lo is not None else False) | ((s > hi) if hi is not None else False)
            n_bad = int(bad.sum())
            add("range", f.name, n_bad == 0,
                f"{n_bad:,} values outside [{lo}, {hi}] (observed {s.min()} .. {s.max()})")
        if f.integer:
            fractional = int((s.dropna() % 1 != 0).sum())
            add("integer", f.name, fractional == 0, f"{fractional:,} values not whole numbers")

    for f in cfg.features.categorical:
        if f.name not in df.columns:
            add("schema", f.name, False, "categorical feature column missing")
            continue
        s = df[f.name]
        ok = ptypes.is_object_dtype(s) or ptypes.is_string_dtype(s) or ptypes.is_integer_dtype(s) \
            or isinstance(s.dtype, pd.CategoricalDtype)
        add("dtype", f.name, ok, f"{s.dtype} (expected string, category or integer)")
        _null_check(add, f.name, s, f.allow_null, f.max_null_share)

    for t in cfg.tasks:
        col = label_column(t.name)
        if col not in df.columns:
            add("label", t.name, False, "label column missing")
            continue
        y = df[col].dropna()
        distinct = y.nunique()
        need = kind_of(t).min_distinct_labels
        add("label", t.name, len(y) > 0 and distinct >= need,
            f"{len(y):,} labelled rows ({len(y) / max(len(df), 1):.1%}), {distinct} distinct values (need >= {need})")
    if all(c.ok for c in report):  # scored only on data that has every column, typed as declared
        report += leakage_checks(df, cfg)
    return report


def leakage_checks(df: pd.DataFrame, cfg: ProjectConfig) -> list[Check]:
    """Per task, the best single feature on the training split (ok unless it leaks), and one failed
    check per leaking feature that `leakage.allow_leaky` does not keep."""
    scores = leakage_scores(df[(split_assignment(df, cfg) == "train").to_numpy()], cfg)
    checks = []
    for task in cfg.tasks:
        mine = sorted((s for s in scores if s.task == task.name), key=lambda s: -s.skill)
        for s in mine:
            if s.leaks or s is mine[0]:
                kept = f"; allowed: {s.allowed}" if s.allowed else ""
                purity = f", null rows {s.null_purity:.1%} one class" if s.null_purity else ""
                checks.append(Check("leakage", s.feature, not s.leaks or s.allowed is not None,
                                    f"-> {s.task}: skill {s.skill:.3f} alone, {s.lead:+.3f} vs the next-best "
                                    f"feature{purity} (max {cfg.leakage.max_skill}, lead {cfg.leakage.max_lead}, "
                                    f"null purity {cfg.leakage.max_null_purity}){kept}"))
    return checks


def _null_check(add, name: str, s: pd.Series, allow_null: bool, max_share: float) -> None:  # type: ignore[no-untyped-def]
    share = float(s.isna().mean()) if len(s) else 0.0
    if allow_null:
        add("nulls", name, share <= max_share, f"{share:.2%} null (max {max_share:.0%})")
    else:
        add("nulls", name, share == 0.0, f"{share:.2%} null (none allowed)")


def validate_or_raise(df: pd.DataFrame, cfg: ProjectConfig) -> list[Check]:
    report = validate_frame(df, cfg)
    if not all(c.ok for c in report):
        raise DataValidationError(report)
    return report


def report_to_dicts(report: list[Check]) -> list[dict]:
    return [asdict(c) for c in report]
