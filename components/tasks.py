"""What each task type means, in one place: the losses and metrics that fit it (with the defaults), the width
of its head, and the names of the columns its predictions are written under (prediction log, reference
sample, monitoring). Torch-free: config validation reads it.

Prediction columns, one group per task:

- binary:     `<task>__proba` (float), `<task>__label` (0/1 at the task's threshold)
- multiclass: `<task>__label` (class name), `<task>__proba__<class>` (float per class)
- regression: `<task>__value` (original units)

The monitored column of a task is the one whose drift monitoring tracks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskType = Literal["binary", "multiclass", "regression"]

# metric -> higher is better
METRIC_DIRECTIONS: dict[str, bool] = {
    "roc_auc": True, "log_loss": False, "accuracy": True, "macro_f1": True, "mae": False, "rmse": False,
}


@dataclass(frozen=True)
class TaskKind:
    losses: tuple[str, ...]  # the first is the default
    metrics: tuple[str, ...]  # the first is the default
    monitored: str  # suffix of the monitored prediction column

    @property
    def default_loss(self) -> str:
        return self.losses[0]

    @property
    def default_metric(self) -> str:
        return self.metrics[0]


TASK_KINDS: dict[str, TaskKind] = {
    "binary": TaskKind(("bce",), ("roc_auc", "log_loss", "accuracy"), "proba"),
    "multiclass": TaskKind(("cross_entropy",), ("macro_f1", "log_loss", "accuracy"), "label"),
    "regression": TaskKind(("mse", "huber", "l1"), ("mae", "rmse"), "value"),
}
LOSS_NAMES: tuple[str, ...] = tuple(dict.fromkeys(loss for k in TASK_KINDS.values() for loss in k.losses))


def higher_is_better(metric: str) -> bool:
    return METRIC_DIRECTIONS[metric]


def head_width(task_type: str, n_classes: int) -> int:
    """Columns of the task's raw head output: one logit per class for multiclass, else one."""
    return n_classes if task_type == "multiclass" else 1


def proba_column(task: str, cls: str | None = None) -> str:
    """The probability column of a binary task, or of one class of a multiclass task."""
    return f"{task}__proba" if cls is None else f"{task}__proba__{cls}"


def label_output_column(task: str) -> str:
    """The predicted label (0/1, or the class name)."""
    return f"{task}__label"


def value_column(task: str) -> str:
    """A regression task's predicted value, in original units."""
    return f"{task}__value"


def monitored_column(task: str, task_type: str) -> str:
    return f"{task}__{TASK_KINDS[task_type].monitored}"
