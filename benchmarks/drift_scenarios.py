"""Drift scenarios: does the alert policy stay quiet when nothing changed and speak when a task breaks?

    python -m benchmarks.drift_scenarios            # 10 no-drift samples, Jun-Dec, 7 injected faults
    python -m benchmarks.drift_scenarios --quick    # 3 no-drift samples, Jun-Jul, the faults, a small model

Trains the champion as `mtlops run` does (the config's training window, epochs and seed; `--quick`:
2 epochs on a 20% sample), exports it with its monitoring reference, calibrates the drift
thresholds once (as `mtlops monitor` stores them with the model) and runs `monitoring.drift.monitor`
+ `monitoring.alerts.reasons_to_alert` with the config's policy on labelled scenarios built from
real flights:

- **no drift**: samples of the training window's rows that are not in the reference (seeds), and
  June, the champion's own held-out test month;
- **real months**: July-December 2013, as they are;
- **injected faults**, on one no-drift sample: an upstream unit change (distance miles -> km), a
  feature frozen at a constant, a null surge, categories renamed, one category's share doubled
  (the other categories' rows thinned: real rows, none twice), 30% of one task's labels flipped
  (features untouched), a shifted decision threshold (the binary task's logits moved by +1: every
  flight looks likelier to be late); and
  faults inside one segment or of the records: a weather unit bug (temp °F -> °C at EWR only), a
  segment fault (UA's distance in km), 5% of the records duplicated.

Each window is scored by the champion's ONNX graph with its labels attached (the labels "arrived").
Per scenario: the data alert (broken input: column and segment named, no retraining) and the model
alert with their reasons, per task the quality estimated before the labels (CBPE / DLE) and realized,
the runtime. June and Jul-Dec are monitored in order with an estimate log, so each month's estimate
is checked against the last labelled month's error (monitoring/estimation.py). Headline: false alarms
on the no-drift windows, faults named correctly (each fault's column, and segment, in an alert
reason), the estimate error per task per month, and the quality rule's Jul-Dec decisions before (the
favourable end of the 95% interval, the rule on main until this benchmark's commit) and after (the
one-sided bootstrap test of "the drop is within the tolerance"). Writes
benchmarks/results/drift_scenarios.md (`--quick`: drift_scenarios_quick.md).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from components.artifacts import registry
from components.artifacts.export import export_onnx
from components.artifacts.inference import OnnxModel
from components.artifacts.predictions import REFERENCE_FILE, REFERENCE_ROWS, score_frame, write_reference
from components.config.schema import ProjectConfig, load_config
from components.data.tables import label_column, load_source, sample_rows, select_window, with_labels
from components.training.metrics import relative_change
from components.training.train import train
from monitoring.alerts import data_reasons, reasons_to_alert
from monitoring.drift import monitor, reference_calibration
from monitoring.summary import MonitorSummary

ROOT = Path(__file__).resolve().parents[1]
Fault = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass
class Scenario:
    name: str
    kind: str  # "no drift", "real month", "fault"
    rows: pd.DataFrame  # raw rows with labels, before scoring
    fault: Fault | None = None  # applied to the raw rows (features or labels)
    logit_shift: dict[str, float] | None = None  # binary task -> shift of its logged logits (after scoring)
    names: tuple[str, ...] = ()  # a fault: what one alert reason must name (column, and segment) to be named right


@dataclass
class Outcome:
    scenario: Scenario
    summary: MonitorSummary
    data: list[str]  # data reasons (broken input; never retrains)
    reasons: list[str]  # model reasons
    before_labels: list[str]  # the model policy on the same window before its labels arrived (estimates only)
    broken: list[str]  # tasks whose realized metric dropped by more than their alert tolerance (point values)
    seconds: float

    @property
    def alerts(self) -> bool:
        return bool(self.data or self.reasons)

    @property
    def named(self) -> bool:
        """A fault whose column (and segment) one alert reason names."""
        return any(all(n in r for n in self.scenario.names) for r in [*self.data, *self.reasons])


def train_champion(cfg: ProjectConfig, frame: pd.DataFrame, root: Path, quick: bool) -> Path:
    """Train on the config's training window, export with the reference (as `mtlops run` does)."""
    w = cfg.data.windows
    part = {name: select_window(frame, cfg.data.time_column, getattr(w, name).start, getattr(w, name).end)
            for name in ("train", "validation", "test")}
    fit, val = (sample_rows(part[n], 0.2, 0) for n in ("train", "validation")) if quick else (part["train"],
                                                                                              part["validation"])
    train(cfg, fit, val, root / "model", progress=False)
    export_onnx(root / "model", root / "onnx", part["test"])
    write_reference(OnnxModel(root / "onnx"), part["train"], cfg)
    return root / "onnx"


