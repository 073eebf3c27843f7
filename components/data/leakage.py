"""Label leakage caught before training: every feature alone, and its null indicator, against every label.

On (a seeded sample of) the training split, each feature is scored as a one-feature predictor of each task's
label: its value (on the rows where it is present; a categorical as its out-of-fold mean label per value), and
whether it is null (when it ever is). Skill is in [0, 1]: 2·AUC − 1 for a binary label (symmetric, so a
feature that predicts "no" is as suspicious), the mean one-vs-rest 2·AUC − 1 for a multiclass label, the mean
2·AUC − 1 of "above class k" over the thresholds of an ordinal label (in the task's class order), |Spearman ρ|
for a regression label: the task's kind says which (`TaskKind.leakage_skill`, `leakage_targets`). A feature
leaks when its skill is near-perfect (`leakage.max_skill`) or far above every other feature's on the task
(`leakage.max_lead`), or when its null rows carry, almost purely, a label value that is rare overall
(`leakage.max_null_purity`); the run stops naming feature, task and score unless `leakage.allow_leaky` lists
it with a reason (data validation reports it: components/data/validate.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config.schema import ProjectConfig, TaskSpec
from components.config.tasks import kind_of
from components.data.tables import label_column

NULL_SUFFIX = " (null)"  # the null-indicator variant of a feature
UNSEEN_SUFFIX = " (null or unseen)"  # the same for `nulls: unknown`: null and out-of-vocabulary share an index


@dataclass(frozen=True)
class LeakScore:
    task: str
    feature: str  # the feature, or "<feature> (null)" for its null indicator
    skill: float
    lead: float  # skill minus the best skill of any other feature on the task
    null_purity: float  # null indicators: share of the minority label value on the null rows (else 0)
    leaks: bool
    allowed: str | None = None  # the allow_leaky reason that keeps it


def _auc_skill(x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score  # here: every pipeline step imports this module, few score leakage

    if len(np.unique(y)) < 2 or len(np.unique(x)) < 2:
        return 0.0
    return abs(2 * float(roc_auc_score(y, x)) - 1)


def _rank_correlation_skill(x: np.ndarray, y: np.ndarray) -> float:
    if len(y) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    rho = pd.Series(x).rank().corr(pd.Series(y).rank())
    return 0.0 if np.isnan(rho) else abs(float(rho))


SKILLS = {"auc": _auc_skill, "rank_correlation": _rank_correlation_skill}  # by TaskKind.leakage_skill


def _out_of_fold_means(values: pd.Series, target: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each row's value encoded by the mean target of that value in the other fold (the global
    mean for a value the other fold lacks): a high-cardinality feature cannot score by memorising."""
    out = np.empty(len(values), dtype=np.float64)
    prior = float(target.mean())
    frame = pd.DataFrame({"v": values.to_numpy(), "t": target})
    for k in (0, 1):
        means = frame[fold != k].groupby("v", observed=True)["t"].mean()
        out[fold == k] = frame.loc[fold == k, "v"].map(means).fillna(prior).to_numpy()
    return out


def _skill(task: TaskSpec, x: pd.Series, y: pd.Series, categorical: bool, fold: np.ndarray) -> float:
    """One feature's skill on one label, on the rows where both are present."""
    keep = (x.notna() & y.notna()).to_numpy()
    x, y, fold = x[keep], y[keep], fold[keep]
    if len(y) < 10:
        return 0.0
    kind = kind_of(task)
    skill_of = SKILLS[kind.leakage_skill]
    skills = [skill_of(_out_of_fold_means(x.astype(str), target, fold) if categorical else x.to_numpy(np.float64),
                       target) for target in kind.leakage_targets(task, y)]
    return float(np.mean(skills))


MIN_NULL_ROWS = 30  # fewer null rows say nothing about purity


def _null_purity(task: TaskSpec, indicator: pd.Series, y: pd.Series) -> float:
    """How purely the rows where `indicator` is set carry one label value that is a minority overall
    (0 when they do not, or are too few, or the task's labels take many values: a regression)."""
    if not kind_of(task).few_label_values:
        return 0.0
    on = y[indicator.astype(bool) & y.notna()].astype(str)
    if len(on) < MIN_NULL_ROWS:
        return 0.0
    top = on.value_counts(normalize=True)
    value, purity = top.index[0], float(top.iloc[0])
    return purity if float((y.dropna().astype(str) == value).mean()) < 0.5 else 0.0


def _model_sees_as_null(cfg: ProjectConfig, train: pd.DataFrame, name: str) -> pd.Series:
    """The rows a feature's null indicator covers as the model sees it: null, or for `nulls: unknown`
    null or outside the vocabulary (they share one embedding)."""
    x = train[name]
    spec = next((f for f in cfg.features.categorical if f.name == name), None)
    if spec is None or spec.nulls == "own":
        return x.isna()
    counts = x.dropna().astype(str).value_counts()
    counts = counts[counts >= spec.min_frequency]
    vocab = set(counts.index[: spec.max_categories] if spec.max_categories else counts.index)
    return x.isna() | ~x.astype(str).isin(vocab)


def leakage_scores(train: pd.DataFrame, cfg: ProjectConfig) -> list[LeakScore]:
    """Every (task, feature variant) scored, flagged and matched against `leakage.allow_leaky`."""
    spec = cfg.leakage
    if len(train) > spec.rows:
        train = train.sample(n=spec.rows, random_state=cfg.training.seed)
    train = train.reset_index(drop=True)
    fold = np.random.default_rng(cfg.training.seed).integers(0, 2, len(train))
    categorical = {f.name for f in cfg.features.categorical}
    unknown = {f.name for f in cfg.features.categorical if f.nulls == "unknown"}
    null_rows = {name: _model_sees_as_null(cfg, train, name) for name in cfg.features.names}
    out = []
    for task in cfg.tasks:
        y = train[label_column(task.name)]
        skills: dict[tuple[str, str], tuple[float, float]] = {}  # (feature, variant) -> (skill, null purity)
        for name in cfg.features.names:
            skills[(name, name)] = (_skill(task, train[name], y, name in categorical, fold), 0.0)
            nulls = null_rows[name]
            if nulls.any():
                variant = name + (UNSEEN_SUFFIX if name in unknown else NULL_SUFFIX)
                skills[(name, variant)] = (_skill(task, nulls.astype(np.float64), y, False, fold),
                                           _null_purity(task, nulls, y))
        for (feature, variant), (skill, purity) in skills.items():
            others = [s for (f, _), (s, _) in skills.items() if f != feature]
            lead = skill - max(others, default=0.0)
            leaks = skill >= spec.max_skill or lead >= spec.max_lead or purity >= spec.max_null_purity
            reason = next((a.reason for a in spec.allow_leaky if a.feature == feature and a.task in (None, task.name)),
                          None)
            out.append(LeakScore(task.name, variant, round(skill, 4), round(lead, 4), round(purity, 4), leaks,
                                 reason if leaks else None))
    return out
