"""Training: losses fall, the best epoch is kept, and a killed run resumes to the same result."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from components.config.schema import ProjectConfig, config_to_yaml
from components.training.train import CHECKPOINT, SUMMARY, WEIGHTS, TrainingDiverged, train
from tests.conftest import FLIGHTS, config_with, window


def test_losses_fall_and_validation_beats_chance(flights_frame: pd.DataFrame, flights_cfg: ProjectConfig,
                                                 tmp_path: Path) -> None:
    result = train(flights_cfg, window(flights_frame, flights_cfg, "train"),
                   window(flights_frame, flights_cfg, "validation"), tmp_path, progress=False)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert all(last[t] < first[t] for t in first), (first, last)
    assert result.validation["arr_delayed"]["roc_auc"] > 0.6
    assert result.validation["air_time"]["mae"] < 30  # minutes; predicting the mean is ~75
    for name in (WEIGHTS, CHECKPOINT, SUMMARY, "feature_spec.json", "config.yaml"):
        assert (tmp_path / name).is_file()


def test_a_diverging_setting_stops_with_an_error_naming_the_epoch_and_the_tasks(flights_frame: pd.DataFrame,
                                                                                tmp_path: Path) -> None:
    cfg = config_with(FLIGHTS, training={"epochs": 2, "threads": 2, "lr": 1e12})
    train_df = window(flights_frame, cfg, "train").head(4000)
    with pytest.raises(TrainingDiverged, match=r"training diverged in epoch 1: the training loss of \[.*'air_time'"):
        train(cfg, train_df, window(flights_frame, cfg, "validation"), tmp_path, progress=False)
    assert not (tmp_path / WEIGHTS).exists()  # no diverged weights are left to export


_CHILD = """
import sys
from pathlib import Path
import pandas as pd
from components.config.schema import config_from_yaml
from components.training.train import train
cfg = config_from_yaml(Path(sys.argv[1]).read_text())
train(cfg, pd.read_parquet(sys.argv[2]), pd.read_parquet(sys.argv[3]), Path(sys.argv[4]),
      resume=sys.argv[5] == "1", progress=True)
