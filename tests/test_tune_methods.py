"""The tuning benchmark's search spaces: each knob lands on the config field it names at both ends of its range,
trial 0 is the untuned setting of mtl_methods.py, and a knob never switches on a part a method does not use."""

from __future__ import annotations

import copy

import pytest

from benchmarks import common
from benchmarks import tune_methods as tune
from components.config.schema import ProjectConfig, load_config
from components.training.stl import single_task_config
from tests.conftest import FLIGHTS

EPOCHS = 8
BASE = common.bench_config(load_config(FLIGHTS), EPOCHS, threads=1, device="cpu")


def method_configs() -> dict[str, ProjectConfig]:
    """Every network model the benchmark tunes: each method's config and each task's STL config."""
    out = {f"STL/{t.name}": single_task_config(BASE, t.name) for t in BASE.tasks}
    for name, settings in common.methods(BASE).items():
        settings = copy.deepcopy(settings)
        out[name] = common.with_training(BASE, model=settings.pop("model", None), **settings)
    return out


def dump(cfg: ProjectConfig) -> dict:
    return cfg.model_dump(mode="json", exclude_none=True)


def ends(knob: tune.Knob) -> list:
    return list(knob.choices) or [knob.low, knob.high]


@pytest.mark.parametrize("name", list(method_configs()))
def test_every_knob_at_both_ends_sets_the_field_it_names(name: str) -> None:
    cfg = method_configs()[name]
    knobs = tune.network_space(cfg)
    start = tune.start_values(dump(cfg), knobs)
    for knob in knobs:
        for value in ends(knob):
            tuned = dump(tune.tuned_config(cfg, knobs, start | {knob.path: value}))
            expected = [int(w) for w in value.split("-")] if knob.layers else value
            assert tune._at(tuned, knob.path) == expected, (name, knob.path)


@pytest.mark.parametrize("name", list(method_configs()))
def test_trial_zero_is_the_untuned_setting(name: str) -> None:
    cfg = method_configs()[name]
    knobs = tune.network_space(cfg)
    start = tune.start_values(dump(cfg), knobs)
    assert set(start) == {k.path for k in knobs}  # every default lies in its range: nothing is left to sample
    assert tune.tuned_config(cfg, knobs, start) == cfg


def test_lightgbm_trial_zero_is_the_untuned_booster() -> None:
    start = tune.start_values(common.LGBM_PARAMS, tune.LIGHTGBM_SPACE)
    assert set(start) == {k.path for k in tune.LIGHTGBM_SPACE}
    assert tune.with_values(common.LGBM_PARAMS, tune.LIGHTGBM_SPACE, start) == common.LGBM_PARAMS


def test_each_method_searches_the_knobs_of_the_parts_it_uses() -> None:
    configs = method_configs()
    shared = [k.path for k in tune.network_space(BASE)]
    own = {name: [k.path for k in tune.network_space(c)][len(shared):] for name, c in configs.items()}
    assert own["EW"] == own["UW"] == own["STL/arr_delayed"] == []
    assert own["DWA"] == ["training.strategy.temperature"]
    assert own["MT2ST-Diminish+Switch"] == ["training.mt2st.diminish.eta", "training.mt2st.diminish.nu",
                                            "training.mt2st.switch.epoch"]
    switch = next(k for k in tune.network_space(configs["MT2ST-Switch"]) if k.path.endswith("switch.epoch"))
    assert (switch.low, switch.high) == (1, EPOCHS - 1)  # a switch at the last epoch is refused by the config
    assert own["Rep-MTL"] == ["training.rep_mtl.lambda_tsr", "training.rep_mtl.lambda_csa", "training.rep_mtl.tau",
                              "model.head_hidden"]
    assert own["MMoE"] == ["model.experts"]
    assert own["shared_private"] == ["model.private_hidden", "model.similarity_penalty"]
    assert own["EW+periodic+towers"] == ["model.head_hidden", "model.numeric_sigma", "model.numeric_frequencies"]


def test_a_knob_for_a_part_the_method_does_not_use_is_refused() -> None:
    tau = tune.Knob("training.rep_mtl.tau", 0.05, 2.0, log=True)
    with pytest.raises(KeyError, match=r"training\.rep_mtl\.tau.*'rep_mtl' is not set"):
        tune.with_values(dump(BASE), [tau], {tau.path: 0.5})


def test_a_default_outside_a_range_is_clamped_and_one_outside_the_choices_is_sampled() -> None:
    lr = tune.Knob("training.lr", 1e-3, 1e-2, log=True)
    hidden = tune.Knob("model.hidden", choices=("128-64",), layers=True)
    assert tune.start_values(dump(BASE), [lr, hidden]) == {"training.lr": 2e-3}  # the config's [256, 128]
    assert tune.start_values({"training": {"lr": 1e-4}}, [lr]) == {"training.lr": 1e-3}


def test_a_diverging_trial_fails_within_the_budget_and_the_study_goes_on() -> None:
    """The study loop with a stand-in `fit` (the real trainer's divergence error: tests/test_train.py)."""
    import optuna

    from components.training.train import TrainingDiverged

    def fit(values: dict, window: object, seed: int) -> object:
        if values["training.lr"] > 0.02:
            raise TrainingDiverged("training diverged in epoch 1")
        return common.RunResult({BASE.primary_task.name: values["training.lr"]}, 1.0, None)

    knobs = [tune.Knob("training.lr", 1e-3, 1e-1, log=True)]
    candidate = tune.Candidate("lr-only", BASE.primary_task, knobs, {"training.lr": 0.05}, fit)
    seen: list[int] = []
    study = tune.tune(candidate, optuna.storages.InMemoryStorage(), 12, {"config": "test"}, None, seen.append)
    states = [t.state for t in study.trials]
    assert len(states) == 12 and sum(seen) == 12
    assert states[0] == optuna.trial.TrialState.FAIL  # trial 0, the untuned 0.05, diverged
    assert optuna.trial.TrialState.COMPLETE in states and study.best_value <= 0.02
    failed = states.count(optuna.trial.TrialState.FAIL)
    assert f"| {len(states) - failed} + {failed} diverged |" in tune.best_settings_table({"m": [candidate]},
                                                                                          {"lr-only": study})
