"""Weighting strategies, MT2ST schedules and STL: short real runs on a small flights slice, each asserting the
method's defining behaviour, and config errors that name the field."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from components.config.schema import ConfigError, ProjectConfig
from components.data.features import FeatureSpec
from components.data.tables import label_column
from components.training.architectures.hps import HardSharingModel
from components.training.mt2st import Mt2stSchedule
from components.training.rep_mtl import RepMtlTerm
from components.training.stl import train_stl
from components.training.strategies import STRATEGIES, Weighting, make_strategy
from components.training.strategies.jacobian import JacobianWeighting
from components.training.train import (
    CHECKPOINT,
    EpochPlan,
    StepContext,
    TrainResult,
    make_autocast,
    to_tensors,
    train,
    train_step,
)
from tests.conftest import FLIGHTS, config_with, window

TASKS = ["arr_delayed", "dep_delay", "cancelled", "air_time"]
AUX = TASKS[1:]

JACOBIAN_METHODS = [n for n, cls in STRATEGIES.items() if issubclass(cls, JacobianWeighting)]


def small_cfg(strategy: dict | None = None, mt2st: dict | None = None, epochs: int = 3) -> ProjectConfig:
    training = {"epochs": epochs, "threads": 2, "batch_size": 512, "early_stopping_patience": epochs,
                "strategy": strategy or {"name": "ew"}, "mt2st": mt2st}  # not the config's default schedule
    return config_with(FLIGHTS, model={"hidden": [32, 16]}, training=training)


@pytest.fixture(scope="module")
def slices(flights_frame: pd.DataFrame, flights_cfg: ProjectConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (window(flights_frame, flights_cfg, "train").iloc[::3].reset_index(drop=True),
            window(flights_frame, flights_cfg, "validation").iloc[::3].reset_index(drop=True))


def run(cfg: ProjectConfig, slices: tuple[pd.DataFrame, pd.DataFrame], out: Path) -> TrainResult:
    return train(cfg, slices[0], slices[1], out, progress=False)


def total_train_loss(result: TrainResult, epoch: int) -> float:
    return sum(result.history[epoch]["train_loss"].values())


@pytest.mark.parametrize("name", [n for n in STRATEGIES if n != "ew"])  # every method beside the baseline
def test_strategy_trains_and_shows_its_behaviour(name: str, slices: tuple, tmp_path: Path) -> None:
    strategy = {"name": name, "weights": {"arr_delayed": 2, "dep_delay": 1}} if name == "static" else {"name": name}
    result = run(small_cfg(strategy), slices, tmp_path)
    assert total_train_loss(result, -1) < total_train_loss(result, 0), result.history
    assert result.validation["arr_delayed"]["roc_auc"] > 0.55
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)["strategy"]
    if name == "uw":  # the log-variances are learned, one per task, and differ between tasks
        log_vars = state["log_vars"]
        assert log_vars.abs().min() > 1e-3 and log_vars.std() > 1e-3, log_vars
    if name == "dwa":  # one mean loss per task and epoch; weights from the last two, summing to K
        assert len(state["history"]) == 3
        dwa = make_strategy(TASKS, small_cfg(strategy).training.strategy)
        dwa.load_state_dict(state)
        weights = dwa.current_weights()  # type: ignore[attr-defined]
        assert math.isclose(sum(weights.values()), len(TASKS)) and len(set(weights.values())) > 1


def test_static_weights_reach_each_tasks_gradient(slices: tuple) -> None:
    """`static` scales task k's loss by K·p_k: each head's gradient is K·p_k times its EW gradient (the weights a
    sweep or PBT member trains with reach the loss)."""
    cfg = small_cfg({"name": "static", "weights": {"arr_delayed": 4, "dep_delay": 2, "cancelled": 1, "air_time": 1}})
    spec = FeatureSpec.fit(slices[0], cfg)
    data = to_tensors(slices[0], spec)
    grads = []
    for strategy_spec in (small_cfg().training.strategy, cfg.training.strategy):
        torch.manual_seed(0)
        model = HardSharingModel(spec, cfg.model).eval()
        strategy = make_strategy(TASKS, strategy_spec).attach(model)
        train_step(StepContext(model, torch.optim.AdamW(model.parameters()), data, {t.name: t for t in cfg.tasks},
                               make_autocast(torch.device("cpu"))), EpochPlan(strategy), torch.arange(256))
        grads.append({n: model.heads[n].weight.grad.clone() for n in TASKS})  # type: ignore[union-attr]
    for name, share in zip(TASKS, (4 / 8, 2 / 8, 1 / 8, 1 / 8), strict=True):
        assert torch.allclose(grads[1][name], len(TASKS) * share * grads[0][name], atol=1e-7), name


def test_jacobian_aggregator_departs_from_the_sum_under_conflict() -> None:
    """MGDA on two opposed losses gives a different update than their plain sum (what torchjd is for)."""
    layer = torch.nn.Linear(2, 1)
    strategy = make_strategy(["a", "b"], small_cfg({"name": "mgda"}).training.strategy).attach(layer)
    x = torch.tensor([[1.0, 0.0]])
    losses = {"a": layer(x).sum(), "b": -0.5 * layer(x).sum()}
    weights = strategy.backward(losses)
    summed = torch.autograd.grad(sum(layer(x).sum() * w for w in (1.0, -0.5)), layer.weight)[0]
    assert not torch.allclose(layer.weight.grad, summed) and set(weights) == {"a", "b"}
    assert {float(w) for w in weights.values()} != {1.0}  # the aggregator's own weights are reported


def test_dwa_weights_are_equal_for_two_epochs_then_k_times_a_softmax_of_the_loss_ratios() -> None:
    dwa = make_strategy(["a", "b"], small_cfg({"name": "dwa", "temperature": 2.0}).training.strategy)

    def epoch(strategy: Weighting, loss_a: float, loss_b: float) -> list[float]:
        """Two steps whose losses average to (loss_a, loss_b); the weights the second step used."""
        for step_a in (loss_a - 0.1, loss_a + 0.1):
            used = strategy.backward({"a": torch.tensor(step_a, requires_grad=True),
                                      "b": torch.tensor(loss_b, requires_grad=True)})
        strategy.epoch_end()
        return [float(used["a"]), float(used["b"])]

    assert epoch(dwa, 0.8, 0.5) == [1.0, 1.0] and epoch(dwa, 0.2, 0.5) == [1.0, 1.0]  # under two epochs of history
    assert dwa.history == [pytest.approx({"a": 0.8, "b": 0.5}), pytest.approx({"a": 0.2, "b": 0.5})]
    # r = L(e-1)/L(e-2) = (0.25, 1.0); w = K·softmax(r / T) with K = 2, T = 2
    e_a, e_b = math.exp(0.25 / 2), math.exp(1.0 / 2)
    expected = pytest.approx([2 * e_a / (e_a + e_b), 2 * e_b / (e_a + e_b)])
    resumed = make_strategy(["a", "b"], dwa.spec)
    resumed.load_state_dict(dwa.state_dict())  # a checkpoint's DWA goes on with the same weights
    assert epoch(dwa, 0.4, 1.0) == expected and epoch(resumed, 0.4, 1.0) == expected


def test_uw_weighs_each_loss_by_half_its_precision_plus_half_its_log_variance() -> None:
    uw = make_strategy(["a", "b"], small_cfg({"name": "uw"}).training.strategy)
    s = torch.tensor([0.5, -1.0])
    with torch.no_grad():
        uw.parameters()[0].copy_(s)
    losses = torch.tensor([2.0, 3.0])
    used = uw.backward({"a": losses[0].clone().requires_grad_(), "b": losses[1].clone().requires_grad_()})
    assert torch.allclose(torch.stack([used["a"], used["b"]]), torch.exp(-s) / 2)
    # d/ds (e^-s·L/2 + s/2) = 1/2 − e^-s·L/2
    assert torch.allclose(uw.parameters()[0].grad, 0.5 - torch.exp(-s) * losses / 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", JACOBIAN_METHODS)
def test_jacobian_method_with_one_task_left_is_its_plain_gradient(name: str) -> None:
    """After MT2ST's switch one loss is left: its gradient as it is, weight 1."""
    layer = torch.nn.Linear(2, 1)
    strategy = make_strategy(["a", "b"], small_cfg({"name": name}).training.strategy).attach(layer)
    x = torch.tensor([[1.0, -2.0]])
    used = strategy.backward({"a": (layer(x) ** 2).sum()})
    expected = torch.autograd.grad((layer(x) ** 2).sum(), layer.weight)[0]
    assert torch.allclose(layer.weight.grad, expected) and {n: float(w) for n, w in used.items()} == {"a": 1.0}


