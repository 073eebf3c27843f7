"""Every registered architecture trains through the same trainer and exports to one ONNX graph with parity."""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import pandas as pd
import pytest
import torch

from components.artifacts.export import ONNX_FILE, check_parity, export_onnx
from components.config.plugins import with_options
from components.config.schema import ConfigError, ProjectConfig
from components.data.features import FeatureSpec
from components.training.architectures import ARCHITECTURES, build_model
from components.training.rep_mtl import rep_mtl_loss
from components.training.strategies import make_strategy
from components.training.train import EpochPlan, StepContext, make_autocast, masked_loss, to_tensors, train, train_step
from tests.conftest import FLIGHTS, config_with, window


@pytest.mark.parametrize(("architecture", "options"), [
    *((name, {}) for name in sorted(ARCHITECTURES)),
    ("hps", {"numeric_embedding": "periodic", "numeric_frequencies": 4, "head_hidden": 8}),
    ("shared_private", {"numeric_embedding": "periodic", "numeric_frequencies": 4}),
], ids=[*sorted(ARCHITECTURES), "hps-periodic-towers", "shared_private-periodic"])
def test_architecture_trains_and_exports_with_parity(architecture: str, options: dict, flights_frame: pd.DataFrame,
                                                     flights_cfg: ProjectConfig, tmp_path: Path) -> None:
    small = {"hidden": [32, 16], "experts": 3, "private_hidden": [8], "token_dim": 8, "attention_layers": 1,
             "attention_heads": 2}
    own = ARCHITECTURES[architecture].settings.model_fields  # each architecture takes only its own options
    cfg = config_with(FLIGHTS, model={"architecture": architecture, **{k: v for k, v in small.items() if k in own},
                                      **options},
                      training={"epochs": 3, "threads": 2, "batch_size": 256, "early_stopping_patience": 3})
    train_df = window(flights_frame, cfg, "train").iloc[::3]
    result = train(cfg, train_df, window(flights_frame, cfg, "validation").iloc[::3], tmp_path / "model",
                   progress=False)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert sum(last.values()) < sum(first.values())
    assert result.validation["arr_delayed"]["roc_auc"] > 0.55
    test = window(flights_frame, cfg, "test")
    path = export_onnx(tmp_path / "model", tmp_path / "onnx", test)
    assert [o.name for o in onnx.load(str(path)).graph.output] == [t.name for t in cfg.tasks]
    report = check_parity(tmp_path / "model", tmp_path / "onnx", test, rows=500, atol=1e-4)
    assert report.ok and (tmp_path / "onnx" / ONNX_FILE).is_file()


def test_unknown_architecture_and_rep_mtl_on_linear_heads_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"model\.architecture: unknown architecture 'nope'"):
        config_with(FLIGHTS, model={"architecture": "nope"})
    with pytest.raises(ConfigError, match=r"numeric_embedding: ft_transformer"):
        config_with(FLIGHTS, model={"architecture": "ft_transformer", "numeric_embedding": "periodic"})
    with pytest.raises(ConfigError, match=r"shared_private needs task towers \(model\.head_hidden"):
        config_with(FLIGHTS, model={"architecture": "shared_private"}, training={"rep_mtl": {}})
    # every architecture has one shared representation now (MMoE: its experts' outputs), gates vary per sample
    assert config_with(FLIGHTS, model={"architecture": "mmoe"}, training={"rep_mtl": {}}).training.rep_mtl


