"""Per-task quality estimated before the labels arrive.

The two methods NannyML implements, written here against the prediction-log format (NannyML 0.13
co-installs with pandas < 3 and Evidently 0.7, but it would downgrade the LightGBM the benchmarks
pin (4.7 -> 4.5) and pull in xgboost, the CUDA NCCL wheel, cloud-storage clients and a telemetry
client; the two estimators are ~100 lines):

- **CBPE** (confidence-based performance estimation), binary tasks: the model's probabilities are
  calibrated on the reference's labels (isotonic regression), then the metric is computed in
  expectation over the labels those calibrated probabilities imply. ROC-AUC: the expected share of
  (positive, negative) pairs ranked right, `sum_i p_i * sum_{j ranked below i} (1 - p_j)` over
  `sum p * sum (1 - p)`; accuracy: the expected share of correct decisions at the task's threshold;
  log loss: the cross-entropy of the model's probabilities against the calibrated ones.
  Multiclass and ordinal: expected accuracy from the calibrated confidence in the predicted class.
- **DLE** (direct loss estimation), regression: a gradient-boosted regressor learns the model's
  absolute (MAE) or squared (RMSE) error on the reference from the features and the prediction;
  its mean on the current window is the estimate.

Both assume the relation between features and labels holds (covariate shift only): a concept
change — labels flipped with the features unchanged — is invisible to them and shows only in the
realized quality, once labels arrive. The reference is a sample of the training window, so the
estimators learn in-sample errors: estimates lean optimistic by the model's train/held-out gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.isotonic import IsotonicRegression

from components.config import ProjectConfig, TaskSpec
from components.data import label_column
from components.features import FeatureSpec, TargetSpec
from components.tasks import ClassLabels, kind_of


def _proba(task: TaskSpec, frame: pd.DataFrame) -> np.ndarray:
    return frame[f"{task.name}__proba"].to_numpy(np.float64)


def _confidence(task: TaskSpec, classes: list[str], frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A class-label task's logged probability of its predicted class, and that class's index."""
    kind = cast(ClassLabels, kind_of(task))
    probs = kind.logged_probabilities(TargetSpec(task.name, task.type, classes=classes), frame)
    predicted = kind.predicted(probs)
    return probs[np.arange(len(probs)), predicted], predicted


def expected_roc_auc(score: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC in expectation over labels drawn independently with probabilities `p`, rows ranked
    by `score` (ties count half): expected right-ranked (positive, negative) pairs of two rows over
    the expected number of such pairs."""
    ranks = rankdata(score)  # average ranks: ties get the mean
    order = np.argsort(ranks, kind="stable")
    r, pp = ranks[order], p[order]
    neg_below = np.cumsum(1 - pp) - (1 - pp)  # negatives strictly earlier in the order
    # ties: for rows of equal rank, half of the tied negatives count
    tie_groups = pd.Series(1 - pp).groupby(r).transform("sum").to_numpy()
    tie_before = pd.Series(1 - pp).groupby(r).cumsum().to_numpy() - (1 - pp)
    below = neg_below - tie_before + 0.5 * (tie_groups - (1 - pp))
    denominator = pp.sum() * (1 - pp).sum() - (pp * (1 - pp)).sum()  # pairs of two different rows
    return float((pp * below).sum() / denominator) if denominator > 0 else math.nan


@dataclass
class TaskEstimator:
    task: TaskSpec
    model: Any  # IsotonicRegression (binary, multiclass) or HistGradientBoostingRegressor (regression)
    classes: list[str]  # multiclass: in the log's column order
    codes: dict[str, list[str]]  # regression: categorical feature -> the values coded, in order

    def estimate(self, cfg: ProjectConfig, frame: pd.DataFrame) -> float:
        t, metric = self.task, self.task.metric
        if t.type == "binary":
            q = _proba(t, frame)
            p = np.clip(self.model.predict(q), 1e-6, 1 - 1e-6)
            if metric == "roc_auc":
                return expected_roc_auc(q, p)
            if metric == "accuracy":
                decided = q >= t.threshold
                return float(np.mean(np.where(decided, p, 1 - p)))
            qc = np.clip(q, 1e-12, 1 - 1e-12)
            return float(np.mean(-(p * np.log(qc) + (1 - p) * np.log(1 - qc))))  # log_loss
        if kind_of(t).class_labels:
            if metric != "accuracy":
                return math.nan  # the other metrics of class labels are not estimated
            return float(np.mean(self.model.predict(_confidence(t, self.classes, frame)[0])))
        loss = np.clip(self.model.predict(_regression_inputs(cfg, t, frame, self.codes)), 0, None)
        return float(np.mean(loss)) if metric == "mae" else float(np.sqrt(np.mean(loss)))


MAX_CATEGORIES = 200  # per categorical input of DLE: the reference's most frequent values, the rest missing


def _category_codes(cfg: ProjectConfig, reference: pd.DataFrame) -> dict[str, list[str]]:
    return {f.name: list(reference[f.name].astype("string").value_counts().index[:MAX_CATEGORIES])
            for f in cfg.features.categorical}


def _regression_inputs(cfg: ProjectConfig, task: TaskSpec, frame: pd.DataFrame,
                       codes: dict[str, list[str]]) -> np.ndarray:
    """Numeric features, categorical features as codes of the reference's top values (unknown:
    missing), and the task's prediction, as one float matrix."""
    columns = [frame[f.name].to_numpy(np.float64) for f in cfg.features.numeric]
    for name, values in codes.items():
        index = {v: i for i, v in enumerate(values)}
        columns.append(frame[name].astype("string").map(index).to_numpy(np.float64, na_value=np.nan))
    columns.append(frame[f"{task.name}__value"].to_numpy(np.float64))
    return np.column_stack(columns)