def test_diminish_per_task_overrides_and_switch_pending() -> None:
    spec = small_cfg(mt2st={"diminish": {"eta": 0.1, "per_task": {"dep_delay": {"gamma0": 0.5, "nu": 2}}},
                            "switch": {"epoch": 2}}).training.mt2st
    schedule = Mt2stSchedule(spec, TASKS, "arr_delayed")
    weights = schedule.loss_weights(1.5)
    assert weights["dep_delay"] == pytest.approx(0.5 * math.exp(-0.1 * 1.5**2))  # its own γ0 and ν
    assert weights["cancelled"] == pytest.approx(math.exp(-0.1 * 1.5))  # the section's
    assert [schedule.switch_pending(e) for e in range(4)] == [True, True, False, False]
    diminish_only = Mt2stSchedule(small_cfg(mt2st={"diminish": {}}).training.mt2st, TASKS, "arr_delayed")
    assert not diminish_only.switch_pending(0) and not Mt2stSchedule(None, TASKS, "arr_delayed").switch_pending(0)


def test_uw_log_variances_follow_the_model_to_its_device() -> None:
    """A GPU run's UW would otherwise add CPU log-variances to CUDA losses; the meta device stands in for the GPU
    here (no GPU on this machine), as any device other than the CPU tells the two apart."""
    uw = make_strategy(["a", "b"], small_cfg({"name": "uw"}).training.strategy)
    uw.attach(torch.nn.Linear(2, 1, device="meta"))
    assert [p.device.type for p in uw.parameters()] == ["meta"]