def test_shared_private_penalty_and_alternating_steps(flights_frame: pd.DataFrame) -> None:
    cfg = config_with(FLIGHTS, model={"architecture": "shared_private", "hidden": [16], "private_hidden": [8],
                                      "similarity_penalty": 0.5})
    df = window(flights_frame, cfg, "train").head(512)
    spec = FeatureSpec.fit(df, cfg)
    data = to_tensors(df, spec)
    model = build_model(spec, cfg.model)
    tasks = [t.name for t in cfg.tasks]
    with torch.no_grad():  # make two tasks' coefficients similar: the penalty must pull them together
        model.heads[tasks[1]].weight.copy_(model.heads[tasks[0]].weight + 0.1)
    penalty = model.penalty(tasks)
    assert torch.isfinite(penalty) and penalty > 0
    assert model.penalty(tasks[:1]) == 0

    strategy = make_strategy(tasks, cfg.training.strategy).attach(model)
    optimizer = torch.optim.AdamW(model.parameters())
    specs = {t.name: t for t in cfg.tasks}
    encoders, heads = model.alternating_groups()
    for step, (moved, frozen) in enumerate([(encoders, heads), (heads, encoders)]):
        before = [p.detach().clone() for p in [*moved, *frozen]]
        train_step(StepContext(model, optimizer, data, specs, make_autocast(torch.device("cpu"))), EpochPlan(strategy),
                   torch.arange(256), step=step)
        after = [*moved, *frozen]
        assert any(not torch.equal(b, a) for b, a in zip(before[:len(moved)], after[:len(moved)], strict=True))
        assert all(torch.equal(b, a) for b, a in zip(before[len(moved):], after[len(moved):], strict=True))
    assert model.penalty(tasks) < penalty


def test_shared_private_penalty_is_added_to_the_step(flights_frame: pd.DataFrame) -> None:
    """The trainer adds the architecture's penalty: on the heads' step, the heads' gradient with the penalty minus
    the one without is exactly the penalty's own gradient."""
    cfg = config_with(FLIGHTS, model={"architecture": "shared_private", "hidden": [16], "private_hidden": [8],
                                      "similarity_penalty": 0.5})
    df = window(flights_frame, cfg, "train").head(512)
    spec = FeatureSpec.fit(df, cfg)
    data = to_tensors(df, spec)
    tasks = [t.name for t in cfg.tasks]
    grads, expected = [], None
    for weight in (0.0, 0.5):
        torch.manual_seed(0)
        model = build_model(spec, with_options(cfg.model, similarity_penalty=weight)).eval()
        with torch.no_grad():  # two similar tasks, so the penalty has a pull
            model.heads[tasks[1]].weight.copy_(model.heads[tasks[0]].weight + 0.1)
        heads = list(model.heads.parameters())
        if weight:
            expected = torch.autograd.grad(model.penalty(tasks), heads, allow_unused=True)
        strategy = make_strategy(tasks, cfg.training.strategy).attach(model)
        train_step(StepContext(model, torch.optim.AdamW(model.parameters()), data, {t.name: t for t in cfg.tasks},
                               make_autocast(torch.device("cpu"))), EpochPlan(strategy), torch.arange(256),
                   step=1)  # the heads' step
        grads.append([p.grad.clone() for p in heads])  # type: ignore[union-attr]
    assert expected is not None and any(g is not None and g.abs().max() > 0 for g in expected)
    for without, with_penalty, own in zip(*grads, expected, strict=True):
        assert torch.allclose(with_penalty - without, own if own is not None else torch.zeros_like(without),
                              atol=1e-6)


@pytest.mark.parametrize(("architecture", "per_task"), [("hps", ["heads"]), ("mmoe", ["heads", "gates"]),
                                                       ("shared_private", ["heads", "private"]),
                                                       ("ft_transformer", ["heads"])])