def fit_estimators(cfg: ProjectConfig, reference: pd.DataFrame, seed: int = 0) -> dict[str, TaskEstimator]:
    """One estimator per task with labels in the reference (task -> estimator)."""
    out = {}
    for t in cfg.tasks:
        col = label_column(t.name)
        if col not in reference.columns:
            continue
        ref = reference[reference[col].notna()]
        y = ref[col].to_numpy(np.float64)
        if t.type == "binary":
            model: Any = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(_proba(t, ref), y)
            out[t.name] = TaskEstimator(t, model, [], {})
        elif kind_of(t).class_labels:
            classes = kind_of(t).classes_in(t.name, ref.columns)
            target = TargetSpec(t.name, t.type, classes=classes)
            index = FeatureSpec([], [], [target]).transform_targets(ref)[t.name].astype(np.float64)
            confidence, predicted = _confidence(t, classes, ref)
            correct = (predicted == index).astype(np.float64)
            model = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(confidence, correct)
            out[t.name] = TaskEstimator(t, model, classes, {})
        else:
            err = y - ref[f"{t.name}__value"].to_numpy(np.float64)
            codes = _category_codes(cfg, ref)
            n_numeric = len(cfg.features.numeric)
            categorical = [n_numeric + i for i in range(len(codes))]
            model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=seed,
                                                  categorical_features=categorical or None)
            # the mean error (MAE) or squared error (RMSE) given the inputs: a squared-error fit
            model.fit(_regression_inputs(cfg, t, ref, codes), np.abs(err) if t.metric == "mae" else err**2)
            out[t.name] = TaskEstimator(t, model, [], codes)
    return out


def estimate_quality(cfg: ProjectConfig, reference: pd.DataFrame,
                     current: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """Task -> its metric estimated without labels (CBPE / DLE, see above), on `current` and on
    `reference` itself: the estimate is compared with the estimator's own value on the rows it was
    fitted on, so its in-sample optimism cancels out of the relative change.

    One OpenMP thread: the monitor shares its node with other jobs, and there the gradient-boosted
    fit's per-split barriers wait on descheduled threads (20k reference rows, 2 cores with two other jobs
    running: 2.3 s on one thread, stopped after 180 s on two; `python benchmarks/monitoring.py
    --quality-only`)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        estimators = fit_estimators(cfg, reference)
        return ({name: e.estimate(cfg, current) for name, e in estimators.items()},
                {name: e.estimate(cfg, reference) for name, e in estimators.items()})