@pytest.mark.parametrize("name", JACOBIAN_METHODS)
def test_jacobian_update_adds_to_a_gradient_already_there(name: str) -> None:
    """The step backpropagates Rep-MTL's regulariser and the architecture's penalty before the strategy: a
    Jacobian method's aggregate is added to that gradient, not written over it (docs/methods.md, "What reaches
    what")."""
    layer = torch.nn.Linear(2, 1)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    def aggregate(already: torch.Tensor | None) -> torch.Tensor:
        layer.weight.grad = None if already is None else already.clone()
        layer.bias.grad = None
        strategy = make_strategy(["a", "b"], small_cfg({"name": name}).training.strategy).attach(layer)
        strategy.backward({"a": layer(x)[0, 0], "b": -0.5 * layer(x)[1, 0] + layer(x)[0, 0] ** 2})
        return layer.weight.grad.clone()  # type: ignore[union-attr]

    already = torch.tensor([[0.25, -1.5]])
    assert torch.allclose(aggregate(already), aggregate(None) + already)


def test_diminish_weights_follow_the_formula(slices: tuple, tmp_path: Path) -> None:
    mt2st = {"diminish": {"gamma0": 0.8, "eta": 0.5, "nu": 1.5, "per_task": {"cancelled": {"eta": 2.0}}}}
    result = run(small_cfg(mt2st=mt2st), slices, tmp_path)
    assert total_train_loss(result, -1) < total_train_loss(result, 0)
    for epoch, entry in enumerate(result.history):
        w = entry["loss_weights"]
        assert w["arr_delayed"] == 1.0
        assert w["dep_delay"] == pytest.approx(0.8 * math.exp(-0.5 * epoch**1.5))
        assert w["cancelled"] == pytest.approx(0.8 * math.exp(-2.0 * epoch**1.5))


def test_gamma_scales_each_auxiliary_loss_in_the_step(slices: tuple) -> None:
    """MT2ST's γ reaches the loss: an auxiliary head's gradient under γ is γ times its gradient without it (EW,
    linear in each loss), the primary head's is untouched, and γ = 0 leaves the auxiliary heads a zero gradient."""
    cfg = small_cfg()
    spec = FeatureSpec.fit(slices[0], cfg)
    data = to_tensors(slices[0], spec)
    tasks = {t.name: t for t in cfg.tasks}
    gamma = {"arr_delayed": 1.0, "dep_delay": 0.25, "cancelled": 0.5, "air_time": 0.0}
    grads = []
    for scale in (None, gamma):
        torch.manual_seed(0)
        model = HardSharingModel(spec, cfg.model).eval()
        strategy = make_strategy(TASKS, cfg.training.strategy).attach(model)
        train_step(StepContext(model, torch.optim.AdamW(model.parameters()), data, tasks,
                               make_autocast(torch.device("cpu"))), EpochPlan(strategy), torch.arange(256), scale)
        grads.append({n: model.heads[n].weight.grad.clone() for n in TASKS})  # type: ignore[union-attr]
    plain, scaled = grads
    for name in TASKS:
        assert torch.allclose(scaled[name], gamma[name] * plain[name], atol=1e-7), name
    assert plain["air_time"].abs().max() > 0 and scaled["air_time"].abs().max() == 0


