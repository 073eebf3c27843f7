"""The model registry: BentoML's model store, with a `stage` label per version.

`champion` is what serving loads; a new version is registered as `challenger`
and promoted by `promote_if_better`, which scores the champion and the
challenger on the same test rows. Promotion and rollback are relabels; every
decision is stored in the challenger's metadata.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bentoml
import pandas as pd

from components.artifacts.inference import OnnxModel
from components.config.schema import ProjectConfig
from components.config.tasks import kind_of
from components.data.tables import label_column
from components.training.metrics import is_better, relative_change, task_metrics

STAGE = "stage"
CHAMPION, CHALLENGER, REJECTED, RETIRED = "champion", "challenger", "rejected", "retired"
SHADOW = "shadow"  # scored on live traffic beside the champion, answers no one


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str]
    challenger: dict[str, float] = field(default_factory=dict)  # task -> gated metric
    champion: dict[str, float] = field(default_factory=dict)
    champion_tag: str | None = None
    shadow: bool = False  # passed, and scored as shadow beside the champion (registry.passing_challenger: shadow)


def _jsonable(obj: Any) -> Any:
    """BentoML metadata takes plain values (no None): round-trip through JSON."""
    return json.loads(json.dumps(obj, default=str), object_hook=lambda d: {k: v for k, v in d.items() if v is not None})


class TaskRetirementRefused(ValueError):
    """The config lacks a task the champion has and does not say the task is retired (registry.retire_tasks)."""


@dataclass(frozen=True)
class TaskChanges:
    """How a config's task set differs from a model version's."""

    against: str | None  # the version compared with (None: there is none)
    added: list[str]
    retired: list[str]


def task_changes(cfg: ProjectConfig, model: bentoml.Model | None) -> TaskChanges:
    if model is None:
        return TaskChanges(None, [], [])
    old, new = model.info.metadata.get("tasks", []), [t.name for t in cfg.tasks]
    return TaskChanges(str(model.tag), [t for t in new if t not in old], [t for t in old if t not in new])


def check_retirements(cfg: ProjectConfig, model: bentoml.Model | None) -> TaskChanges:
    """`task_changes` against `model`, refused when a task would go without registry.retire_tasks naming it."""
    changes = task_changes(cfg, model)
    unsaid = [t for t in changes.retired if t not in cfg.registry.retire_tasks]
    if unsaid:
        raise TaskRetirementRefused(
            f"the champion {changes.against} answers the task(s) {unsaid}, which the config no longer has: a new "
            "version would drop their heads for every client. To retire them, name them in registry.retire_tasks "
            "(`mtlops retrain --retire-task NAME`); otherwise put them back in `tasks`")
    return changes


def register(model_dir: Path, cfg: ProjectConfig, metrics: dict, lineage: dict) -> str:
    """Copy the exported folder into the model store as a challenger; return its tag. Its metadata says which
    version introduced each task (inherited from the champion) and which retired the tasks gone since."""
    current = champion(cfg.registry.model_name)
    before = current.info.metadata if current is not None else {}
    changes = task_changes(cfg, current)
    with bentoml.models.create(cfg.registry.model_name,
                               labels={STAGE: CHALLENGER, "primary_task": cfg.primary_task.name}) as bento_model:
        tag = str(bento_model.tag)
        introduced = {t.name: before.get("task_introduced", {}).get(t.name, changes.against) for t in cfg.tasks}
        introduced |= {t: tag for t in changes.added} if current is not None else {t: tag for t in introduced}
        retired = {k: v for k, v in before.get("retired_tasks", {}).items() if k not in introduced}
        bento_model.info.metadata.update(_jsonable({
            "metrics": metrics, "lineage": lineage, "tasks": [t.name for t in cfg.tasks],
            "task_introduced": introduced, "retired_tasks": retired | {t: tag for t in changes.retired},
            "task_changes": asdict(changes) if changes.added or changes.retired else None}))
        shutil.copytree(model_dir, bento_model.path, dirs_exist_ok=True)
    return tag


def versions(name: str) -> list[bentoml.Model]:
    """All versions of a model, oldest first."""
    return sorted((m for m in bentoml.models.list() if m.tag.name == name), key=lambda m: m.info.creation_time)


def champion(name: str) -> bentoml.Model | None:
    found = [m for m in versions(name) if m.info.labels.get(STAGE) == CHAMPION]
    return found[-1] if found else None


def _relabel(model: bentoml.Model, stage: str, **metadata: Any) -> None:
    model.info.labels[STAGE] = stage
    model.info.metadata.update(_jsonable(metadata))
    model.flush()


def score(cfg: ProjectConfig, folder: Path, df: pd.DataFrame) -> dict[str, float]:
    """Each task's gated metric for the exported model in `folder` on `df`: the tasks the model and the config both
    have (a champion's retired task has no label column any more)."""
    onnx_model = OnnxModel(folder)
    raw = onnx_model.predict_frame(df)
    names = {t.name for t in cfg.tasks}
    return {t.name: task_metrics(t, raw[t.name], kind_of(t).label_values(t, df[label_column(t.name)]))
            .get(cfg.task(t.name).metric, math.nan)
            for t in onnx_model.spec.targets if t.name in names}


def _check(cfg: ProjectConfig, new: dict[str, float], old: dict[str, float], window: str,
           primary_may_drop: bool) -> tuple[bool, list[str]]:
    """Primary not worse (unless `primary_may_drop`: then it has a tolerance like the others);
    other tasks not worse than their tolerance (relative)."""
    promote, reasons = True, []
    for task in cfg.tasks:
        m = task.metric
        if task.name not in old:
            reasons.append(f"{window}{task.name}: new task, no champion score")
            continue
        change = relative_change(m, new[task.name], old[task.name])
        line = f"{window}{task.name} {m}: {old[task.name]:.4f} -> {new[task.name]:.4f} ({change:+.2%})"
        if task.primary and not primary_may_drop:
            ok = change >= 0 or math.isclose(new[task.name], old[task.name], rel_tol=1e-9)
            reasons.append(f"primary {line} {'not worse' if ok else 'WORSE'}")
        else:
            tol = cfg.gate_tolerance(task.name)
            ok = change >= -tol
            reasons.append(f"{line} {'within' if ok else 'BEYOND'} tolerance {tol:.1%}")
        promote = promote and ok
    return promote, reasons


def gate(cfg: ProjectConfig, challenger_dir: Path, champion_dir: Path, test_df: pd.DataFrame) -> GateDecision:
    """Promote when the primary metric is not worse and no other task drops by more
    than its tolerance (relative), both models scored on the same rows."""
    new, old = score(cfg, challenger_dir, test_df), score(cfg, champion_dir, test_df)
    promote, reasons = _check(cfg, new, old, "", primary_may_drop=False)
    return GateDecision(promote, reasons, new, old)


def gate_continual(cfg: ProjectConfig, challenger_dir: Path, champion_dir: Path, new_df: pd.DataFrame,
                   old_df: pd.DataFrame) -> GateDecision:
    """Continual retraining must learn the new window without forgetting the old one: the primary
    task not worse on new rows, and no task (primary included) beyond its tolerance on old rows."""
    decision = GateDecision(True, [])
    for window, df, primary_may_drop in (("new", new_df, False), ("old", old_df, True)):
        new, old = score(cfg, challenger_dir, df), score(cfg, champion_dir, df)
        ok, reasons = _check(cfg, new, old, f"[{window} window, {len(df):,} rows] ", primary_may_drop)
        decision.promote = decision.promote and ok
        decision.reasons += reasons
        decision.challenger |= {f"{window}.{k}": v for k, v in new.items()}
        decision.champion |= {f"{window}.{k}": v for k, v in old.items()}
    return decision


def beats_baseline(cfg: ProjectConfig, metrics: dict) -> tuple[bool, list[str]]:
    """Whether every task's gated metric on the test rows (`metrics["test"]`, the evaluate step's) is better than
    the trivial baseline's on the same rows (`metrics["baseline"]`), but for the tasks the config names in
    `registry.allow_below_baseline`; and the gate's lines: one per task that is not, one naming those that are."""
    allowed = {a.task: a.reason for a in cfg.registry.allow_below_baseline}
    ok, reasons, beaten = True, [], []
    for task in cfg.tasks:
        m = task.metric
        new = metrics.get("test", {}).get(task.name, {}).get(m)
        trivial = metrics.get("baseline", {}).get(task.name, {}).get(m)
        if new is None or trivial is None or math.isnan(new) or math.isnan(trivial):
            reasons.append(f"{task.name} {m}: no test and trivial-baseline score on record, not compared")
            continue
        if is_better(m, new, trivial):
            beaten.append(f"{task.name} {m} {new:.4f} vs {trivial:.4f}")
            continue
        line = f"{task.name} {m} {new:.4f} is no better than its trivial baseline {trivial:.4f}"
        if task.name in allowed:
            reasons.append(f"{line}: allowed by registry.allow_below_baseline ({allowed[task.name]})")
        else:
            ok = False
            reasons.append(f"{line}: BELOW BASELINE, not promoted (registry.allow_below_baseline does not name "
                           f"{task.name})")
    if beaten:
        reasons.append("better than the trivial baseline: " + "; ".join(beaten))
    return ok, reasons


def promote_if_better(cfg: ProjectConfig, tag: str, test_df: pd.DataFrame,
                      old_df: pd.DataFrame | None = None) -> GateDecision:
    """Gate a registered challenger against the champion and relabel accordingly. With
    `old_df` the continual gate applies (`test_df` then holds the new window's held-out rows).
    Whatever the champion, a challenger with a task no better than its trivial baseline (`beats_baseline`, on
    the metrics it was registered with) is not promoted."""
    new = bentoml.models.get(tag)
    current = champion(cfg.registry.model_name)
    if current is None:
        decision = GateDecision(True, ["no champion yet: the first model becomes champion"])
    elif old_df is not None:
        decision = gate_continual(cfg, Path(new.path), Path(current.path), test_df, old_df)
    else:
        decision = gate(cfg, Path(new.path), Path(current.path), test_df)
        decision.champion_tag = str(current.tag)
    above, reasons = beats_baseline(cfg, new.info.metadata.get("metrics", {}))
    changes = task_changes(cfg, current)
    try:
        check_retirements(cfg, current)
    except TaskRetirementRefused as exc:
        decision.promote = False
        decision.reasons.append(f"NOT PROMOTED: {exc}")
    decision.reasons += [f"task added: {t} (a new head; no champion score, so it is gated against its trivial "
                         "baseline below)" for t in changes.added]
    decision.reasons += [f"task retired: {t} (registry.retire_tasks): its head and output leave the model"
                         for t in changes.retired if t in cfg.registry.retire_tasks]
    if not above and current is None:
        decision.reasons = ["no champion yet, but the first model is not promoted either"]
    decision.promote = decision.promote and above
    decision.reasons += reasons
    shadowing = decision.promote and current is not None and cfg.registry.passing_challenger == "shadow"
    if shadowing and (changes.added or changes.retired):
        shadowing = False
        decision.reasons.append("promoted without a shadow phase: a shadow is scored on the champion's tasks, and "
                                "this version changes them (serve it by restarting the service)")
    if shadowing:
        decision.promote, decision.shadow = False, True
        decision.reasons.append("passed the offline gate: scored as shadow beside the champion until `mtlops shadow "
                                "decide` promotes or rejects it on labelled live records")
        start_shadow(cfg.registry.model_name, tag, gate=asdict(decision))
    elif decision.promote:
        promote(cfg.registry.model_name, tag, gate=asdict(decision))
    else:
        _relabel(new, REJECTED, gate=asdict(decision))
    return decision


def promote(name: str, tag: str, **metadata: Any) -> None:
    """Make `tag` the champion and retire the current one (no gate: the caller decided)."""
    current = champion(name)
    if current is not None and str(current.tag) != tag:
        _relabel(current, RETIRED, retired_by=tag)
    _relabel(bentoml.models.get(tag), CHAMPION, **metadata)


def rollback(name: str) -> str:
    """Make the most recent retired version champion again; return its tag."""
    current = champion(name)
    retired = [m for m in versions(name) if m.info.labels.get(STAGE) == RETIRED]
    if not retired:
        raise RuntimeError(f"no retired version of '{name}' to roll back to")
    target = retired[-1]
    if current is not None:
        _relabel(current, RETIRED, rolled_back_to=str(target.tag))
    _relabel(target, CHAMPION)
    return str(target.tag)


def shadow(name: str) -> bentoml.Model | None:
    """The version `mtlops serve` scores beside the champion (its outputs only logged), if any."""
    found = [m for m in versions(name) if m.info.labels.get(STAGE) == SHADOW]
    return found[-1] if found else None


def start_shadow(name: str, tag: str, **metadata: Any) -> str | None:
    """Make `tag` the shadow (one at a time: a previous shadow goes back to challenger); returns
    the previous shadow's tag. The champion cannot be its own shadow."""
    model = bentoml.models.get(tag)
    if model.tag.name != name:
        raise ValueError(f"{tag} is not a version of {name!r}")
    if model.info.labels.get(STAGE) == CHAMPION:
        raise ValueError(f"{tag} is the champion: a shadow is scored beside it, not as it")
    previous = stop_shadow(name)
    _relabel(model, SHADOW, **metadata)
    return previous


def stop_shadow(name: str) -> str | None:
    """No shadow any more (the version goes back to challenger); returns its tag, if there was one."""
    current = shadow(name)
    if current is None:
        return None
    _relabel(current, CHALLENGER, shadow_stopped=True)
    return str(current.tag)


def decide_shadow(name: str, promote_it: bool, evidence: dict[str, Any]) -> str:
    """Promote the shadow to champion, or reject it, with the live evidence stored in its metadata
    (like the gate's); returns its tag."""
    current = shadow(name)
    if current is None:
        raise LookupError(f"{name!r} has no shadow")
    tag = str(current.tag)
    if promote_it:
        promote(name, tag, shadow_decision=evidence)
    else:
        _relabel(current, REJECTED, shadow_decision=evidence)
    return tag
