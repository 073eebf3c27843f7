"""Shadow-then-promote against the offline gate, on the policy replay.

    python -m benchmarks.shadow_policy                  # Jul-Dec 2013, seeds 0,1,2, three data scenarios
    python -m benchmarks.shadow_policy --quick          # Jul-Sep, a quarter of the rows, 3 epochs

Two policies retrain every month on the new month plus a replay sample (`scheduled/warm_replay`): the
offline gate promotes a passing challenger at once; with `/shadow` it becomes the shadow, scored beside
the champion on the next month and promoted or rejected on that month's labels (`mtlops simulate`'s
`judge_shadow`, the decision `mtlops shadow decide` takes). Three data scenarios, each replayed with both
policies from the same initial champions: the data as it is, and two where one month (August: what the
end-of-August retrain trains and is gated on) carries a broken upstream column, fixed from September:
the weather unit bug (`temp` in °C at EWR only) and a unit change of a feature one task leans on
(`distance` in km for every flight). Per scenario and policy: the served primary metric against the
never-retrained model, promotions, shadows rejected, and each month's decisions from August on.
Writes benchmarks/results/shadow_policy.md (`--quick`: shadow_policy_quick.md); a finished replay is
read back, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from benchmarks.common import RESULTS, ROOT
from components.config.schema import ProjectConfig, load_config
from components.data.tables import partition_dir, partitions_for
from components.data.versioning import track_files
from pipelines.cli.policy_replay import RetrainPolicy, available_cores, policy_markdown, replay_policies

BROKEN_MONTH = "2013-08"
POLICIES = (RetrainPolicy("scheduled", "warm_replay"), RetrainPolicy("scheduled", "warm_replay", "shadow"))
QUICK = {"data": {"sample_fraction": 0.25}, "training": {"epochs": 3}, "retraining": {"replay_rows": 12_500},
         "monitoring": {"sample_size": 5000, "calibration_draws": 50}}


def temp_celsius_at_ewr(rows: pd.DataFrame) -> pd.DataFrame:
    at = rows["origin"] == "EWR"
    return rows.assign(temp=rows["temp"].where(~at, (rows["temp"] - 32) * 5 / 9))


def distance_in_km(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(distance=rows["distance"] * 1.609344)


SCENARIOS: dict[str, Callable[[pd.DataFrame], pd.DataFrame] | None] = {
    "clean": None,
    f"temp in °C at EWR in {BROKEN_MONTH}": temp_celsius_at_ewr,
    f"distance in km in {BROKEN_MONTH}": distance_in_km,
}


def clean_root(cfg: ProjectConfig, config_path: Path, out: Path) -> Path:
    """The config's partitions built once (`mtlops data build`, DVC-tracked, no git) under `out`."""
    root = out / "data-clean"
    if not (root / "built").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "pipelines.cli", "data", "build", "--config", str(config_path),
                        "--root", str(root)], check=True, cwd=ROOT, capture_output=True)
        (root / "built").touch()
    return root


def broken_root(cfg: ProjectConfig, clean: Path, out: Path, name: str,
                fault: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    """A copy of the clean partitions with `fault` applied to BROKEN_MONTH's, tracked again (its lineage
    names the broken file, as a real upstream fault would leave it)."""
    root = out / f"data-{name.split()[0]}"
    if not (root / "built").exists():
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(clean, root)
        start = pd.Timestamp(f"{BROKEN_MONTH}-01")
        [path] = partitions_for(cfg, partition_dir(cfg, root), start, start + pd.offsets.MonthBegin(1))
        fault(pd.read_parquet(path)).to_parquet(path, index=False)
        track_files(root, [path])
        (root / "built").touch()
    return root


def seed_initials(source: Path, target: Path, seeds: list[int]) -> None:
    """The clean scenario's initial champions for another scenario's replays: the initial training window
    (before July) is the same in every scenario, so it is trained once."""
    for seed in seeds:
        src, dst = source / f"seed-{seed}", target / f"seed-{seed}"
        if (src / "initial.done").exists() and not (dst / "initial.done").exists():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src / "initial-store", dst / "initial-store", dirs_exist_ok=True)
            shutil.copy(src / "config.yaml", dst / "config.yaml")
            (dst / "initial.done").touch()


def decisions_table(records_by_scenario: dict[str, list[dict]], months: list[str]) -> str:
    """Per scenario, policy and seed, each month's retrain outcome and shadow decision from the broken month on."""
    shown = [m for m in months if m >= BROKEN_MONTH]
    lines = ["| scenario | policy | seed | " + " | ".join(shown) + " |", "|---|---|---|" + "---|" * len(shown)]
    for scenario, records in records_by_scenario.items():
        for r in records:
            cells = []
            for row in r["rows"]:
                if row["month"] in shown:
                    why = f" ({row['retrain_error'][:100]})" if row.get("retrain_error") else ""
                    parts = [f"retrain {row['retrain']}{why}" if row["retrain"] else "",
                             f"shadow {row['shadow']}" if row.get("shadow") else "",
                             row["alert"] if row["alert"] else ""]
                    cells.append("; ".join(p for p in parts if p) or "—")
            lines.append(f"| {scenario} | {r['policy']} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "flights.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=min(2, available_cores()))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "shadow-policy")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    seeds = [int(s) for s in args.seeds.split(",")]
    months = ["2013-07", "2013-08", "2013-09"] if args.quick else \
        [str(m) for m in pd.period_range("2013-07", "2013-12", freq="M")]
    out = (args.out / ("quick" if args.quick else "full")).resolve()
    clean = clean_root(cfg, args.config, out)
    t0 = time.perf_counter()
    records: dict[str, list[dict]] = {}
    for scenario, fault in SCENARIOS.items():
        scenario_dir = out / scenario.split()[0]
        root = clean if fault is None else broken_root(cfg, clean, out, scenario, fault)
        seed_initials(out / "clean", scenario_dir, seeds)
        records[scenario] = replay_policies(cfg, root, months, list(POLICIES), seeds, scenario_dir,
                                            QUICK if args.quick else None, args.jobs, "in-process")
    wall = time.perf_counter() - t0
    command = "python -m benchmarks.shadow_policy " + " ".join(argv if argv is not None else sys.argv[1:])
    text = [f"# Shadow-then-promote vs the offline gate\n\nCommand: `{command.strip()}` ({wall / 60:.0f} min on "
            f"{available_cores()} cores, {args.jobs} replays at a time; retrains run the retraining pipeline's "
            f"steps in the replay's Python). Months {months[0]}..{months[-1]}; the broken scenarios alter "
            f"{BROKEN_MONTH}'s partition only.\n"]
    for scenario, recs in records.items():
        text += [f"## {scenario}\n", policy_markdown(recs, cfg).split("\n\n| policy | month |")[0] + "\n"]
    text += [f"## Decisions from {BROKEN_MONTH} on\n\nA retrain at the end of a month is gated on that month's last "
             "rows (and the old window); a shadow is judged on the next month's labelled records.\n",
             decisions_table(records, months)]
    path = RESULTS / ("shadow_policy_quick.md" if args.quick else "shadow_policy.md")
    path.write_text("\n".join(text))
    print("\n".join(text))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