def test_diminish_reaches_the_trainers_loss(slices: tuple, tmp_path: Path) -> None:
    """Through `train`: with γ0 near zero the auxiliary heads hardly learn. air_time's training loss falls by a
    quarter in 3 epochs under EW (0.99 -> 0.71 when written) and by well under a tenth of that with γ0 = 1e-6
    (1.035 -> 1.032): its head is the only part of the model only air_time trains."""

    def air_time_drop(result: TrainResult) -> float:
        return 1 - result.history[-1]["train_loss"]["air_time"] / result.history[0]["train_loss"]["air_time"]

    ew = run(small_cfg(), slices, tmp_path / "ew")
    faded = run(small_cfg(mt2st={"diminish": {"gamma0": 1e-6}}), slices, tmp_path / "faded")
    assert air_time_drop(faded) < air_time_drop(ew) / 3, (faded.history, ew.history)


def test_switch_drops_auxiliary_heads_from_forward_and_backward(slices: tuple, tmp_path: Path) -> None:
    cfg = small_cfg(mt2st={"switch": {"epoch": 1}, "diminish": {"eta": 1.0}})
    result = run(cfg, slices, tmp_path)
    assert [e["tasks"] for e in result.history] == [TASKS, ["arr_delayed"], ["arr_delayed"]]
    assert list(result.history[1]["train_loss"]) == ["arr_delayed"]
    assert result.switch_epoch == 1
    summary_flops = torch.load(tmp_path / CHECKPOINT, weights_only=True)["flops_per_sample"]
    assert 0 < summary_flops["arr_delayed"] < summary_flops["+".join(TASKS)]

    # one step of the single-task phase: auxiliary heads are never called and get no gradient
    spec = FeatureSpec.fit(slices[0], cfg)
    data = to_tensors(slices[0], spec)
    model = HardSharingModel(spec, cfg.model)
    calls: list[str] = []
    for name in AUX:
        model.heads[name].register_forward_hook(lambda *_, n=name: calls.append(n))
    strategy = make_strategy(TASKS, cfg.training.strategy).attach(model)
    optimizer = torch.optim.AdamW(model.parameters())
    before = {n: model.heads[n].weight.detach().clone() for n in AUX}
    train_step(StepContext(model, optimizer, data, {t.name: t for t in cfg.tasks}, make_autocast(torch.device("cpu"))),
               EpochPlan(strategy, ["arr_delayed"]), torch.arange(256))
    assert calls == []
    for name in AUX:
        assert model.heads[name].weight.grad is None
        assert torch.equal(model.heads[name].weight, before[name])
    assert model.heads["arr_delayed"].weight.grad is not None


def test_early_stopping_does_not_end_a_run_before_its_fixed_switch(slices: tuple, tmp_path: Path) -> None:
    """Issue 36's example: 8 epochs, switch after 6, early-stopping patience 3, the primary metric best early.
    The validation window's primary labels are flipped, so the better the model learns the worse it scores there
    and the best epoch is the first or second: early stopping would have ended the run in the multi-task phase
    while train_summary.json said it switched."""
    train_df, val_df = slices
    flipped = val_df.copy()
    flipped[label_column("arr_delayed")] = 1 - flipped[label_column("arr_delayed")]
    cfg = small_cfg(mt2st={"switch": {"epoch": 6}}, epochs=8)
    cfg = config_with(FLIGHTS, model={"hidden": [32, 16]},
                      training={**cfg.training.model_dump(exclude_none=True), "early_stopping_patience": 3})
    result = train(cfg, train_df, flipped, tmp_path, progress=False)
    assert result.best_epoch <= 2, result.history  # the setting of the example: best early, then 3+ bad epochs
    assert [e["tasks"] for e in result.history] == [TASKS] * 6 + [["arr_delayed"]] * 2
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["switch_epoch"] == 6 and summary["switch_reached"] is True


def test_a_switch_that_never_fires_is_reported_as_not_reached(slices: tuple, tmp_path: Path) -> None:
    """A plateau trigger that cannot fire before the run ends (min_epoch at the budget): the summary says so
    instead of naming a switch epoch."""
    cfg = small_cfg(mt2st={"switch": {"patience": 1, "min_epoch": 3}}, epochs=2)
    result = run(cfg, slices, tmp_path)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert result.switch_epoch is None and summary["switch_epoch"] is None and summary["switch_reached"] is False
    assert all(e["tasks"] == TASKS for e in result.history)