def held_out_metrics(cfg: ProjectConfig, frame: pd.DataFrame, folder: Path) -> dict[str, dict[str, float]]:
    """The exported model's gated metric per task on the test window (what the registry stores)."""
    w = cfg.data.windows.test
    test = select_window(frame, cfg.data.time_column, w.start, w.end)
    return {task: {cfg.task(task).metric or "": value} for task, value in registry.score(cfg, folder, test).items()}


def unseen_training_rows(cfg: ProjectConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """The training window without the reference's rows (write_reference's seeded sample)."""
    w = cfg.data.windows.train
    rows = select_window(frame, cfg.data.time_column, w.start, w.end)
    seen = rows.sample(n=min(REFERENCE_ROWS, len(rows)), random_state=cfg.training.seed).index
    return rows.drop(index=seen)


def month(cfg: ProjectConfig, frame: pd.DataFrame, period: str) -> pd.DataFrame:
    p = pd.Period(period)
    return select_window(frame, cfg.data.time_column, str(p.start_time.date()), str((p + 1).start_time.date()))


def faults(reference: pd.DataFrame) -> dict[str, tuple[Fault | dict[str, float], tuple[str, ...]]]:
    """The injected upstream faults: name -> (a change of the raw rows, or a logit shift per task; what an
    alert reason must name)."""
    hour = float(reference["hour"].median())

    def nulls(rows: pd.DataFrame) -> pd.DataFrame:
        hit = np.random.default_rng(0).random(len(rows)) < 0.5
        return rows.assign(tailnum=rows["tailnum"].where(~hit, None))

    def share_doubled(rows: pd.DataFrame) -> pd.DataFrame:  # real rows, none twice: the other carriers thinned
        ua = rows["carrier"] == "UA"
        keep = int(ua.sum() * (1 - 2 * ua.mean()) / (2 * ua.mean()))  # UA's share 2p: n_ua / (n_ua + keep) = 2p
        return pd.concat([rows[ua], rows[~ua].sample(n=keep, random_state=0)]).reset_index(drop=True)

    def labels_flipped(rows: pd.DataFrame) -> pd.DataFrame:
        col = label_column("arr_delayed")
        hit = np.random.default_rng(0).random(len(rows)) < 0.3
        flipped = (1 - rows[col]).where(rows[col].notna())
        return rows.assign(**{col: rows[col].where(~hit, flipped)})

    def celsius_at_ewr(rows: pd.DataFrame) -> pd.DataFrame:
        at = rows["origin"] == "EWR"
        return rows.assign(temp=rows["temp"].where(~at, (rows["temp"] - 32) * 5 / 9))

    def km_for_ua(rows: pd.DataFrame) -> pd.DataFrame:
        at = rows["carrier"] == "UA"
        return rows.assign(distance=rows["distance"].where(~at, rows["distance"] * 1.6))

    def duplicated(rows: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([rows, rows.sample(frac=0.05, random_state=0)]).reset_index(drop=True)

    return {
        "unit change: distance x 1.6 (miles -> km)": (lambda r: r.assign(distance=r["distance"] * 1.6),
                                                      ("distance",)),
        f"frozen: hour = {hour:g}": (lambda r: r.assign(hour=hour), ("hour",)),
        "null surge: tailnum 50% null": (nulls, ("tailnum",)),
        "renamed: carrier codes lower-cased": (lambda r: r.assign(carrier=r["carrier"].str.lower()), ("carrier",)),
        "share doubled: carrier UA": (share_doubled, ("carrier",)),
        "labels flipped: 30% of arr_delayed": (labels_flipped, ("arr_delayed",)),
        "shifted threshold: arr_delayed logits +1": ({"arr_delayed": 1.0}, ("arr_delayed",)),
        "weather unit: temp °F -> °C at EWR only": (celsius_at_ewr, ("temp", "origin=EWR")),
        "segment fault: distance x 1.6 for carrier UA only": (km_for_ua, ("distance", "carrier=UA")),
        "duplicated records: 5% of the rows twice": (duplicated, ("duplicated",)),
    }


def scored(cfg: ProjectConfig, model: OnnxModel, scenario: Scenario) -> pd.DataFrame:
    rows = scenario.fault(scenario.rows) if scenario.fault else scenario.rows
    out = score_frame(model, rows, "champion")
    for t in cfg.tasks:
        out[label_column(t.name)] = rows[label_column(t.name)].to_numpy()
    for task, shift in (scenario.logit_shift or {}).items():
        p = np.clip(out[f"{task}__proba"].to_numpy(np.float64), 1e-12, 1 - 1e-12)
        out[f"{task}__proba"] = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + shift)))
    return out


