"""`mtlops simulate`: replay months of production traffic through the whole system.

For each month: the champion scores it (through the live service and its prediction log with
`--serve`, else offline in the same format), the monitor
compares it with the champion's reference (the month's labels are taken as arrived by its end,
so quality is checked too), the alert policy decides, a retrain runs through kfp.local (or its
steps in this process: `steps`) when `retraining.trigger` says so (every month, on an acting alert,
or never), and the gate promotes or rejects. With `registry.passing_challenger: shadow` a passing
challenger is shadow instead: the next month it scores the same records as the champion and, on that
month's labels, is promoted or rejected as `mtlops shadow decide` would (`judge_shadow`). Alongside,
the never-retrained initial model scores every month: the headline is each task's metric of both,
month by month.
`pipelines/cli/policy_replay.py` runs this per policy and seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from components.artifacts import registry
from components.artifacts.inference import OnnxModel
from components.artifacts.predictions import REFERENCE_FILE, score_frame
from components.config.schema import ProjectConfig
from components.data.tables import label_column, partition_dir, read_window, with_labels
from monitoring.alerts import Alert, decide
from pipelines.cli.retrain import StepRunner, retrain
from serving.client import reload, score_through_service

if TYPE_CHECKING:
    import bentoml


@dataclass(frozen=True)
class LiveService:
    url: str
    prediction_log: Path
    admin_token: str


@dataclass
class MonthRow:
    month: str
    rows: int
    drift_share: float
    drifted_features: int
    drifted_predictions: str
    alert: str  # "" | "alert" | "data alert" (broken input: no retraining) | "suppressed (cool-down)"
    retrain: str  # "" | promoted | shadowed | rejected | failed
    champion: str  # version serving after this month
    never_retrained: dict[str, float]  # task -> metric of the initial model on this month
    served: dict[str, float]  # task -> metric of the champion that served this month
    train_flops: float = 0.0  # spent by this month's retrain
    retrain_s: float = 0.0
    gate: dict = field(default_factory=dict)  # the retrain's gate scores (new rows and old window)
    shadow: str = ""  # "" | promoted | rejected | undecided: the shadow judged on this month's labels
    retrain_error: str = ""  # why a failed retrain failed (its first line)


def should_retrain(cfg: ProjectConfig, alert: Alert | None) -> bool:
    trigger = cfg.retraining.trigger
    return trigger == "scheduled" or (trigger == "alert" and alert is not None and alert.retrains)


def month_frame(cfg: ProjectConfig, data_root: Path, month: str) -> tuple[pd.DataFrame, pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(f"{month}-01")
    end = start + pd.offsets.MonthBegin(1)
    df = read_window(cfg, partition_dir(cfg, data_root), start, end)
    return with_labels(df, cfg), start, end


def scored_with_labels(model: OnnxModel, df: pd.DataFrame, cfg: ProjectConfig, version: str) -> pd.DataFrame:
    """The month as the prediction log would hold it, plus the labels that arrived."""
    extra = [cfg.data.time_column, *(label_column(t.name) for t in cfg.tasks)]
    return pd.concat([score_frame(model, df, version), df[extra].reset_index(drop=True)], axis=1)


def through_service(service: LiveService, df: pd.DataFrame, cfg: ProjectConfig, expected: str) -> pd.DataFrame:
    """The month as the live service answered and logged it, plus the labels that arrived."""
    logged = score_through_service(service.url, df, cfg.features.names, service.prediction_log)
    versions = set(logged["model_version"])
    if versions != {expected}:
        raise RuntimeError(f"the service answered with {versions}, the champion is {expected}")
    extra = [cfg.data.time_column, *(label_column(t.name) for t in cfg.tasks)]
    return pd.concat([logged, df[extra].reset_index(drop=True)], axis=1)


def judge_shadow(cfg: ProjectConfig, shadowed: bentoml.Model, served: pd.DataFrame, df: pd.DataFrame,
                 month: str) -> str:
    """The shadow scored on the records the champion served this month (`served`, with the month's
    labels), compared with it task by task (`monitoring.shadow.compare`), and promoted or rejected in
    the registry on that evidence as `mtlops shadow decide` would; "undecided" keeps it shadowing."""
    from monitoring.shadow import compare, verdict

    scored = scored_with_labels(OnnxModel(Path(shadowed.path)), df, cfg, str(shadowed.tag))
    result = compare(cfg, served, scored)
    outcome, _ = verdict(result)
    if outcome != "undecided":
        registry.decide_shadow(cfg.registry.model_name, outcome == "promoted", result.to_dict() | {"window": month})
    return outcome


def simulate(cfg: ProjectConfig, data_root: Path, months: list[str], out_dir: Path,
             service: LiveService | None = None, progress: bool = True,
             steps: StepRunner = "kfp") -> list[MonthRow]:
    """With `service`, each month is scored by the live service and read back from its prediction
    log, and every promotion is reloaded into it; otherwise the champion scores offline."""
    from monitoring.dashboard import add_alert_marker
    from monitoring.drift import monitor
    from monitoring.windows import model_calibration, monitored_config

    if not cfg.data.time_column:
        raise ValueError("mtlops simulate replays the data month by month and needs data.time_column; without one, "
                         "monitor the live service's prediction log (`mtlops monitor`: windows by request time, "
                         "the training split as reference)")
    name = cfg.registry.model_name
    initial = registry.champion(name)
    if initial is None:
        raise RuntimeError(f"no champion for {name}: run `mtlops run` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    alert_log = out_dir / "alerts.jsonl"
    workspace = Path(cfg.monitoring.workspace)
    rows = []
    for month in months:
        df, _, end = month_frame(cfg, data_root, month)
        champion = registry.champion(name)
        if service:
            current = through_service(service, df, cfg, str(champion.tag))
        else:
            current = scored_with_labels(OnnxModel(Path(champion.path)), df, cfg, str(champion.tag))
        reference = pd.read_parquet(Path(champion.path) / REFERENCE_FILE)
        watched = monitored_config(cfg, Path(champion.path))
        summary = monitor(watched, reference, current, out_dir / "reports" / month, window=month,
                          model_version=str(champion.tag), workspace=workspace,
                          calibration=model_calibration(watched, Path(champion.path), str(champion.tag), reference),
                          reference_quality=champion.info.metadata.get("metrics", {}).get("test"))
        alert = decide(watched, summary, end, alert_log)
        if alert is not None:
            add_alert_marker(workspace, watched, month, "; ".join(alert.all_reasons), alert.kind)
        shadowed = registry.shadow(name)
        judged = judge_shadow(cfg, shadowed, current, df, month) if shadowed is not None else ""
        if service and judged == "promoted":
            _reload(service, str(registry.champion(name).tag))
        outcome = None
        # the last month's retrain would serve a month outside the replay
        if month != months[-1] and should_retrain(cfg, alert):
            outcome = retrain(cfg, data_root, f"{month}-01", f"{end:%Y-%m-%d}", out_dir / "kfp", steps=steps)
            if service and outcome.status == "promoted":
                _reload(service, outcome.tag)
        row = MonthRow(month, len(df), summary.drift_share, len(summary.drifted_features),
                       ", ".join(summary.drifted_predictions), "" if alert is None else
                       ("suppressed (cool-down)" if alert.suppressed else "data alert" if alert.kind == "data"
                        else "alert"),
                       outcome.status if outcome else "", str(registry.champion(name).tag).split(":")[-1],
                       never_retrained=registry.score(cfg, Path(initial.path), df),
                       served=registry.score(cfg, Path(champion.path), df),
                       train_flops=outcome.train_flops if outcome else 0.0,
                       retrain_s=outcome.seconds if outcome else 0.0, gate=outcome.gate if outcome else {},
                       shadow=judged, retrain_error=(outcome.error or "").split("\n")[0] if outcome else "")
        rows.append(row)
        if progress:
            print(f"{month}: {asdict(row)}", flush=True)
    return rows


def _reload(service: LiveService, tag: str) -> None:
    answer = reload(service.url, service.admin_token)
    if answer.status_code != 200 or answer.json()["model_version"] != tag:
        raise RuntimeError(f"the service did not take {tag}: {answer.status_code} {answer.text}")


def timeline_markdown(rows: list[MonthRow], cfg: ProjectConfig) -> str:
    metric, primary = cfg.primary_task.metric, cfg.primary_task.name
    lines = ["| month | rows | drift share | drifted features | drifted predictions | alert | retrain | shadow "
             f"| champion after | {cfg.primary_task.name} {metric}: never retrained | served (continual) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.month} | {r.rows:,} | {r.drift_share:.0%} | {r.drifted_features} | "
                     f"{r.drifted_predictions or '—'} | {r.alert or '—'} | {r.retrain or '—'} | {r.shadow or '—'} "
                     f"| {r.champion} | "
                     f"{r.never_retrained[primary]:.4f} | {r.served[primary]:.4f} |")
    return "\n".join(lines) + "\n"


def timeline_plot(rows: list[MonthRow], cfg: ProjectConfig, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    months = [r.month for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.bar(months, [r.drift_share for r in rows], color=["tab:red" if r.alert == "alert" else "tab:gray"
                                                          for r in rows])
    for i, r in enumerate(rows):
        if r.retrain:
            top.annotate(f"retrain: {r.retrain}", (i, r.drift_share), ha="center", va="bottom", fontsize=8)
    top.set_ylabel("share of drifted features")
    top.set_title("monthly drift (red: alert)")
    metric = f"{cfg.primary_task.name} {cfg.primary_task.metric}"
    primary = cfg.primary_task.name
    bottom.plot(months, [r.never_retrained[primary] for r in rows], "o--", label="never retrained")
    bottom.plot(months, [r.served[primary] for r in rows], "o-", label="continually retrained (served)")
    bottom.set_ylabel(metric)
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