def test_plateau_trigger_respects_patience_and_min_epoch() -> None:
    cfg = small_cfg(mt2st={"switch": {"patience": 1, "min_epoch": 3}}, epochs=6)
    schedule = Mt2stSchedule(cfg.training.mt2st, TASKS, "arr_delayed")
    assert not schedule.observe(0, improved=True)
    assert not schedule.observe(1, improved=False)  # plateaued, but before min_epoch
    assert schedule.active_tasks(2) == TASKS
    assert schedule.observe(2, improved=False)
    assert schedule.switch_epoch == 3 and schedule.active_tasks(3) == ["arr_delayed"]
    assert schedule.loss_weights(3.5) == {"arr_delayed": 1.0}


def test_stl_trains_one_single_head_model_per_task(slices: tuple, tmp_path: Path) -> None:
    cfg = small_cfg(epochs=1)
    results = train_stl(cfg, slices[0], slices[1], tmp_path, progress=False)
    assert set(results) == set(TASKS)
    for name, result in results.items():
        assert list(result.validation) == [name]
        assert (tmp_path / name / "model.pt").is_file()


@pytest.mark.parametrize(("training", "field"), [
    ({"strategy": {"name": "nope"}}, "training.strategy.name"),
    ({"strategy": {"name": "static", "weights": {"arr_delayed": 0}}}, "training.strategy"),
    ({"strategy": {"name": "dwa", "temperature": 0}}, "training.strategy.temperature"),
    ({"mt2st": {"diminish": {"eta": 0}}}, "training.mt2st.diminish.eta"),
    ({"mt2st": {"diminish": {"nu": 0.5}}}, "training.mt2st.diminish.nu"),
    ({"mt2st": {"diminish": {"per_task": {"dep_delay": {"eta": -1}}}}},
     "training.mt2st.diminish.per_task.dep_delay.eta"),
    ({"mt2st": {"diminish": {"per_task": {"arr_delayed": {"eta": 1}}}}}, "per_task names tasks that are not auxiliary"),
    ({"mt2st": {"switch": {"min_epoch": 2}}}, "training.mt2st.switch"),
    ({"mt2st": {"switch": {"patience": 3}}}, "training.mt2st.switch.patience"),
    ({"epochs": 4, "mt2st": {"switch": {"epoch": 4}}}, "training.mt2st.switch.epoch (4) must be below"),
    ({"strategy": {"name": "mgda"}, "mt2st": {"diminish": {}}}, "training.mt2st.diminish with training.strategy mgda"),
])
def test_bad_strategy_parameters_name_the_field(training: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        config_with(FLIGHTS, training=training)



def test_rep_mtl_regulariser_is_finite_and_moves_the_trunk_in_the_trainer(slices: tuple, tmp_path: Path) -> None:
    """The trainer wires Rep-MTL's regulariser into the step: the trunk's gradient with it differs from EW's on
    the same batch by a measurable share (tests/test_rep_mtl.py measures the share per architecture)."""
    cfg = small_cfg(strategy={"name": "uw"}, epochs=2)
    cfg = config_with(FLIGHTS, model={"hidden": [32, 16], "head_hidden": 8},
                      training={**cfg.training.model_dump(), "rep_mtl": {"lambda_tsr": 1.1, "tau": 0.3}})
    spec = FeatureSpec.fit(slices[0], cfg)
    data = to_tensors(slices[0], spec)
    tasks = {t.name: t for t in cfg.tasks}
    trunk_grads = []
    for rep_mtl in (None, cfg.training.rep_mtl):
        torch.manual_seed(0)
        model = HardSharingModel(spec, cfg.model).eval()  # eval: the same forward both times (no dropout draw)
        strategy = make_strategy(TASKS, cfg.training.strategy).attach(model)
        optimizer = torch.optim.AdamW([*model.parameters(), *strategy.parameters()])
        train_step(StepContext(model, optimizer, data, tasks, make_autocast(torch.device("cpu"))),
                   EpochPlan(strategy, loss_terms=(RepMtlTerm(rep_mtl),) if rep_mtl else ()), torch.arange(300))
        trunk_grads.append(model.trunk.net[0].weight.grad.clone())  # type: ignore[union-attr]
    plain, regularised = trunk_grads
    assert torch.isfinite(regularised).all()
    assert (regularised - plain).norm() / plain.norm() > 1e-3  # the regulariser's share, not rounding

    result = run(cfg, slices, tmp_path)
    assert total_train_loss(result, -1) < total_train_loss(result, 0)
    assert result.train_flops > run(small_cfg({"name": "uw"}, epochs=2), slices, tmp_path / "plain").train_flops