def short(reason: str) -> str:
    return reason.replace("watched features drifted", "features").replace("predictions drifted", "predictions")


def interval_rule(cfg: ProjectConfig, s: MonitorSummary) -> list[str]:
    """The quality rule before the one-sided test (on main until this benchmark's commit): a task alerts
    when its drop passes the tolerance even at the favourable end of the two-sided 95% bootstrap interval.
    Kept here only to report the decisions before and after."""
    flagged = []
    for task, q in s.quality.items():
        ends = [x for x in (q["ci_low"], q["ci_high"]) if math.isfinite(x)] or [q["current"]]
        best = max(relative_change(q["metric"], x, q["reference"]) for x in ends)
        if best <= -cfg.alert_tolerance(task):
            flagged.append(task)
    return flagged


def tested_rule(cfg: ProjectConfig, s: MonitorSummary) -> list[str]:
    """The tasks whose realized-quality drop the policy's one-sided test flags (from its reasons)."""
    return [t for t in s.quality if any(r.startswith(f"{t} {s.quality[t]['metric']} ") and "p=" in r
                                        for r in reasons_to_alert(cfg, s))]


def quality_cell(s: MonitorSummary, task: str) -> str:
    q, est = s.quality.get(task, {}), s.estimated.get(task, math.nan)
    real = q.get("current", math.nan)
    return f"{est:.3f} / {real:.3f}" if abs(real) < 10 else f"{est:.2f} / {real:.2f}"


