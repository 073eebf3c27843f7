"""What each task type means, in one place: the losses, metrics and label transforms that fit it (with the
defaults), how its label is fitted and encoded, the width of its head, its loss, its metrics and trivial baseline,
how its raw outputs read to a user (prediction columns, the service's answer, and back from logged columns for
monitoring), how the leakage check scores a feature on its label, and which label-free estimator monitoring fits.
Every other module asks the task's `TaskKind` (`kind_of(target)`) instead of comparing its type
(tests/test_tasks.py fails on such a comparison anywhere else).

Prediction columns, one group per task:

- binary:     `<task>__proba` (float), `<task>__label` (0/1 at the task's threshold)
- multiclass: `<task>__label` (class name), `<task>__proba__<class>` (float per class)
- ordinal:    `<task>__label` (class name), `<task>__proba__<class>` (float per class)
- regression: `<task>__value` (original units)

The monitored column of a task is the one whose drift monitoring tracks.

Torch and scikit-learn are imported inside the methods that need them: config validation imports this module,
and loading a config must stay light (`mtlops serve`, `monitor` and every kfp step do it).

Adding a task type: a `TaskKind` subclass here, its name in `TaskType` and one line in `TASK_KINDS`; its
metrics go in `METRIC_DIRECTIONS`. `tests/test_tasks.py` runs every kind through the same checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

TaskType = Literal["binary", "multiclass", "ordinal", "regression"]

# metric -> higher is better
METRIC_DIRECTIONS: dict[str, bool] = {
    "roc_auc": True, "log_loss": False, "accuracy": True, "macro_f1": True, "mae": False, "rmse": False,
    "class_mae": False, "quadratic_kappa": True,
}


class Target(Protocol):
    """A fitted task (`components.data.features.TargetSpec`), as the task kinds read it."""

    name: str
    type: str
    classes: list[str]
    mean: float
    std: float
    threshold: float
    transform: str


class LabelledTask(Protocol):
    """A configured task (`components.config.schema.TaskSpec`), as the task kinds read it."""

    name: str
    type: str
    classes: list[str] | None
    threshold: float
    transform: str

    @property
    def label(self) -> Any: ...


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float64), -50, 50)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def proba_column(task: str, cls: str | None = None) -> str:
    """The probability column of a binary task, or of one class of a multiclass / ordinal task."""
    return f"{task}__proba" if cls is None else f"{task}__proba__{cls}"


def label_output_column(task: str) -> str:
    """The predicted label (0/1, or the class name)."""
    return f"{task}__label"


def value_column(task: str) -> str:
    """A regression task's predicted value, in original units."""
    return f"{task}__value"


