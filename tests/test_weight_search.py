"""Weight search: a static-weight sweep on a small model, and PBT whose bottom members become copies of top ones."""

from __future__ import annotations

import math
import pickle
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from components.config.schema import ProjectConfig, load_config
from components.training.weight_search import (
    exploit_and_explore,
    exploit_files,
    population_based_training,
    select_best,
    sweep_static_weights,
)
from tests.conftest import FLIGHTS, config_with, window


@pytest.fixture(scope="module")
def small(flights_frame: pd.DataFrame, flights_cfg: ProjectConfig) -> tuple[ProjectConfig, pd.DataFrame, pd.DataFrame]:
    cfg = config_with(FLIGHTS, model={"hidden": [16]}, training={"epochs": 2, "threads": 2, "batch_size": 512})
    return (cfg, window(flights_frame, cfg, "train").iloc[::4].reset_index(drop=True),
            window(flights_frame, cfg, "validation").iloc[::4].reset_index(drop=True))


def test_pbt_replaces_bottom_members_with_perturbed_copies_of_top_members(small: tuple) -> None:
    cfg, train_df, val_df = small
    result = population_based_training(cfg, train_df, val_df, population=4, interval=1, replace=1, rounds=2)
    assert len(result.rounds) == 2 and len(result.replaced) == 1 and len(result.schedule) == 2
    (bottom, top), = result.replaced[0]
    first = result.rounds[0]
    assert first[bottom] == min(first) and first[top] == max(first)  # ROC-AUC: higher is better
    copied = result.members[bottom]
    assert copied.schedule[0] == result.members[top].schedule[0]  # it inherited the top member's lineage
    # explore: each weight multiplied by 0.8 or 1.2 before renormalising, so ratios between tasks are 1, 1.5 or 2/3
    ratios = [copied.schedule[1][k] / result.members[top].schedule[0][k] for k in copied.weights]
    assert all(any(math.isclose(a / b, q) for q in (1.0, 1.5, 2 / 3)) for a in ratios for b in ratios)
    assert math.isclose(sum(copied.schedule[1].values()), 1.0)
    assert result.train_flops > 0 and all(0.5 < s < 1 for s in result.rounds[-1])

    # exploit copies the model itself: right after it, the bottom member computes exactly what the top one does
    members = result.members
    for i, m in enumerate(members):
        m.score = float(i)
    pairs = exploit_and_explore(members, replace=1, higher_is_better=True, rng=random.Random(0))
    assert pairs == [(0, 3)]
    for a, b in zip(members[0].model.state_dict().values(), members[3].model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # and the optimizer state: AdamW's moments of the copy are the top member's, parameter by parameter
    copied_state, top_state = members[0].optimizer.state_dict()["state"], members[3].optimizer.state_dict()["state"]
    assert copied_state.keys() == top_state.keys() and copied_state
    for index, moments in top_state.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(copied_state[index][key], moments[key])


def test_static_weight_sweep_ranks_trials_on_the_small_model(small: tuple, tmp_path: Path) -> None:
    cfg, train_df, val_df = small
    results = sweep_static_weights(cfg, train_df, val_df, str(tmp_path), trials=3, small_hidden=[8], seed=1)
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert all(math.isclose(sum(w.values()), 1.0) for w, _ in results)
    assert any(len(set(w.values())) == 1 for w, _ in results)  # trial 0: equal weights
    assert (tmp_path / "trial-0" / "model.pt").is_file()
    # each trial trained with its own weights: the config it ran with names them (and the small model)
    trained = [load_config(tmp_path / f"trial-{i}" / "config.yaml") for i in range(3)]
    assert all(c.training.strategy.name == "static" and c.model.hidden == [8] for c in trained)
    assert sorted(tuple(sorted(c.training.strategy.weights.items())) for c in trained) == sorted(  # type: ignore[union-attr]
        tuple(sorted(w.items())) for w, _ in results)


class _RunsCode:
    """A pickle that runs code when loaded without `weights_only`: it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_pbt_refuses_member_states_that_are_not_plain_data(small: tuple, tmp_path: Path) -> None:
    """Whoever can write the artifact store must not be able to run code in the next PBT step."""
    cfg = small[0]
    marker = tmp_path / "code-ran"
    poisoned = tmp_path / "member-0.pt"
    torch.save({"member": 0, "weights": {t.name: 0.25 for t in cfg.tasks}, "score": 0.5, "schedule": [],
                "payload": _RunsCode(marker)}, poisoned)
    with pytest.raises(pickle.UnpicklingError):
        exploit_files(cfg, [str(poisoned)], replace=1, seed=0, population_dir=str(tmp_path / "next"))
    with pytest.raises(pickle.UnpicklingError):
        select_best(cfg, [str(poisoned)], str(tmp_path / "best.pt"))
    assert not marker.exists()
    torch.load(poisoned, weights_only=False)  # the same file, unpickled freely: the code runs
    assert marker.exists()