def estimate_table(cfg: ProjectConfig, months: list[Outcome]) -> list[str]:
    """Markdown rows: per month and task, estimated / realized, the error of the estimated change, the check."""
    lines = ["| month | task | metric | estimated | realized | error (pts) | check |", "|---|---|---|---|---|---|---|"]
    for o in months:
        for t in cfg.tasks:
            e, check = o.summary.estimate_errors.get(t.name), o.summary.estimate_checks.get(t.name, {})
            if e is None:
                continue
            verdict = "holds" if check.get("holds", True) else "in doubt: " + "; ".join(check["doubts"])
            lines.append(f"| {o.scenario.name[:7]} | {t.name} | {t.metric} | {e['estimated']:.3f} | "
                         f"{e['realized']:.3f} | {100 * e['error']:+.1f} | {verdict} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "flights.yaml")
    ap.add_argument("--quick", action="store_true", help="3 no-drift samples, Jun-Jul, a 2-epoch model on 20%%")
    ap.add_argument("--no-drift-seeds", type=int, default=None, help="no-drift samples (default 10, quick 3)")
    ap.add_argument("--window-rows", type=int, default=None,
                    help="rows per no-drift sample (default the config's monitoring.sample_size; quick 5,000)")
    ap.add_argument("--sample-size", type=int, default=None,
                    help="monitoring.sample_size for this run (default the config's; quick 5,000)")
    ap.add_argument("--champion", type=Path, default=None,
                    help="an exported model folder (with reference.parquet) trained on the config's training "
                         "window, e.g. the champion in the model store; default: train one here")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if args.quick:
        cfg = cfg.model_copy(update={
            "training": cfg.training.model_copy(update={"epochs": 2}),
            "monitoring": cfg.monitoring.model_copy(update={"sample_size": 5000, "calibration_draws": 50,
                                                            "quality_draws": 50})})
    if args.sample_size:
        cfg = cfg.model_copy(update={"monitoring": cfg.monitoring.model_copy(update={"sample_size": args.sample_size})})
    seeds = args.no_drift_seeds or (3 if args.quick else 10)
    window_rows = args.window_rows or cfg.monitoring.sample_size
    months = ["2013-07"] if args.quick else [f"2013-{m:02d}" for m in range(7, 13)]
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="mtlops-drift-scenarios-"))

    t0 = time.perf_counter()
    with console.status("loading flights, training and exporting the champion"):
        frame = with_labels(load_source(cfg.data), cfg)
        onnx_dir = args.champion or train_champion(cfg, frame, tmp, args.quick)
        test_metrics = held_out_metrics(cfg, frame, onnx_dir)
        model = OnnxModel(onnx_dir)
        reference = pd.read_parquet(onnx_dir / REFERENCE_FILE)
        calibration = reference_calibration(cfg, reference, "champion")
    setup_seconds = time.perf_counter() - t0

    unseen = unseen_training_rows(cfg, frame)
    no_drift = [Scenario(f"training-window sample, seed {s}", "no drift",
                         unseen.sample(n=min(window_rows, len(unseen)), random_state=s).reset_index(drop=True))
                for s in range(seeds)]
    injected = [Scenario(name, "fault", no_drift[0].rows, fault=fault if callable(fault) else None,
                         logit_shift=fault if isinstance(fault, dict) else None, names=names)
                for name, (fault, names) in faults(reference).items()]
    real = [Scenario("2013-06 (the champion's test month)", "no drift", month(cfg, frame, "2013-06")),
            *(Scenario(m, "real month", month(cfg, frame, m)) for m in months)]
    # the order spreads the kinds, so a run cut short (the table is rewritten after each) covers each
    scenarios = [no_drift[0], *injected, real[0], *no_drift[1:], *real[1:]]

    outcomes = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("scenarios", total=len(scenarios))
        for i, sc in enumerate(scenarios):
            progress.update(bar, description=sc.name)
            start = time.perf_counter()
            in_order = any(sc is r for r in real)  # June, then Jul-Dec: each estimate checked against the last error
            s = monitor(cfg, reference, scored(cfg, model, sc), tmp / f"run-{i}", window=sc.name,
                        model_version="champion", calibration=calibration, reference_quality=test_metrics,
                        estimate_log=tmp / "estimates.jsonl" if in_order else None)
            broken = [t for t, q in s.quality.items() if q["relative_change"] <= -cfg.alert_tolerance(t)]
            unlabelled = reasons_to_alert(cfg, replace(s, quality={}))
            outcomes.append(Outcome(sc, s, data_reasons(cfg, s), reasons_to_alert(cfg, s), unlabelled, broken,
                                    time.perf_counter() - start))
            progress.advance(bar)
            report(cfg, outcomes, console if i == len(scenarios) - 1 else None, args, setup_seconds, test_metrics,
                   len(scenarios))