"""


def _train_child(d: Path, out: Path, resume: bool) -> subprocess.Popen:
    args = [sys.executable, "-c", _CHILD, str(d / "cfg.yaml"), str(d / "train.parquet"), str(d / "val.parquet"),
            str(out), "1" if resume else "0"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epoch_in_checkpoint(path: Path) -> int:
    if not path.exists():
        return -1
    return int(torch.load(path, weights_only=True)["epoch"])


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(flights_frame: pd.DataFrame, tmp_path: Path) -> None:
    epochs = 6
    # with a weight average: the checkpoint must carry it too, or the resumed run exports other weights
    cfg = config_with(FLIGHTS, training={"epochs": epochs, "threads": 1, "batch_size": 256, "seed": 7,
                                         "early_stopping_patience": epochs, "ema_decay": 0.9})
    (tmp_path / "cfg.yaml").write_text(config_to_yaml(cfg))
    window(flights_frame, cfg, "train").to_parquet(tmp_path / "train.parquet")
    window(flights_frame, cfg, "validation").to_parquet(tmp_path / "val.parquet")

    straight = _train_child(tmp_path, tmp_path / "straight", resume=False)
    assert straight.wait(timeout=600) == 0, straight.stdout.read()  # type: ignore[union-attr]

    crashed = _train_child(tmp_path, tmp_path / "crashed", resume=False)
    ckpt = tmp_path / "crashed" / CHECKPOINT
    deadline = time.monotonic() + 600
    while _epoch_in_checkpoint(ckpt) < 1 and crashed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    crashed.send_signal(signal.SIGKILL)
    assert crashed.wait(timeout=60) == -signal.SIGKILL
    killed_after = _epoch_in_checkpoint(ckpt)
    assert 1 <= killed_after < epochs - 1, "the run must die part-way through"
    assert not (tmp_path / "crashed" / SUMMARY).exists()

    resumed = _train_child(tmp_path, tmp_path / "crashed", resume=True)
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log
    assert f"resuming from {ckpt} after epoch {killed_after + 1} of {epochs}" in log

    other = config_with(FLIGHTS, training={"epochs": epochs, "threads": 1, "batch_size": 512, "seed": 7,
                                           "early_stopping_patience": epochs, "ema_decay": 0.9})
    with pytest.raises(ValueError, match="different config"):
        train(other, pd.read_parquet(tmp_path / "train.parquet"), pd.read_parquet(tmp_path / "val.parquet"),
              tmp_path / "crashed", resume=True, progress=False)

    a = torch.load(tmp_path / "straight" / WEIGHTS, weights_only=True)
    b = torch.load(tmp_path / "crashed" / WEIGHTS, weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_compile_option_traces_the_model_and_trains_like_eager(flights_frame: pd.DataFrame, tmp_path: Path) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    small = flights_frame.iloc[::3]
    results = {}
    for compiled in (False, True):
        cfg = config_with(FLIGHTS, training={"epochs": 1, "threads": 2, "compile": compiled})
        torch._dynamo.reset()
        counters.clear()
        results[compiled] = train(cfg, window(small, cfg, "train"), window(small, cfg, "validation"),
                                  tmp_path / str(compiled), progress=False)
        captured = counters["stats"]["unique_graphs"]
        assert captured >= 1 if compiled else captured == 0  # the option really reaches dynamo
    eager, compiled = results[False].history[0], results[True].history[0]
    for task, loss in eager["train_loss"].items():
        assert compiled["train_loss"][task] == pytest.approx(loss, rel=1e-2)
    assert compiled["validation"]["arr_delayed"]["roc_auc"] == pytest.approx(
        eager["validation"]["arr_delayed"]["roc_auc"], abs=0.02)
    assert results[True].train_flops == results[False].train_flops  # counted on the eager step either way


def test_train_state_round_trips_through_a_weights_only_checkpoint(flights_frame: pd.DataFrame,
                                                                   tmp_path: Path) -> None:
    """What `to_checkpoint` writes, `restore` reads back whole: a resumed run continues from the same state."""
    from components.data.features import FeatureSpec
    from components.training.architectures import build_model
    from components.training.mt2st import Mt2stSchedule
    from components.training.strategies import make_strategy
    from components.training.train import TrainState

    cfg = config_with(FLIGHTS, model={"hidden": [8]}, training={"strategy": {"name": "uw"},
                                                                 "mt2st": {"switch": {"patience": 1}}})
    spec = FeatureSpec.fit(window(flights_frame, cfg, "train").head(256), cfg)
    names = [t.name for t in cfg.tasks]

    def fresh(seed: int) -> TrainState:
        torch.manual_seed(seed)
        model = build_model(spec, cfg.model)
        strategy = make_strategy(names, cfg.training.strategy).attach(model)
        optimizer = torch.optim.AdamW([*model.parameters(), *strategy.parameters()])
        return TrainState(model, optimizer, strategy, Mt2stSchedule(cfg.training.mt2st, names, names[0]))

    saved = fresh(0)
    with torch.no_grad():
        saved.strategy.log_vars.add_(0.5)  # type: ignore[attr-defined]
    saved.schedule.observe(0, improved=False)
    saved.epoch, saved.best_epoch, saved.bad_epochs, saved.best_metric = 2, 1, 1, 0.7
    saved.best_state, saved.history = saved.model.state_dict(), [{"epoch": 1, "train_loss": {"a": 1.0}}]
    saved.flops_per_sample, saved.train_flops = {"all": 123.0}, 4.5e9
    saved.average = {k: v + 1 for k, v in saved.model.state_dict().items()}
    torch.save(saved.to_checkpoint(), tmp_path / "state.pt")

    restored = fresh(1)
    restored.restore(torch.load(tmp_path / "state.pt", weights_only=True))
    again = restored.to_checkpoint()
    for key, value in saved.to_checkpoint().items():
        if key in ("model", "best_state", "average"):
            assert all(torch.equal(value[k], again[key][k]) for k in value), key
        elif key == "rng":
            assert torch.equal(value, again[key])
        elif key != "optimizer":  # no steps taken: an empty AdamW state either way
            assert str(again[key]) == str(value), key


def test_the_weight_average_warms_up_then_moves_by_one_minus_decay_and_copies_integer_buffers() -> None:
    from components.training.train import WeightAverage

    model = torch.nn.Linear(2, 1)
    model.register_buffer("steps", torch.tensor(0))
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    average = WeightAverage(model, decay=0.75, updates=100)  # type: ignore[arg-type]  # warmed up: 101/110 > 0.75
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[5.0, -2.0]]))
        model.steps += 3
    average.update()
    torch.testing.assert_close(average.model.weight, torch.tensor([[2.0, 1.0]]))  # 0.75 * old + 0.25 * new
    assert int(average.model.steps) == 3 and average.updates == 101
    assert not any(p.requires_grad for p in average.model.parameters())

    fresh = WeightAverage(model, decay=0.75)  # type: ignore[arg-type]  # first update: decay 1/10
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[15.0, -12.0]]))
    fresh.update()
    torch.testing.assert_close(fresh.model.weight, torch.tensor([[14.0, -11.0]]))  # 0.1 * old + 0.9 * new


def test_with_ema_decay_the_average_is_validated_kept_and_exported(flights_frame: pd.DataFrame,
                                                                   tmp_path: Path) -> None:
    from components.training.train import evaluate_tensors, load_trained, to_tensors

    cfg = config_with(FLIGHTS, training={"epochs": 2, "threads": 2, "batch_size": 512, "ema_decay": 0.9,
                                         "early_stopping_patience": 2})
    val_df = window(flights_frame, cfg, "validation")
    result = train(cfg, window(flights_frame, cfg, "train"), val_df, tmp_path, progress=False)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    exported = torch.load(tmp_path / WEIGHTS, weights_only=True)
    best = ckpt["average"] if result.best_epoch == 2 else ckpt["best_state"]
    assert all(torch.equal(exported[k], best[k]) for k in exported)
    assert any(not torch.equal(ckpt["average"][k], ckpt["model"][k]) for k in exported)  # not the last step's
    model, spec, _ = load_trained(tmp_path)
    assert evaluate_tensors(model, to_tensors(val_df, spec), spec.targets) == result.validation