class TaskKind:
    """One task type. Raw outputs are what the head computes (`raw`, [n] or [n, width]); the ONNX graph outputs
    them times `output_scale` plus `output_shift` (regression in original units, everything else unchanged)."""

    name: ClassVar[str]
    losses: ClassVar[tuple[str, ...]]  # the first is the default
    metrics: ClassVar[tuple[str, ...]]  # the first is the default
    monitored: ClassVar[str]  # suffix of the monitored prediction column
    monitored_is_categorical: ClassVar[bool] = False
    class_labels: ClassVar[bool] = False  # labels are class names (else numbers)
    min_distinct_labels: ClassVar[int] = 2  # a training window needs at least this many distinct labels
    label_ops: ClassVar[tuple[str, ...] | None] = None  # the label derivations it accepts (None: any)
    transforms: ClassVar[tuple[str, ...]] = ("standardize",)  # the label transforms it accepts (the first: default)
    # the leakage check (components/data/leakage.py): a feature's skill on the label is 2·AUC − 1 ("auc") or
    # |Spearman ρ| ("rank_correlation") against each of `leakage_targets`; null purity reads labels that take a few
    # values
    leakage_skill: ClassVar[Literal["auc", "rank_correlation"]] = "auc"
    few_label_values: ClassVar[bool] = True
    estimator: ClassVar[str]  # the label-free quality estimator of its metric (monitoring/estimation.py ESTIMATORS)

    @property
    def article(self) -> str:
        """'a binary', 'an ordinal': for messages."""
        return f"{'an' if self.name[0] in 'aeiou' else 'a'} {self.name}"

    @property
    def default_loss(self) -> str:
        return self.losses[0]

    @property
    def default_metric(self) -> str:
        return self.metrics[0]

    # --- config and fitting ----------------------------------------------------------

    def check(self, task: LabelledTask) -> None:
        """Raise ValueError where the task's settings do not fit the type (besides loss and metric)."""
        if self.label_ops is not None and task.label.op not in self.label_ops:
            raise ValueError(f"{self.article} task needs op {' or '.join(repr(o) for o in self.label_ops)}")
        if task.transform not in self.transforms:
            takes = [k.name for k in TASK_KINDS.values() if task.transform in k.transforms]
            raise ValueError(f"'transform' applies to {' and '.join(takes)} tasks, not {self.name}")

    def fit(self, task: LabelledTask, y: pd.Series) -> dict[str, Any]:
        """The fitted fields of the task's `TargetSpec` (besides name and type), from its training labels."""
        return {}

    def encode(self, target: Target, y: pd.Series) -> np.ndarray:
        """Labels as the float32 the loss reads, NaN where missing."""
        return y.astype("float64").to_numpy().astype(np.float32)

    def width(self, n_classes: int) -> int:
        """Columns of the task's raw head output."""
        return 1

    def settings(self, target: Target) -> dict[str, Any]:
        """What a client needs to read the task's answers (the service's `/model`)."""
        return {}

    # --- training --------------------------------------------------------------------

    def loss(self, name: str, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-row loss `name` (one of `losses`); `y` holds zeros where the label is missing (masked later)."""
        raise NotImplementedError

    def output_scale(self, target: Target) -> tuple[float, float]:
        return 1.0, 0.0

    def output_expm1(self, target: Target) -> bool:
        """Whether the ONNX graph applies exp(x) - 1 after the scale (a target trained on log(1 + y))."""
        return False

    def to_raw(self, target: Target, output: np.ndarray) -> np.ndarray:
        """An ONNX output back to the raw head output (the export's parity check compares on the head's scale)."""
        scale, shift = self.output_scale(target)
        return (output - shift) / scale

    def to_units(self, target: Target, raw: np.ndarray) -> np.ndarray:
        """A raw head output, or an encoded label, as the ONNX graph outputs it: what every metric reads."""
        return raw

    def label_values(self, target: Target, labels: pd.Series) -> np.ndarray:
        """A label column as the metrics read it, beside `to_units` outputs (a class index, 0/1; a value)."""
        return self.encode(target, labels).astype(np.float64)

    # --- quality ---------------------------------------------------------------------

    def scores(self, target: Target, raw: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Every metric in `metrics` on labelled rows; `raw` and `y` as `to_units` and `label_values` give them."""
        raise NotImplementedError

    def resampled(self, target: Target, metric: str, raw: np.ndarray, y: np.ndarray,
                  counts: np.ndarray) -> np.ndarray:
        """`metric` on each bootstrap resample of the labelled rows: `counts[d, i]` is how often resample
        `d` drew row `i`. A kind whose metric is a weighted sum over rows overrides this with one matrix
        product; this is the metric called once per resample."""
        rows = np.arange(len(y))
        return np.array([self.scores(target, raw[np.repeat(rows, c)], y[np.repeat(rows, c)]).get(metric, np.nan)
                         for c in counts])

    def baseline(self, target: Target, y_train: np.ndarray, n: int) -> np.ndarray:
        """A trivial model's raw outputs for `n` rows, from the labelled training rows."""
        raise NotImplementedError

    # --- what the outputs mean -------------------------------------------------------

    def block(self, stacked_block: np.ndarray) -> np.ndarray:
        """The task's columns of the stacked head outputs as its named ONNX output."""
        return stacked_block[:, 0]

    def columns(self, target: Target, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Prediction-log columns of the task."""
        raise NotImplementedError

    def answers(self, target: Target, raw: np.ndarray) -> list[dict[str, Any]]:
        """The service's answer for the task, one dict per record."""
        raise NotImplementedError

    def classes_in(self, task: str, columns: Iterable[str]) -> list[str]:
        """The classes whose columns a logged frame holds, in its order (none for a type without classes)."""
        return []

    def from_columns(self, target: Target, frame: pd.DataFrame) -> np.ndarray:
        """Logged prediction columns back to raw outputs."""
        raise NotImplementedError

    def extra_columns(self, task: str, columns: Iterable[str]) -> list[str]:
        """Logged prediction columns besides the monitored one that quality monitoring reads."""
        return []

    def monitored_column(self, task: str) -> str:
        return f"{task}__{self.monitored}"

    def logged_prediction(self, task: str, frame: pd.DataFrame) -> np.ndarray:
        """One logged number per row that label-free quality estimation reads (its score or input)."""
        raise NotImplementedError

    # --- the leakage check -----------------------------------------------------------

    def leakage_targets(self, task: LabelledTask, y: pd.Series) -> list[np.ndarray]:
        """The present labels as the numeric targets a feature's skill is scored against (the skill is the mean
        over them)."""
        return [y.to_numpy(np.float64)]


class Binary(TaskKind):
    name = "binary"
    losses = ("bce",)
    metrics = ("roc_auc", "log_loss", "accuracy")
    monitored = "proba"
    label_ops = ("identity", "gt", "ge", "lt", "le", "eq", "in", "not_in", "between", "not", "is_null")
    estimator = "cbpe_probability"

    def fit(self, task: LabelledTask, y: pd.Series) -> dict[str, Any]:
        return {"threshold": task.threshold}

    def settings(self, target: Target) -> dict[str, Any]:
        return {"threshold": target.threshold}

    def loss(self, name: str, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(pred, y, reduction="none")

    def scores(self, target: Target, raw: np.ndarray, y: np.ndarray) -> dict[str, float]:
        from sklearn import metrics as skm

        p = sigmoid(raw.astype(np.float64))
        both = len(np.unique(y)) == 2
        return {"roc_auc": float(skm.roc_auc_score(y, p)) if both else float("nan"),
                "log_loss": float(skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
                "accuracy": float(np.mean((p >= target.threshold) == (y == 1)))}

    def resampled(self, target: Target, metric: str, raw: np.ndarray, y: np.ndarray,
                  counts: np.ndarray) -> np.ndarray:
        if metric != "roc_auc":
            return super().resampled(target, metric, raw, y, counts)
        # ROC-AUC with weights: the chance that a positive outranks a negative, ties counting half,
        # from the positives' and negatives' weights per distinct score (sorted once for all resamples)
        p = sigmoid(raw.astype(np.float64))
        order = np.argsort(p, kind="stable")
        ranked = p[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        weights = counts[:, order].astype(np.float64)
        positive = y[order] == 1
        pos = np.add.reduceat(weights * positive, starts, axis=1)
        neg = np.add.reduceat(weights * ~positive, starts, axis=1)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        outranked = (pos * (np.cumsum(neg, axis=1) - 0.5 * neg)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((n_pos > 0) & (n_neg > 0), outranked / (n_pos * n_neg), np.nan)

    def baseline(self, target: Target, y_train: np.ndarray, n: int) -> np.ndarray:
        p = np.clip(y_train.mean() if len(y_train) else 0.5, 1e-6, 1 - 1e-6)
        return np.full(n, np.log(p / (1 - p)))

    def columns(self, target: Target, raw: np.ndarray) -> dict[str, np.ndarray]:
        p = sigmoid(raw)
        label = (p >= target.threshold).astype(np.int64)
        return {proba_column(target.name): p, label_output_column(target.name): label}

    def answers(self, target: Target, raw: np.ndarray) -> list[dict[str, Any]]:
        return [{"probability": p, "label": int(p >= target.threshold)} for p in sigmoid(raw).tolist()]

    def from_columns(self, target: Target, frame: pd.DataFrame) -> np.ndarray:
        p = np.clip(frame[proba_column(target.name)].to_numpy(np.float64), 1e-12, 1 - 1e-12)
        return np.log(p / (1 - p))

    def logged_prediction(self, task: str, frame: pd.DataFrame) -> np.ndarray:
        """The logged probability of the positive class."""
        return frame[proba_column(task)].to_numpy(np.float64)


class ClassLabels(TaskKind):
    """A type whose labels are class names: from the label column as-is (in the order of `classes`, or sorted)
    or from `bins` (in the bins' order)."""

    class_labels = True
    monitored = "label"
    monitored_is_categorical = True
    label_ops = ("identity", "bins")
    estimator = "cbpe_confidence"

    def fit(self, task: LabelledTask, y: pd.Series) -> dict[str, Any]:
        classes = list(task.classes) if task.classes else sorted(y.dropna().astype(str).unique().tolist())
        if task.label.op == "bins" and not task.classes:
            classes = list(task.label.names or [str(i) for i in range(len(task.label.edges or []) + 1)])
        return {"classes": classes}

    def settings(self, target: Target) -> dict[str, Any]:
        return {"classes": target.classes}

    def encode(self, target: Target, y: pd.Series) -> np.ndarray:
        lookup = {c: float(i) for i, c in enumerate(target.classes)}
        return y.dropna().astype(str).map(lookup).reindex(y.index).to_numpy(np.float32)

    def block(self, stacked_block: np.ndarray) -> np.ndarray:
        return stacked_block if stacked_block.shape[1] > 1 else stacked_block[:, 0]

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """[n, classes] class probabilities from the raw outputs."""
        raise NotImplementedError

    def predicted(self, p: np.ndarray) -> np.ndarray:
        """The predicted class index per row from its probabilities."""
        return p.argmax(axis=1)

    def columns(self, target: Target, raw: np.ndarray) -> dict[str, np.ndarray]:
        p = self.probabilities(raw)
        cols = {label_output_column(target.name): np.asarray(target.classes, dtype=object)[self.predicted(p)]}
        return cols | {proba_column(target.name, c): p[:, i] for i, c in enumerate(target.classes)}

    def answers(self, target: Target, raw: np.ndarray) -> list[dict[str, Any]]:
        p = self.probabilities(raw)
        return [{"label": target.classes[i], "probabilities": dict(zip(target.classes, row, strict=True))}
                for i, row in zip(self.predicted(p).tolist(), p.tolist(), strict=True)]

    def classes_in(self, task: str, columns: Iterable[str]) -> list[str]:
        prefix = proba_column(task, "")
        return [c.removeprefix(prefix) for c in columns if c.startswith(prefix)]

    def logged_probabilities(self, target: Target, frame: pd.DataFrame) -> np.ndarray:
        return frame[[proba_column(target.name, c) for c in target.classes]].to_numpy(np.float64)

    def extra_columns(self, task: str, columns: Iterable[str]) -> list[str]:
        return [proba_column(task, c) for c in self.classes_in(task, columns)]

    def logged_confidence(self, task: str, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The logged probability of each row's predicted class, and that class's index in the log's order."""
        probs = frame[self.extra_columns(task, frame.columns)].to_numpy(np.float64)
        predicted = self.predicted(probs)
        return probs[np.arange(len(probs)), predicted], predicted

    def logged_prediction(self, task: str, frame: pd.DataFrame) -> np.ndarray:
        """The logged probability of the predicted class."""
        return self.logged_confidence(task, frame)[0]


class Multiclass(ClassLabels):
    name = "multiclass"
    losses = ("cross_entropy",)
    metrics = ("macro_f1", "log_loss", "accuracy")

    def width(self, n_classes: int) -> int:
        return n_classes

    def leakage_targets(self, task: LabelledTask, y: pd.Series) -> list[np.ndarray]:
        """One-vs-rest: whether the label is each class."""
        classes = y.astype(str)
        return [(classes == c).to_numpy(np.float64) for c in classes.unique()]

    def loss(self, name: str, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(pred, y.long(), reduction="none")

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        return softmax(raw)

    def scores(self, target: Target, raw: np.ndarray, y: np.ndarray) -> dict[str, float]:
        from sklearn import metrics as skm

        p = softmax(raw.astype(np.float64))
        yi, pred, labels = y.astype(int), p.argmax(axis=1), list(range(len(target.classes)))
        return {"accuracy": float(np.mean(pred == yi)),
                "macro_f1": float(skm.f1_score(yi, pred, average="macro", labels=labels, zero_division=0)),
                "log_loss": float(skm.log_loss(yi, np.clip(p, 1e-7, 1), labels=labels))}

    def baseline(self, target: Target, y_train: np.ndarray, n: int) -> np.ndarray:
        counts = np.bincount(y_train.astype(int), minlength=len(target.classes)) + 1e-6
        return np.tile(np.log(counts / counts.sum()), (n, 1))

    def from_columns(self, target: Target, frame: pd.DataFrame) -> np.ndarray:
        return np.log(np.clip(self.logged_probabilities(target, frame), 1e-12, 1))


class Ordinal(ClassLabels):
    """Ordered classes (e.g. price bands) as K-1 cumulative logits: output k is logit P(y > class k), trained
    with one binary cross-entropy per threshold (the cumulative-link view of ordinal regression). The
    thresholds are separate logits, so their probabilities are made non-increasing before reading them
    (P(y > k+1) <= P(y > k)); the predicted class is the distribution's median, and a miss by one class costs
    less than a miss by two (`class_mae`, `quadratic_kappa`)."""

    name = "ordinal"
    losses = ("cumulative_bce",)
    metrics = ("class_mae", "accuracy", "quadratic_kappa")

    def check(self, task: LabelledTask) -> None:
        super().check(task)
        if task.label.op == "identity" and not task.classes:
            raise ValueError("an ordinal task with op 'identity' needs 'classes', in order")

    def width(self, n_classes: int) -> int:
        return max(n_classes - 1, 1)

    def leakage_targets(self, task: LabelledTask, y: pd.Series) -> list[np.ndarray]:
        """Whether the label is above each class but the last, in the task's order: the thresholds the head
        predicts (a feature that ranks the rows in the class order has skill on every one)."""
        classes = self.fit(task, y)["classes"]
        position = y.astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy(np.float64)
        return [(position > k).astype(np.float64) for k in range(len(classes) - 1)]

    def loss(self, name: str, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        pred = pred if pred.dim() == 2 else pred.unsqueeze(1)
        above = (y.unsqueeze(1) > torch.arange(pred.shape[1], device=y.device)).to(pred.dtype)
        return F.binary_cross_entropy_with_logits(pred, above, reduction="none").mean(dim=1)

    def cumulative(self, raw: np.ndarray) -> np.ndarray:
        """[n, K-1] P(y > k), non-increasing in k."""
        above = sigmoid(raw if raw.ndim == 2 else raw[:, None])
        return np.minimum.accumulate(above, axis=1)

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        above = self.cumulative(raw)
        ones, zeros = np.ones((len(above), 1)), np.zeros((len(above), 1))
        return -np.diff(np.concatenate([ones, above, zeros], axis=1), axis=1)

    def predicted(self, p: np.ndarray) -> np.ndarray:
        # the median class: how many thresholds the row is more likely above than below
        return (1.0 - np.cumsum(p, axis=1)[:, :-1] > 0.5).sum(axis=1)

    def scores(self, target: Target, raw: np.ndarray, y: np.ndarray) -> dict[str, float]:
        from sklearn import metrics as skm

        yi, pred = y.astype(int), self.predicted(self.probabilities(raw))
        both = len(np.unique(np.concatenate([yi, pred]))) > 1
        return {"class_mae": float(np.mean(np.abs(pred - yi))), "accuracy": float(np.mean(pred == yi)),
                "quadratic_kappa": float(skm.cohen_kappa_score(yi, pred, weights="quadratic"))
                if both else float("nan")}

    def baseline(self, target: Target, y_train: np.ndarray, n: int) -> np.ndarray:
        counts = np.bincount(y_train.astype(int), minlength=len(target.classes)) + 1e-6
        above = np.clip(1.0 - np.cumsum(counts / counts.sum())[:-1], 1e-6, 1 - 1e-6)
        return np.tile(np.log(above / (1 - above)), (n, 1))

    def from_columns(self, target: Target, frame: pd.DataFrame) -> np.ndarray:
        p = self.logged_probabilities(target, frame)
        above = np.clip(1.0 - np.cumsum(p, axis=1)[:, :-1], 1e-12, 1 - 1e-12)
        return np.log(above / (1 - above))


class Regression(TaskKind):
    """Heads predict the standardised value (f(y) - mean) / std, f the task's `transform` (the identity, or
    log(1 + y) for `log1p`; `none`: mean 0, std 1); the ONNX graph inverts it and outputs original units."""

    name = "regression"
    losses = ("mse", "huber", "l1")
    metrics = ("mae", "rmse")
    monitored = "value"
    min_distinct_labels = 1
    transforms = ("standardize", "log1p", "none")
    leakage_skill = "rank_correlation"
    few_label_values = False
    estimator = "dle"

    def fit(self, task: LabelledTask, y: pd.Series) -> dict[str, Any]:
        yv = y.astype("float64").to_numpy()
        if task.transform == "none":
            return {"transform": task.transform}
        if task.transform == "log1p":
            bad = int((yv <= -1).sum())
            if bad:
                raise ValueError(f"task '{task.name}': transform 'log1p' needs labels above -1, and {bad:,} "
                                 "training labels are not")
            yv = np.log1p(yv)
        std = float(np.nanstd(yv))
        return {"mean": float(np.nanmean(yv)), "std": std if std > 1e-12 else 1.0, "transform": task.transform}

    def to_head(self, target: Target, y: np.ndarray) -> np.ndarray:
        """Values in the column's units -> the head's scale."""
        return ((np.log1p(y) if target.transform == "log1p" else y) - target.mean) / target.std

    def from_head(self, target: Target, raw: np.ndarray) -> np.ndarray:
        """The head's scale -> the column's units (what the ONNX graph computes)."""
        v = raw * target.std + target.mean
        return np.expm1(v) if target.transform == "log1p" else v

    def encode(self, target: Target, y: pd.Series) -> np.ndarray:
        return self.to_head(target, y.astype("float64").to_numpy()).astype(np.float32)

    def loss(self, name: str, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        if name == "huber":
            return F.huber_loss(pred, y, reduction="none", delta=1.0)
        if name == "l1":
            return F.l1_loss(pred, y, reduction="none")
        return F.mse_loss(pred, y, reduction="none")

    def output_scale(self, target: Target) -> tuple[float, float]:
        return target.std, target.mean

    def output_expm1(self, target: Target) -> bool:
        return target.transform == "log1p"

    def to_raw(self, target: Target, output: np.ndarray) -> np.ndarray:
        return self.to_head(target, output.astype(np.float64))

    def to_units(self, target: Target, raw: np.ndarray) -> np.ndarray:
        return self.from_head(target, raw.astype(np.float64))

    def label_values(self, target: Target, labels: pd.Series) -> np.ndarray:
        return labels.astype("float64").to_numpy()

    def errors(self, target: Target, raw: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Prediction minus label, both in the column's units."""
        return raw.astype(np.float64) - y.astype(np.float64)

    def scores(self, target: Target, raw: np.ndarray, y: np.ndarray) -> dict[str, float]:
        err = self.errors(target, raw, y)
        return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}

    def resampled(self, target: Target, metric: str, raw: np.ndarray, y: np.ndarray,
                  counts: np.ndarray) -> np.ndarray:
        if metric not in ("mae", "rmse"):
            return super().resampled(target, metric, raw, y, counts)
        err = self.errors(target, raw, y)
        mean = counts @ (np.abs(err) if metric == "mae" else err**2) / counts.sum(axis=1)
        return mean if metric == "mae" else np.sqrt(mean)

    def baseline(self, target: Target, y_train: np.ndarray, n: int) -> np.ndarray:
        return np.full(n, np.median(y_train) if len(y_train) else 0.0)

    def columns(self, target: Target, raw: np.ndarray) -> dict[str, np.ndarray]:
        return {value_column(target.name): raw.astype(np.float64)}

    def answers(self, target: Target, raw: np.ndarray) -> list[dict[str, Any]]:
        return [{"value": v} for v in raw.tolist()]

    def from_columns(self, target: Target, frame: pd.DataFrame) -> np.ndarray:
        return frame[value_column(target.name)].to_numpy(np.float64)

    def logged_prediction(self, task: str, frame: pd.DataFrame) -> np.ndarray:
        """The logged value, in the column's units."""
        return frame[value_column(task)].to_numpy(np.float64)


TASK_KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (Binary(), Multiclass(), Ordinal(), Regression())}
LOSS_NAMES: tuple[str, ...] = tuple(dict.fromkeys(loss for k in TASK_KINDS.values() for loss in k.losses))


def kind_of(task: Target | LabelledTask) -> TaskKind:
    return TASK_KINDS[task.type]


def higher_is_better(metric: str) -> bool:
    return METRIC_DIRECTIONS[metric]


def head_width(task_type: str, n_classes: int) -> int:
    """Columns of the task's raw head output."""
    return TASK_KINDS[task_type].width(n_classes)


def monitored_column(task: str, task_type: str) -> str:
    return TASK_KINDS[task_type].monitored_column(task)