def report(cfg: ProjectConfig, outcomes: list[Outcome], console: Console | None, args: argparse.Namespace,
           setup_seconds: float, test_metrics: dict, planned: int) -> None:
    """The table and headline, written after every scenario (a long run that stops keeps what it
    measured); printed when `console` is given."""
    tasks = [t.name for t in cfg.tasks]
    head = ["scenario", "kind", "rows", "data alert (no retraining)", "model alert", "model alert before labels",
            "broken (> tolerance)", *(f"{t} {cfg.task(t).metric} est / real" for t in tasks), "seconds"]
    table = Table(title="drift scenarios: the config's alert policy on labelled windows")
    for col in head:
        table.add_column(col, overflow="fold")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o in outcomes:
        row = [o.scenario.name, o.scenario.kind, f"{o.summary.rows_current:,}",
               "; ".join(r.removeprefix("data: ") for r in o.data) or "—",
               "; ".join(short(r) for r in o.reasons) or "—",
               "; ".join(short(r) for r in o.before_labels) or "—", ", ".join(o.broken) or "—",
               *(quality_cell(o.summary, t) for t in tasks), f"{o.seconds:.0f}"]
        table.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
    quiet = [o for o in outcomes if o.scenario.kind == "no drift"]
    injected = [o for o in outcomes if o.scenario.kind == "fault"]
    breaking = [o for o in injected if o.broken]
    real = [o for o in outcomes if o.scenario.kind == "real month"]
    headline = [
        f"- **false alarms on no-drift windows: {sum(o.alerts for o in quiet)} of {len(quiet)}** "
        f"({len(quiet) - 1} training-window samples + June; data or model alert)",
        f"- **faults named correctly: {sum(o.named for o in injected)} of {len(injected)}** (the fault's column, "
        f"and segment, in an alert reason; not named: "
        f"{', '.join(o.scenario.name for o in injected if not o.named) or 'none'})",
        f"- data alerts (no retraining) on: {', '.join(o.scenario.name for o in outcomes if o.data) or 'none'}",
        f"- detection of faults that break a task's metric beyond its tolerance: "
        f"{sum(o.alerts for o in breaking)} of {len(breaking)} ({', '.join(o.scenario.name for o in breaking)})",
        f"- before the labels arrive (estimated quality only): {sum(bool(o.before_labels) for o in quiet)} of "
        f"{len(quiet)} no-drift windows and {sum(bool(o.before_labels) for o in breaking)} of {len(breaking)} "
        f"breaking faults raise a model alert",
        f"- real months alerting: {', '.join(o.scenario.name for o in real if o.alerts) or 'none'} of "
        f"{', '.join(o.scenario.name for o in real)}",
    ]
    estimates = estimate_table(cfg, [o for o in outcomes if o.scenario.kind in ("no drift", "real month")
                                     and o.scenario.name[:4].isdigit()])
    rules = ["| month | realized drops past the tolerance | quality alerts before (interval's favourable end) | "
             "after (one-sided test) |", "|---|---|---|---|",
             *(f"| {o.scenario.name} | {', '.join(o.broken) or '—'} | "
               f"{', '.join(interval_rule(cfg, o.summary)) or '—'} | {', '.join(tested_rule(cfg, o.summary)) or '—'} |"
               for o in real)]
    if console is not None:
        console.print(table)
        for line in headline:
            console.print(line)
    command = " ".join(["python -m benchmarks.drift_scenarios", *sys.argv[1:]])
    trained = (f"the exported model in `{args.champion}` (trained before this run, on the config's training "
               "window)" if args.champion else "the champion trained by this run")
    held_out = ", ".join(f"{t} {cfg.task(t).metric} {test_metrics[t][cfg.task(t).metric]:.4f}" for t in tasks)
    text = [
        f"# Drift scenarios{' (quick)' if args.quick else ''}", "",
        f"Command: `{command}`  ", f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other "
        f"jobs (runtimes indicative). Setup (load, train, export, calibrate): {setup_seconds:.0f} s.  ",
        f"Model: {trained}; its held-out test metrics (June 2013): {held_out}.  ",
        f"Policy: `{args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}` "
        f"`alerts:`; quality intervals at {cfg.monitoring.quality_confidence:.0%} "
        f"({cfg.monitoring.quality_draws} bootstrap draws); drift thresholds calibrated at the "
        f"{cfg.monitoring.calibration_quantile} quantile. Windows sampled to {cfg.monitoring.sample_size:,} rows.",
        *([f"**Partial: {len(outcomes)} of {planned} scenarios measured.**", ""] if len(outcomes) < planned else []),
        "", "## Headline", "", *headline, "",
        "## Label-free estimates, month by month", "",
        "Per task: estimated before the labels (CBPE / DLE) / realized; 'error': the estimated relative change "
        "(vs the estimator on its own reference) minus the realized one (vs the champion's held-out metric), in "
        "points, + = too optimistic; 'check': whether the estimate's assumption check held in that month (inputs "
        "inside the reference, no broken input, last labelled month's error within the tolerance), else why not.",
        "", *estimates, "",
        "## The quality rule, July-December, before and after", "",
        f"Before: a drop alerts when it passes the tolerance even at the favourable end of the two-sided 95% "
        f"bootstrap interval. After: when the point drop passes the tolerance and the one-sided bootstrap test of "
        f"H0 'the drop is within the tolerance' rejects at {cfg.monitoring.quality_confidence:.0%}.", "", *rules, "",
        "## All scenarios", "",
        "Quality cells: estimated before the labels (CBPE / DLE) / realized once they arrived. 'broken': the tasks "
        "whose realized metric dropped by more than their alert tolerance vs the champion's held-out metric. "
        "'model alert before labels': the model policy on the same window without its labels (estimated quality "
        "only).", "",
        *lines, "",
    ]
    out = ROOT / "benchmarks" / "results" / ("drift_scenarios_quick.md" if args.quick else "drift_scenarios.md")
    out.write_text("\n".join(text))
    if console is not None:
        console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
