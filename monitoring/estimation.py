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

So every estimate comes with its assumption and a check of it (`check_estimate`, an
`EstimateCheck` in the summary). The check cannot prove the assumption (that needs labels) but
says when the window contradicts it or leaves it unverifiable:

- **inputs outside the reference**: rows whose estimator inputs (CBPE: the model's probability;
  DLE: the numeric features and the prediction) fall outside the reference's central 99 %, beyond
  the reference's own share, on more than `monitoring.estimate_max_outside` of the window: the
  estimator extrapolates (a winter reference knows nothing of July's errors);
- **broken inputs**: a data check names a feature (monitoring/segments.py): every task's output
  reads it, so no estimate from it is worth more than the column;
- **the last labelled window**: how far the estimated relative change was from the realized one
  there (`estimate_error`, kept in the estimate log); beyond the task's alert tolerance, the
  estimate cannot decide an alert at that tolerance.

An estimate whose check fails does not count as "quality known" for the alert policy.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, cast

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.isotonic import IsotonicRegression

from components.config.schema import ProjectConfig, TaskSpec
from components.config.tasks import ClassLabels, kind_of
from components.data.features import TargetSpec
from components.data.tables import label_column
from components.training.metrics import relative_change


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


class Estimator:
    """One task's metric estimated without labels, fitted on the reference's labelled rows. Which estimator a
    task gets is its kind's (`TaskKind.estimator`, a key of `ESTIMATORS`); it reads the task's logged
    prediction through the kind (`TaskKind.logged_prediction`)."""

    method: ClassVar[str]  # "CBPE" or "DLE": names its assumption (ASSUMPTIONS)

    def __init__(self, cfg: ProjectConfig, task: TaskSpec) -> None:
        self.cfg, self.task, self.kind = cfg, task, kind_of(task)

    def fit(self, reference: pd.DataFrame, seed: int) -> Estimator:
        """Fit on `reference`, whose rows all have the task's label."""
        raise NotImplementedError

    def estimate(self, frame: pd.DataFrame) -> float:
        raise NotImplementedError

    def inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The estimator's numeric inputs by name (what the assumption check compares with the reference)."""
        return {self.task.name: self.kind.logged_prediction(self.task.name, frame)}

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[label_column(self.task.name)].to_numpy(np.float64)


class ProbabilityCBPE(Estimator):
    """CBPE on the probability of the positive class: ROC-AUC, accuracy or log loss in expectation over the
    labels the calibrated probabilities imply."""

    method = "CBPE"

    def fit(self, reference: pd.DataFrame, seed: int) -> Estimator:
        self.model = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
            self.kind.logged_prediction(self.task.name, reference), self.labels(reference))
        return self

    def estimate(self, frame: pd.DataFrame) -> float:
        t, metric = self.task, self.task.metric
        q = self.kind.logged_prediction(t.name, frame)
        p = np.clip(self.model.predict(q), 1e-6, 1 - 1e-6)
        if metric == "roc_auc":
            return expected_roc_auc(q, p)
        if metric == "accuracy":
            decided = q >= t.threshold
            return float(np.mean(np.where(decided, p, 1 - p)))
        qc = np.clip(q, 1e-12, 1 - 1e-12)
        return float(np.mean(-(p * np.log(qc) + (1 - p) * np.log(1 - qc))))  # log_loss


class ConfidenceCBPE(Estimator):
    """CBPE on the probability of the predicted class (class labels): expected accuracy from the calibrated
    confidence; the other metrics of class labels are not estimated."""

    method = "CBPE"

    def fit(self, reference: pd.DataFrame, seed: int) -> Estimator:
        kind = cast(ClassLabels, self.kind)
        target = TargetSpec(self.task.name, self.task.type, classes=kind.classes_in(self.task.name, reference.columns))
        index = kind.label_values(target, reference[label_column(self.task.name)])
        confidence, predicted = kind.logged_confidence(self.task.name, reference)
        self.model = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
            confidence, (predicted == index).astype(np.float64))
        return self

    def estimate(self, frame: pd.DataFrame) -> float:
        if self.task.metric != "accuracy":
            return math.nan
        return float(np.mean(self.model.predict(self.kind.logged_prediction(self.task.name, frame))))


MAX_CATEGORIES = 200  # per categorical input of DLE: the reference's most frequent values, the rest missing


