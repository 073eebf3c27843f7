"""`mtlops simulate --policy ...`: the month-by-month replay once per retraining policy and seed.

A policy is `never`, or `<trigger>/<train_on>` (`scheduled/sliding`, `alert/warm_replay`, ...;
see `RetrainingSpec`). Each seed trains its own initial champion on the config's training window
(`mtlops run`, seed `s`); each (seed, policy) then replays the months from a copy of that model
store, in its own process (BentoML's store is per process, through `BENTOML_HOME`; `jobs` of them
at once, which is how the replay uses a machine's cores: one replay is mostly single-threaded), so every
policy starts from the same model and sees the same months. The table reports, per month and
policy, the served model's metric per task (mean ± std over seeds), the retrains and alerts, and
the training FLOPs and wall time spent; the summary counts the months where a policy is worse
than never retraining beyond noise (its paired difference to the never-retrained model, mean over
seeds, below minus one std).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np

from components.config.schema import ProjectConfig, RetrainingSpec, config_to_yaml, parse_config
from components.config.tasks import higher_is_better
from components.training.metrics import relative_change
from monitoring.calibration import CALIBRATION_FILE
from pipelines.cli.retrain import StepRunner

TRIGGERS = get_args(RetrainingSpec.model_fields["trigger"].annotation)
TRAIN_ON = get_args(RetrainingSpec.model_fields["train_on"].annotation)
DEFAULT_POLICIES = ("never", "scheduled/warm_replay", "scheduled/sliding", "scheduled/expanding",
                    "alert/warm_replay", "alert/expanding")
QUICK_POLICIES = ("never", "scheduled/warm_replay", "scheduled/expanding", "alert/warm_replay")


@dataclass(frozen=True)
class RetrainPolicy:
    trigger: str
    train_on: str = "warm_replay"
    passing_challenger: str = "champion"  # or "shadow": promoted only on the next month's live evidence

    @property
    def name(self) -> str:
        if self.trigger == "never":
            return "never"
        return f"{self.trigger}/{self.train_on}" + ("/shadow" if self.passing_challenger == "shadow" else "")

    @classmethod
    def parse(cls, text: str) -> RetrainPolicy:
        trigger, *rest = text.strip().split("/")
        train_on, shadow = (rest[0], rest[1:]) if rest else ("", [])
        known = trigger in TRIGGERS and (not train_on or train_on in TRAIN_ON) and shadow in ([], ["shadow"])
        if not known or (trigger == "never") != (not train_on):
            raise ValueError(f"policy {text!r}: write `never` or `<trigger>/<train_on>[/shadow]` with trigger in "
                             f"{', '.join(t for t in TRIGGERS if t != 'never')} and train_on in {', '.join(TRAIN_ON)}; "
                             "`/shadow`: a passing challenger is shadow until the next month's labels decide")
        return cls(trigger, train_on or "warm_replay", "shadow" if shadow else "champion")

    def config(self, cfg: ProjectConfig, seed: int, workspace: Path,
               overrides: dict[str, dict[str, Any]] | None = None) -> ProjectConfig:
        """`cfg` with this policy, `seed`, its own Evidently workspace and `overrides` (section ->
        fields), validated again as a whole."""
        raw = cfg.model_dump(mode="json", exclude_none=True)
        raw["retraining"].update(trigger=self.trigger, train_on=self.train_on)
        raw["registry"]["passing_challenger"] = self.passing_challenger
        raw["training"]["seed"] = seed
        raw["monitoring"]["workspace"] = str(workspace)
        for section, fields in (overrides or {}).items():
            raw[section].update(fields)
        return parse_config(raw, f"<policy {self.name}, seed {seed}>")


def _mtlops(args: list[str], store: Path, log: Path, threads: int | None) -> None:
    env = {**os.environ, "BENTOML_HOME": str(store), "COLUMNS": "160"}
    if threads and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)  # torch, sklearn and numpy's pools: jobs × threads ≤ the cores
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                              env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"mtlops {args[0]} failed ({proc.returncode}); its output: {log}")


def _keep_calibration(run_store: Path, initial_store: Path) -> None:
    """The first replay calibrated the initial model's drift thresholds (stored in its folder, see
    monitoring/calibration.py): later policies copy a store that already has them. Written under a temporary
    name and renamed, so a replay copying the store meanwhile sees the file whole or not at all."""
    for version in (initial_store / "models").glob("*/*/"):
        found = run_store / version.relative_to(initial_store) / CALIBRATION_FILE
        if found.exists() and not (version / CALIBRATION_FILE).exists():
            partial = version / f".{CALIBRATION_FILE}.{os.getpid()}-{id(found)}"
            shutil.copy2(found, partial)
            os.replace(partial, version / CALIBRATION_FILE)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _initial_champion(cfg: ProjectConfig, seed: int, seed_dir: Path, data_root: Path,
                      overrides: dict[str, dict[str, Any]] | None, threads: int | None) -> Path:
    """The seed's initial champion (`mtlops run`), trained once: its model store."""
    initial = seed_dir / "initial-store"
    if not (seed_dir / "initial.done").exists():
        shutil.rmtree(initial, ignore_errors=True)
        seed_dir.mkdir(parents=True, exist_ok=True)
        base = RetrainPolicy("never").config(cfg, seed, seed_dir / "evidently", overrides)
        (seed_dir / "config.yaml").write_text(config_to_yaml(base))
        _mtlops(["run", "--config", str(seed_dir / "config.yaml"), "--root", str(data_root),
                 "--pipeline-root", str(seed_dir / "kfp")], initial, seed_dir / "initial.log", threads)
        (seed_dir / "initial.done").touch()
    return initial


