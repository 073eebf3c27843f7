"""The policy replay's forgetting table, on hand-made records: the worst old-window change of a
promoted model is the one closest to (or past) its task's tolerance, not the largest drop."""

from __future__ import annotations

from components.config.schema import ProjectConfig
from pipelines.cli.policy_replay import forgetting, policy_markdown


def _row(month: str, retrain: str, challenger: dict[str, float], champion: dict[str, float]) -> dict:
    served = {"arr_delayed": 0.70, "dep_delay": 20.0, "cancelled": 0.85, "air_time": 10.0}
    gate = {"challenger": {f"old.{k}": v for k, v in challenger.items()},
            "champion": {f"old.{k}": v for k, v in champion.items()}} if retrain else {}
    return {"month": month, "retrain": retrain, "alert": "", "served": served, "never_retrained": served,
            "train_flops": 0.0, "retrain_s": 0.0, "gate": gate}


def test_forgetting_reports_the_promotion_closest_to_its_tolerance(flights_cfg: ProjectConfig) -> None:
    tolerance = {"arr_delayed": 0.05, "dep_delay": 0.10, "cancelled": 0.05, "air_time": 0.02}
    cfg = flights_cfg.model_copy(update={"tasks": [t.model_copy(update={"tolerance": tolerance[t.name]})
                                                   for t in flights_cfg.tasks]})
    champion = {"arr_delayed": 0.70, "dep_delay": 20.0, "cancelled": 0.85, "air_time": 10.0}
    # dep_delay's MAE 5% worse is half its 10% tolerance; air_time's 1.5% worse is 3/4 of its 2%
    first = {**champion, "dep_delay": 21.0}
    second = {**champion, "air_time": 10.15, "arr_delayed": 0.71}
    records = [{"seed": 0, "policy": "never", "wall_s": 1.0, "rows": [_row("2013-07", "", {}, {})]},
               {"seed": 0, "policy": "scheduled/warm_replay", "wall_s": 1.0,
                "rows": [_row("2013-07", "promoted", first, champion), _row("2013-08", "rejected", champion, first)]},
               {"seed": 1, "policy": "scheduled/warm_replay", "wall_s": 1.0,
                "rows": [_row("2013-07", "promoted", second, champion), _row("2013-08", "", {}, {})]}]
    by_policy = {f["policy"]: f for f in forgetting(records, cfg)}
    assert by_policy["never"] == {"policy": "never", "promotions": 0, "worst": None}
    worst = by_policy["scheduled/warm_replay"]["worst"]
    assert by_policy["scheduled/warm_replay"]["promotions"] == 2
    assert worst["task"] == "air_time" and abs(worst["change"] + 0.015) < 1e-12 and worst["tolerance"] == 0.02
    assert "| scheduled/warm_replay | 2 | -1.50% | air_time | 2.0% |" in policy_markdown(records, cfg)