class DLE(Estimator):
    """Direct loss estimation: a gradient-boosted regressor learns the absolute (MAE) or squared (RMSE) error
    from the features and the prediction."""

    method = "DLE"

    def inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        return {**{f.name: frame[f.name].to_numpy(np.float64) for f in self.cfg.features.numeric},
                **super().inputs(frame)}

    def _matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """Numeric features, categorical features as codes of the reference's top values (unknown:
        missing), and the task's prediction, as one float matrix."""
        columns = [frame[f.name].to_numpy(np.float64) for f in self.cfg.features.numeric]
        for name, values in self.codes.items():
            index = {v: i for i, v in enumerate(values)}
            columns.append(frame[name].astype("string").map(index).to_numpy(np.float64, na_value=np.nan))
        columns.append(self.kind.logged_prediction(self.task.name, frame))
        return np.column_stack(columns)

    def fit(self, reference: pd.DataFrame, seed: int) -> Estimator:
        err = self.labels(reference) - self.kind.logged_prediction(self.task.name, reference)
        self.codes = {f.name: list(reference[f.name].astype("string").value_counts().index[:MAX_CATEGORIES])
                      for f in self.cfg.features.categorical}
        n_numeric = len(self.cfg.features.numeric)
        categorical = [n_numeric + i for i in range(len(self.codes))]
        self.model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=seed,
                                                   categorical_features=categorical or None)
        # the mean error (MAE) or squared error (RMSE) given the inputs: a squared-error fit
        self.model.fit(self._matrix(reference), np.abs(err) if self.task.metric == "mae" else err**2)
        return self

    def estimate(self, frame: pd.DataFrame) -> float:
        loss = np.clip(self.model.predict(self._matrix(frame)), 0, None)
        return float(np.mean(loss)) if self.task.metric == "mae" else float(np.sqrt(np.mean(loss)))


ESTIMATORS: dict[str, type[Estimator]] = {"cbpe_probability": ProbabilityCBPE, "cbpe_confidence": ConfidenceCBPE,
                                          "dle": DLE}


def estimator_for(cfg: ProjectConfig, task: TaskSpec) -> Estimator:
    """The task's estimator, unfitted."""
    return ESTIMATORS[kind_of(task).estimator](cfg, task)


def fit_estimators(cfg: ProjectConfig, reference: pd.DataFrame, seed: int = 0) -> dict[str, Estimator]:
    """One estimator per task with labels in the reference (task -> estimator)."""
    return {t.name: estimator_for(cfg, t).fit(reference[reference[label_column(t.name)].notna()], seed)
            for t in cfg.tasks if label_column(t.name) in reference.columns}


