"""Data checks inside segments: a column broken for one origin airport (or carrier) only.

A whole-window drift test cannot see a fault confined to one segment of the traffic, and for a
seasonal column it must not try: hourly weather moves every month, at every airport together.
So each check here compares a segment with **the other segments of the same window** — what
moved in the segment beyond what moved everywhere else:

- **shift**, numeric feature: the other segments' move, reference -> current, read as an affine map
  `a * x + b` (ratio of their interquartile ranges, move of their median); the segment's current
  quantiles (5 % … 95 %) against its reference quantiles put through that map, mean absolute
  difference, in units of the feature's reference IQR (times `a` where the map stretches). A seasonal
  change moves every segment alike and so does a unit change upstream of all of them (both fit the
  map); °F -> °C at one airport moves that airport alone.
- **shift**, categorical feature: the change of the segment's shares over the reference's top
  values (+ "other") minus the other segments' change, as a total-variation distance.
- **nulls**: the segment's null share grew by more than the other segments' did.

The thresholds are effect sizes in the config (`monitoring.segment_shift`, `segment_share`,
`segment_null_share`), set above the largest scores measured on clean and real months of flights
(monitoring/README.md, "Data checks inside segments"). Segments with fewer than
`monitoring.segment_min_rows` rows in the reference or the window (or whose rest has fewer; for a
numeric shift, non-null values) are not judged: too few rows for quantiles to mean anything.

On the whole window: null surges (a column's null share grown by `monitoring.null_share`) and
duplicated records (a retried upload, a replayed log part: the share of rows repeating an earlier
row's features beyond the reference's own share).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from components.config.schema import ProjectConfig

QUANTILES = np.linspace(0.05, 0.95, 19)
OTHER = "(other)"


@dataclass(frozen=True)
class SegmentFinding:
    """One column that moved inside one segment against the other segments of the window, or (segment
    column and segment empty) whose null share surged in the whole window."""

    feature: str
    segment_column: str  # "" for a whole-window check
    segment: str
    check: str  # "shift" or "nulls"
    score: float  # how far past what the other segments did (units: see the module docstring)
    threshold: float

    def describe(self) -> str:
        if not self.segment_column:  # a whole-window check
            return f"{self.feature}: null share grew by {self.score:.2f} in the whole window (>= {self.threshold:.2f})"
        what = {"shift": "shifted against the other segments", "nulls": "null share grew against the other segments"}
        return (f"{self.feature} in {self.segment_column}={self.segment}: {what[self.check]} "
                f"({self.score:.2f} >= {self.threshold:.2f})")

    def as_dict(self) -> dict:
        return asdict(self)


def _text(col: pd.Series) -> pd.Series:
    return col.astype("string").astype(object).where(col.notna(), None)


def _quantiles(values: pd.Series, least: int) -> np.ndarray | None:
    x = values.dropna().to_numpy(np.float64)
    return np.quantile(x, QUANTILES) if len(x) >= least else None


def numeric_shift(ref_in: pd.Series, cur_in: pd.Series, ref_out: pd.Series, cur_out: pd.Series,
                  scale: float, least: int) -> float:
    """How far the segment moved beyond what the other segments' move predicts. The other segments'
    move is read as an affine map, reference -> current (`a * x + b`: the ratio of their interquartile
    ranges and the move of their median; the season's shift and stretch, or a unit change applied to
    every segment, which moves each segment by it too); the score is the mean over quantiles of |the
    segment's current quantile - the map of its reference quantile|, in units of `scale` (the feature's
    reference IQR; times `a` where the map stretches: a ×10 unit change everywhere scores as none). NaN where
    a side has fewer than `least` values (a mostly-null column such as wind_gust; an all-null one is the
    null check's case)."""
    parts = [_quantiles(x, least) for x in (ref_in, cur_in, ref_out, cur_out)]
    if any(q is None for q in parts):
        return math.nan
    before, after, rest_before, rest_after = parts
    middle = len(QUANTILES) // 2  # the median; QUANTILES[middle - 5], [middle + 5]: the quartiles
    spread_before, spread_after = (q[middle + 5] - q[middle - 5] for q in (rest_before, rest_after))
    a = spread_after / spread_before if spread_before > 0 else 1.0  # the others' stretch (1: no spread to read)
    b = rest_after[middle] - a * rest_before[middle]  # and shift, median to median
    return float(np.mean(np.abs(after - (a * before + b))) / (max(abs(a), 1.0) * scale))


def _scale(values: pd.Series) -> float:
    """The reference's interquartile range (std, then 1, where that is 0): the unit of a numeric shift."""
    x = values.dropna().to_numpy(np.float64)
    if len(x) == 0:
        return 1.0
    iqr = float(np.subtract(*np.quantile(x, [0.75, 0.25])))
    return iqr if iqr > 0 else (float(np.std(x)) or 1.0)


def _shares(values: pd.Series, top: list[str]) -> np.ndarray:
    text = _text(values).dropna()
    bucketed = text.where(text.isin(top), OTHER)
    counts = bucketed.value_counts().reindex([*top, OTHER], fill_value=0).to_numpy(np.float64)
    return counts / counts.sum() if counts.sum() else np.full(len(counts), np.nan)  # all null: the null check's


def categorical_shift(ref_in: pd.Series, cur_in: pd.Series, ref_out: pd.Series, cur_out: pd.Series,
                      top: list[str]) -> float:
    """Total variation of (the segment's change of shares - the other segments' change); NaN where a
    side has no values (all null: the null check's case)."""
    inside = _shares(cur_in, top) - _shares(ref_in, top)
    outside = _shares(cur_out, top) - _shares(ref_out, top)
    return float(0.5 * np.abs(inside - outside).sum())


def _null_growth(ref_in: pd.Series, cur_in: pd.Series, ref_out: pd.Series, cur_out: pd.Series) -> float:
    return float((cur_in.isna().mean() - ref_in.isna().mean()) - (cur_out.isna().mean() - ref_out.isna().mean()))


def judged_segments(cfg: ProjectConfig, reference: pd.DataFrame, current: pd.DataFrame,
                    column: str) -> list[str]:
    """The segment column's values with enough rows in both windows, inside and outside the segment."""
    least = cfg.monitoring.segment_min_rows
    ref_counts, cur_counts = _text(reference[column]).value_counts(), _text(current[column]).value_counts()
    return [str(v) for v, n in ref_counts.items()
            if n >= least and cur_counts.get(v, 0) >= least
            and len(reference) - n >= least and len(current) - cur_counts.get(v, 0) >= least]


def _worst_first(segments: list[str], score: Callable[[str, set[str]], float], limit: float) -> list[tuple[str, float]]:
    """Segments whose score passes `limit`, worst first, each scored against the segments not yet
    flagged: a broken segment leaves the rest it was part of, so it does not make the others look
    moved against it."""
    flagged: list[tuple[str, float]] = []
    while True:
        left = [v for v in segments if v not in {f for f, _ in flagged}]
        scores = {v: score(v, {f for f, _ in flagged}) for v in left}
        worst = max(scores, key=lambda v: -math.inf if math.isnan(scores[v]) else scores[v], default=None)
        if worst is None or not scores[worst] >= limit:
            return flagged
        flagged.append((worst, scores[worst]))


def _feature_findings(cfg: ProjectConfig, reference: pd.DataFrame, current: pd.DataFrame, column: str,
                      feature: str) -> list[SegmentFinding]:
    """One feature's findings inside the segments of one segment column (shift, then nulls)."""
    mon = cfg.monitoring
    ref_key, cur_key = _text(reference[column]), _text(current[column])
    r, c = reference[feature], current[feature]
    if feature in {f.name for f in cfg.features.numeric}:
        scale = _scale(r)

        def shift(inside: pd.Series, current_inside: pd.Series, rest: pd.Series, current_rest: pd.Series) -> float:
            return numeric_shift(inside, current_inside, rest, current_rest, scale, mon.segment_min_rows)
        limit = mon.segment_shift
    else:
        top = list(_text(r).value_counts().index[:mon.top_categories])

        def shift(inside: pd.Series, current_inside: pd.Series, rest: pd.Series, current_rest: pd.Series) -> float:
            return categorical_shift(inside, current_inside, rest, current_rest, top)
        limit = mon.segment_share

    def parts(segment: str, flagged: set[str]) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
        ref_rest, cur_rest = ~ref_key.isin([segment, *flagged]), ~cur_key.isin([segment, *flagged])
        return r[(ref_key == segment).to_numpy()], c[(cur_key == segment).to_numpy()], r[ref_rest], c[cur_rest]

    segments = judged_segments(cfg, reference, current, column)
    found = [SegmentFinding(feature, column, v, "shift", score, limit)
             for v, score in _worst_first(segments, lambda v, flagged: shift(*parts(v, flagged)), limit)]
    found += [SegmentFinding(feature, column, v, "nulls", score, mon.segment_null_share)
              for v, score in _worst_first(segments, lambda v, flagged: _null_growth(*parts(v, flagged)),
                                           mon.segment_null_share)]
    return found


def segment_findings(cfg: ProjectConfig, reference: pd.DataFrame, current: pd.DataFrame) -> list[SegmentFinding]:
    """Every feature's findings (shift or null share against the other segments of the same window past
    its threshold), features in the config's order. Per feature, the segment column where the break is
    sharpest is reported: an airport's broken column also shows in the carriers flying from it."""
    found = []
    for feature in cfg.features.names:
        by_column = [_feature_findings(cfg, reference, current, column, feature)
                     for column in cfg.monitoring.segments if column != feature]
        sharpest = max(by_column, key=lambda fs: max((f.score / f.threshold for f in fs), default=0), default=[])
        found += sharpest
    return found


def null_surges(cfg: ProjectConfig, reference: pd.DataFrame, current: pd.DataFrame) -> list[SegmentFinding]:
    """Features whose null share grew by `monitoring.null_share` or more over the whole window (a feed
    that stopped filling a column everywhere; segment_column and segment are empty)."""
    limit = cfg.monitoring.null_share
    growth = {f: float(current[f].isna().mean() - reference[f].isna().mean()) for f in cfg.features.names}
    return [SegmentFinding(f, "", "", "nulls", g, limit) for f, g in growth.items() if limit is not None and g >= limit]


def duplicate_share(cfg: ProjectConfig, frame: pd.DataFrame) -> float:
    """Share of rows whose features repeat an earlier row's."""
    return float(frame.duplicated(subset=cfg.features.names).mean()) if len(frame) else 0.0