def _replay(cfg: ProjectConfig, seed: int, policy: RetrainPolicy, initial: Future[Path], run_dir: Path,
            data_root: Path, months: list[str], overrides: dict[str, dict[str, Any]] | None,
            threads: int | None, steps: StepRunner) -> dict:
    """One (seed, policy) replay from a copy of the seed's initial store (replayed once: a finished one is
    read back): its record."""
    if not (run_dir / "rows.json").exists():
        store = initial.result()
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        shutil.copytree(store, run_dir / "store")
        (run_dir / "config.yaml").write_text(config_to_yaml(policy.config(cfg, seed, run_dir / "evidently",
                                                                          overrides)))
        t0 = time.perf_counter()
        _mtlops(["simulate", "--config", str(run_dir / "config.yaml"), "--root", str(data_root),
                 "--months", f"{months[0]}..{months[-1]}", "--out", str(run_dir), "--steps", steps], run_dir / "store",
                run_dir / "simulate.log", threads)
        (run_dir / "wall_s").write_text(f"{time.perf_counter() - t0:.1f}")
        _keep_calibration(run_dir / "store", store)
    return {"seed": seed, "policy": policy.name, "wall_s": float((run_dir / "wall_s").read_text()),
            "rows": json.loads((run_dir / "rows.json").read_text())}