def estimate_quality(cfg: ProjectConfig, reference: pd.DataFrame,
                     current: pd.DataFrame) -> tuple[dict[str, float], dict[str, float]]:
    """Task -> its metric estimated without labels (CBPE / DLE, see above), on `current` and on
    `reference` itself: the estimate is compared with the estimator's own value on the rows it was
    fitted on, so its in-sample optimism cancels out of the relative change.

    One OpenMP thread: the monitor shares its node with other jobs, and there the gradient-boosted
    fit's per-split barriers wait on descheduled threads (20k reference rows, 2 cores with two other jobs
    running: 2.3 s on one thread, stopped after 180 s on two; `python -m benchmarks.monitor_speed
    --quality-only`)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        estimators = fit_estimators(cfg, reference)
        return ({name: e.estimate(current) for name, e in estimators.items()},
                {name: e.estimate(reference) for name, e in estimators.items()})


# --- the estimate's assumption and its check ---------------------------------------------------

ASSUMPTIONS = {
    "CBPE": "P(label | the model's probability) is as on the reference: the model stays calibrated "
            "(covariate shift only, inside the reference's range of probabilities)",
    "DLE": "the model's error given the features and the prediction is as on the reference (covariate "
           "shift only, inside the reference's range of the inputs)",
}
CENTRAL = (0.005, 0.995)  # the reference's central 99 % of each estimator input


def method_of(task: TaskSpec) -> str:
    return ESTIMATORS[kind_of(task).estimator].method


def outside_reference(cfg: ProjectConfig, task: TaskSpec, reference: pd.DataFrame,
                      current: pd.DataFrame) -> tuple[float, list[str]]:
    """The share of the window's rows with an estimator input outside the reference's central 99 %,
    less the reference's own share; and the inputs outside on more than half of those rows' share."""
    estimator = estimator_for(cfg, task)
    ref, cur = estimator.inputs(reference), estimator.inputs(current)
    outside_ref, outside_cur, per_input = np.zeros(len(reference), bool), np.zeros(len(current), bool), {}
    for name, values in ref.items():
        finite = values[np.isfinite(values)]
        if len(finite) == 0:
            continue
        low, high = np.quantile(finite, CENTRAL)
        outside_ref |= (values < low) | (values > high)
        out = (cur[name] < low) | (cur[name] > high)
        outside_cur |= out
        per_input[name] = float(out.mean())
    excess = float(outside_cur.mean() - outside_ref.mean()) if len(current) else 0.0
    named = sorted((n for n, share in per_input.items() if share >= max(excess, 0) / 2 and share > 0),
                   key=lambda n: -per_input[n])
    return excess, named


@dataclass
class EstimateCheck:
    """A label-free estimate's assumption and what the window says about it."""

    method: str  # "CBPE" or "DLE"
    assumption: str
    outside_share: float  # rows with an input outside the reference's central 99 %, beyond the reference's share
    outside_inputs: list[str]  # the inputs outside most often
    broken_inputs: list[str]  # features a data check names
    last_error: float | None = None  # the last labelled window: estimated - realized relative change
    last_window: str | None = None
    doubts: list[str] = field(default_factory=list)  # why the estimate cannot be trusted here (empty: it can)

    @property
    def holds(self) -> bool:
        return not self.doubts

    def as_dict(self) -> dict:
        return {**asdict(self), "holds": self.holds}


def check_estimate(cfg: ProjectConfig, task: TaskSpec, reference: pd.DataFrame, current: pd.DataFrame,
                   broken: list[str], last: dict | None) -> EstimateCheck:
    """The checks of the module docstring for one task's estimate; `broken`: features the data checks
    name; `last`: the task's latest entry of the estimate log (`estimate_error`), if any."""
    method = method_of(task)
    share, named = outside_reference(cfg, task, reference, current)
    check = EstimateCheck(method, ASSUMPTIONS[method], share, named, sorted(set(broken)))
    limit = cfg.monitoring.estimate_max_outside
    if share > limit:
        check.doubts.append(f"{share:.0%} of the rows have inputs outside the reference's range "
                            f"({', '.join(named[:4])}; limit {limit:.0%}): the estimator extrapolates")
    if check.broken_inputs:
        check.doubts.append(f"its inputs include columns a data check flags: {', '.join(check.broken_inputs)}")
    if last is not None:
        check.last_error, check.last_window = float(last["error"]), str(last["window"])
        tolerance = cfg.alert_tolerance(task.name)
        if math.isfinite(check.last_error) and abs(check.last_error) > tolerance:
            check.doubts.append(f"on {check.last_window}, the last labelled window, the estimated change was "
                                f"{check.last_error:+.1%} off the realized one (tolerance {tolerance:.0%})")
    return check


def estimate_error(metric: str, estimated: float, estimated_reference: float, realized: float,
                   reference: float) -> dict[str, float]:
    """How far a label-free estimate was off once the labels arrived, on the scale the policy
    decides on: the estimated relative change (vs the estimator on its own reference) minus the
    realized relative change (vs the reference quality); + = the estimate was too optimistic."""
    estimated_change = relative_change(metric, estimated, estimated_reference)
    realized_change = relative_change(metric, realized, reference)
    return {"estimated": estimated, "realized": realized, "estimated_change": estimated_change,
            "realized_change": realized_change, "error": estimated_change - realized_change}


def last_errors(log: Path | None, model_version: str) -> dict[str, dict]:
    """Task -> the latest estimate-log entry of this model version."""
    if log is None or not Path(log).exists():
        return {}
    entries = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    return {e["task"]: e for e in entries if e["model_version"] == model_version}


def log_errors(log: Path, window: str, model_version: str, errors: dict[str, dict[str, float]]) -> None:
    """Append each task's realized-vs-estimated error of a labelled window to the estimate log (JSONL)."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with Path(log).open("a") as f:
        for task, e in errors.items():
            f.write(json.dumps({"window": window, "model_version": model_version, "task": task, **e}) + "\n")