def test_switched_step_computes_nothing_of_the_auxiliary_tasks(architecture: str, per_task: list[str],
                                                               flights_frame: pd.DataFrame) -> None:
    """MT2ST's switch saves compute only if a primary-only step leaves every per-task part of the auxiliary
    tasks (heads, MMoE's gates, shared_private's private encoders) uncalled and without a gradient."""
    small = {"hidden": [16], "experts": 2, "private_hidden": [8], "token_dim": 8, "attention_heads": 2,
             "attention_layers": 1}
    own = ARCHITECTURES[architecture].settings.model_fields
    cfg = config_with(FLIGHTS, model={"architecture": architecture, **{k: v for k, v in small.items() if k in own}})
    df = window(flights_frame, cfg, "train").head(256)
    spec = FeatureSpec.fit(df, cfg)
    model = build_model(spec, cfg.model)
    primary, aux = cfg.primary_task.name, [t.name for t in cfg.tasks if not t.primary]
    calls: list[str] = []
    for part in per_task:
        for name in [primary, *aux]:
            getattr(model, part)[name].register_forward_hook(lambda *_, n=f"{part}.{name}": calls.append(n))
    strategy = make_strategy([t.name for t in cfg.tasks], cfg.training.strategy).attach(model)
    train_step(StepContext(model, torch.optim.AdamW(model.parameters()), to_tensors(df, spec),
                           {t.name: t for t in cfg.tasks}, make_autocast(torch.device("cpu"))),
               EpochPlan(strategy, [primary]), torch.arange(256))
    assert sorted(calls) == sorted(f"{part}.{primary}" for part in per_task)  # the primary's parts only
    for part in per_task:
        assert all(p.grad is None for name in aux for p in getattr(model, part)[name].parameters())


def test_rep_mtl_on_feature_tokens_of_the_transformer(flights_frame: pd.DataFrame) -> None:
    cfg = config_with(FLIGHTS, model={"architecture": "ft_transformer", "token_dim": 8, "attention_heads": 2,
                                      "attention_layers": 1}, training={"rep_mtl": {}})
    df = window(flights_frame, cfg, "train").head(128)
    spec = FeatureSpec.fit(df, cfg)
    data = to_tensors(df, spec)
    model = build_model(spec, cfg.model)
    z, out = model.represent(data.numeric, data.categorical)
    assert z.shape == (128, 1 + spec.numeric_width + len(spec.categorical), 8)  # positions = feature tokens
    losses = {t.name: masked_loss(t, out[t.name], data.targets[t.name]) for t in cfg.tasks}
    reg = rep_mtl_loss(losses, z, cfg.training.rep_mtl)
    assert torch.isfinite(reg) and reg > 0
    reg.backward()
    assert model.numeric_weight.grad is not None and model.numeric_weight.grad.abs().sum() > 0


# linear heads, and towers (what Rep-MTL needs on shared_private): β is then read from the tower's first layer
@pytest.mark.parametrize("head_hidden", [0, 4])
def test_shared_private_penalty_by_hand_and_alternating_groups_partition_the_model(head_hidden: int,
                                                                                   flights_frame: pd.DataFrame) -> None:
    cfg = config_with(FLIGHTS, model={"architecture": "shared_private", "hidden": [2], "private_hidden": [3],
                                      "similarity_penalty": 0.5, "head_hidden": head_hidden})
    spec = FeatureSpec.fit(window(flights_frame, cfg, "train").head(256), cfg)
    model = build_model(spec, cfg.model)
    tasks = [t.name for t in cfg.tasks]
    betas = [[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]] + [[0.0, 0.0]] * (len(tasks) - 3)
    with torch.no_grad():
        for name, beta in zip(tasks, betas, strict=True):
            first = model.heads[name][0] if head_hidden else model.heads[name]
            first.weight[:, :2] = torch.tensor(beta)  # every output unit: β is their mean
    # only the pair (0, 1) is similar: cos = 1/√2, ‖β_0 − β_1‖² = 1, counted once per ordering;
    # (0, 2) and (1, 2) point apart (cos < 0) and are left alone, a zero β has no direction
    assert model.penalty(tasks).item() == pytest.approx(0.5 * 2 * (1 / math.sqrt(2)) * 1.0, rel=1e-5)

    encoders, heads = ({id(p) for p in group} for group in model.alternating_groups())
    assert not encoders & heads
    assert encoders | heads == {id(p) for p in model.parameters()}