def replay_policies(cfg: ProjectConfig, data_root: Path, months: list[str], policies: list[RetrainPolicy],
                    seeds: list[int], out_dir: Path, overrides: dict[str, dict[str, Any]] | None = None,
                    jobs: int = 1, steps: StepRunner = "in-process") -> list[dict]:
    """One record per (seed, policy): its month rows (`MonthRow` as dicts) and wall time. `jobs` replays
    run at once, each process on cores/jobs threads; a seed's replays start once its initial champion is
    trained. `steps`: how each retrain runs the retraining pipeline (see `pipelines.cli.retrain.retrain`)."""
    from rich.progress import Progress

    out_dir = out_dir.resolve()
    threads = max(1, available_cores() // jobs) if jobs > 1 else None
    with Progress() as progress, ThreadPoolExecutor(max_workers=jobs) as pool:
        job = progress.add_task(f"policy replay, {jobs} at a time", total=len(seeds) * (1 + len(policies)))

        def step_done(_: Future) -> None:
            progress.advance(job)

        initials: dict[int, Future[Path]] = {}
        for seed in seeds:
            initials[seed] = pool.submit(_initial_champion, cfg, seed, out_dir / f"seed-{seed}", data_root,
                                         overrides, threads)
            initials[seed].add_done_callback(step_done)
        # submitted after every initial, so a worker that takes a replay finds its seed's initial started
        replays = [pool.submit(_replay, cfg, seed, policy, initials[seed],
                               out_dir / f"seed-{seed}" / policy.name.replace("/", "-"), data_root, months,
                               overrides, threads, steps)
                   for seed in seeds for policy in policies]
        for replay in replays:
            replay.add_done_callback(step_done)
        try:
            records = [replay.result() for replay in replays]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    (out_dir / "records.json").write_text(json.dumps(records, indent=1))
    return records


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _promotions(row: dict) -> int:
    """Promotions in a month: the retrain's (offline gate) and the shadow's (live evidence)."""
    return int(row["retrain"] == "promoted") + int(row.get("shadow") == "promoted")


def summarize(records: list[dict], cfg: ProjectConfig) -> tuple[list[dict], list[dict]]:
    """(per month and policy, per policy) aggregates over seeds."""
    primary = cfg.primary_task.name
    sign = 1.0 if higher_is_better(cfg.primary_task.metric) else -1.0  # gains: positive is better
    policies = list(dict.fromkeys(r["policy"] for r in records))
    months = [row["month"] for row in records[0]["rows"]]
    monthly, overall = [], []
    for policy in policies:
        runs = [r for r in records if r["policy"] == policy]
        worse = 0
        for i, month in enumerate(months):
            rows = [r["rows"][i] for r in runs]
            diff = _mean_std([sign * (row["served"][primary] - row["never_retrained"][primary]) for row in rows])
            worse += diff[0] < -diff[1] if diff[1] > 0 else diff[0] < 0
            monthly.append({"policy": policy, "month": month,
                            "served": {t.name: _mean_std([row["served"][t.name] for row in rows]) for t in cfg.tasks},
                            "vs_never": diff,
                            "retrains": sum(bool(row["retrain"]) for row in rows) / len(rows),
                            "promoted": sum(_promotions(row) for row in rows) / len(rows),
                            "alerts": sum(row["alert"] == "alert" for row in rows) / len(rows),
                            "train_flops": float(np.mean([row["train_flops"] for row in rows])),
                            "retrain_s": float(np.mean([row["retrain_s"] for row in rows]))})
        per_seed_mean = [np.mean([row["served"][primary] for row in r["rows"]]) for r in runs]
        per_seed_gain = [np.mean([sign * (row["served"][primary] - row["never_retrained"][primary])
                                  for row in r["rows"]]) for r in runs]
        overall.append({"policy": policy, "primary_mean": _mean_std(per_seed_mean),
                        "vs_never": _mean_std(per_seed_gain), "months_worse": worse,
                        "retrains": float(np.mean([sum(bool(x["retrain"]) for x in r["rows"]) for r in runs])),
                        "promoted": float(np.mean([sum(_promotions(x) for x in r["rows"]) for r in runs])),
                        "shadow_rejected": float(np.mean([sum(x.get("shadow") == "rejected" for x in r["rows"])
                                                          for r in runs])),
                        "alerts": float(np.mean([sum(x["alert"] == "alert" for x in r["rows"]) for r in runs])),
                        "train_flops": float(np.mean([sum(x["train_flops"] for x in r["rows"]) for r in runs])),
                        "wall_s": float(np.mean([r["wall_s"] for r in runs]))})
    return monthly, overall


def forgetting(records: list[dict], cfg: ProjectConfig) -> list[dict]:
    """Per policy, over the promotions of every seed: the worst relative change of a task's metric on
    the old window (challenger vs the champion it replaced; positive is better) against that task's
    tolerance: `margin` is change + tolerance, and the gate refuses a negative one."""
    out = []
    for policy in dict.fromkeys(r["policy"] for r in records):
        promoted = [row["gate"] for r in records if r["policy"] == policy for row in r["rows"]
                    if row["retrain"] == "promoted"]
        worst = None
        for gate in promoted:
            for task in cfg.tasks:
                key = f"old.{task.name}"
                tolerance = cfg.gate_tolerance(task.name)
                change = relative_change(task.metric, gate["challenger"][key], gate["champion"][key])
                if worst is None or change + tolerance < worst["margin"]:
                    worst = {"task": task.name, "change": change, "tolerance": tolerance,
                             "margin": change + tolerance}
        out.append({"policy": policy, "promotions": len(promoted), "worst": worst})
    return out


def _pm(value: tuple[float, float], digits: int = 4) -> str:
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def policy_markdown(records: list[dict], cfg: ProjectConfig) -> str:
    monthly, overall = summarize(records, cfg)
    primary = cfg.primary_task
    seeds = sorted({r["seed"] for r in records})
    lines = [f"Seeds: {', '.join(map(str, seeds))}; mean ± std over seeds. `vs never`: paired gain in "
             f"{primary.name} {primary.metric} over the never-retrained model (the same seed's initial champion; "
             "positive is better).", "",
             f"| policy | mean {primary.name} {primary.metric} | vs never | months worse than never (beyond noise) "
             "| retrains | promoted | shadows rejected | alerts | training TFLOPs | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for o in overall:
        lines.append(f"| {o['policy']} | {_pm(o['primary_mean'])} | {o['vs_never'][0]:+.4f} ± {o['vs_never'][1]:.4f} "
                     f"| {o['months_worse']} | {o['retrains']:.1f} | {o['promoted']:.1f} | {o['shadow_rejected']:.1f} "
                     f"| {o['alerts']:.1f} "
                     f"| {o['train_flops'] / 1e12:.2f} | {o['wall_s']:.0f} |")
    task_cols = " | ".join(f"{t.name} {t.metric}" for t in cfg.tasks)
    lines += ["", f"| policy | month | {task_cols} | vs never | retrains | alerts | TFLOPs | retrain s |",
              "|---|---|" + "---|" * len(cfg.tasks) + "---|---|---|---|---|"]
    for m in monthly:
        cells = " | ".join(_pm(m["served"][t.name]) for t in cfg.tasks)
        lines.append(f"| {m['policy']} | {m['month']} | {cells} | {m['vs_never'][0]:+.4f} ± {m['vs_never'][1]:.4f} "
                     f"| {m['retrains']:.1f} | {m['alerts']:.1f} | {m['train_flops'] / 1e12:.2f} "
                     f"| {m['retrain_s']:.0f} |")
    lines += ["", "Forgetting: over every promotion of every seed, the task whose metric on the old window moved "
              "most against its tolerance (challenger vs the champion it replaced; positive is better).", "",
              "| policy | promotions | worst old-window change | task | its tolerance |", "|---|---|---|---|---|"]
    for f in forgetting(records, cfg):
        w = f["worst"]
        lines.append(f"| {f['policy']} | {f['promotions']} | " + ("— | — | — |" if w is None else
                     f"{w['change']:+.2%} | {w['task']} | {w['tolerance']:.1%} |"))
    return "\n".join(lines) + "\n"


def policy_plot(records: list[dict], cfg: ProjectConfig, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monthly, _ = summarize(records, cfg)
    fig, axes = plt.subplots(1, len(cfg.tasks), figsize=(4.2 * len(cfg.tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], cfg.tasks, strict=True):
        for policy in dict.fromkeys(m["policy"] for m in monthly):
            rows = [m for m in monthly if m["policy"] == policy]
            ax.errorbar([m["month"][2:] for m in rows], [m["served"][task.name][0] for m in rows],
                        yerr=[m["served"][task.name][1] for m in rows], marker="o", capsize=2, label=policy,
                        linestyle="--" if policy == "never" else "-")
        ax.set_title(f"{task.name} {task.metric}" + (" (primary)" if task.primary else ""))
        ax.tick_params(axis="x", labelrotation=45)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("served model per month and retraining policy (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
