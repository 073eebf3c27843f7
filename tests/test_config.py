"""A bad config fails before any work, with a message naming the field path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from components.config import ConfigError, ProjectConfig, config_from_yaml, load_config, parse_config
from tests.conftest import FLIGHTS, TXHOUSING, raw_config


def test_reference_configs_load() -> None:
    flights = load_config(FLIGHTS)
    assert flights.primary_task.name == "arr_delayed"
    assert {t.type for t in load_config(TXHOUSING).tasks} == {"multiclass", "regression", "binary"}


def _broken(mutate) -> str:  # type: ignore[no-untyped-def]
    raw = copy.deepcopy(raw_config())
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "flights.yaml")
    return str(err.value)


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda r: r["training"].update(epochz=3), "training.epochz", "unknown field"),
        (lambda r: r["training"].update(epochs="many"), "training.epochs", "integer"),
        (lambda r: r["tasks"][1].update(type="survival"), "tasks[1].type", "binary"),
        (lambda r: r["tasks"][0].update(metric="mae"), "tasks[0]", "does not fit a binary task"),
        (lambda r: r["tasks"][0].update(primary=False), "<root>", "primary"),
        (lambda r: r["data"]["windows"]["test"].update(start="2013-05-15"), "data.windows", "time-ordered"),
        (lambda r: r["data"]["windows"]["train"].update(end="2012-01-01"), "data.windows.train", "after start"),
        (lambda r: r["features"]["numeric"].append({"name": "arr_delay"}), "<root>", "label leakage"),
        (lambda r: r["features"]["categorical"][0].update(min_frequency=0), "features.categorical[0].min_frequency",
         "greater than or equal to 1"),
        (lambda r: r["training"].update(strategy={"name": "magic"}), "training.strategy.name", "unknown strategy"),
        (lambda r: r.setdefault("model", {}).update(architecture="resnet"), "model.architecture",
         "unknown architecture"),
        (lambda r: r["training"].update(strategy={"name": "static", "weights": {"arr_delayed": 0}}),
         "training.strategy", "positive sum"),
        (lambda r: r["training"].update(strategy={"name": "static", "weights": {"arr_delayed": -1}}),
         "training.strategy.weights.arr_delayed", "greater than or equal to 0"),
        (lambda r: r["tasks"][0]["label"].update(op="gt", value=None), "tasks[0].label", "needs 'value'"),
        (lambda r: r["data"].pop("time_column"), "data.time_column", "Field required"),
        (lambda r: r["model"].update(dropout=1.5), "model.dropout", "less than 1"),
    ],
)
def test_bad_config_names_the_field(mutate, field: str, words: str) -> None:  # type: ignore[no-untyped-def]
    message = _broken(mutate)
    assert f"  {field}" in message, message
    assert words in message, message


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_from_yaml("data: [unclosed", "x.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_yaml("- a\n- b\n", "x.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config("does/not/exist.yaml")


def test_static_weights_for_unknown_task() -> None:
    message = _broken(lambda r: r["training"].update(strategy={"name": "static", "weights": {"nope": 1}}))
    assert "unknown tasks: ['nope']" in message


def test_config_knows_exactly_the_registered_strategies_and_architectures() -> None:
    """Validation reads torch-free name lists; they must name what the registries build."""
    from components.architectures import ARCHITECTURES, SharedRepresentation
    from components.plugin_names import ARCHITECTURE_NAMES, SHARED_REPRESENTATION_ARCHITECTURES, STRATEGY_NAMES
    from components.strategies import STRATEGIES

    assert sorted(STRATEGY_NAMES) == sorted(STRATEGIES)
    assert sorted(ARCHITECTURE_NAMES) == sorted(ARCHITECTURES)
    assert sorted(SHARED_REPRESENTATION_ARCHITECTURES) == sorted(
        name for name, cls in ARCHITECTURES.items() if issubclass(cls, SharedRepresentation))


def test_the_method_docs_cover_every_strategy_and_architecture() -> None:
    from components.plugin_names import ARCHITECTURE_NAMES, STRATEGY_NAMES

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    assert [n for n in (*STRATEGY_NAMES, *ARCHITECTURE_NAMES) if f"`{n}`" not in text] == []


def test_the_retraining_config_is_validated_again() -> None:
    """`retraining.epochs` replaces the epoch budget, which a cross-check reads: a fixed MT2ST switch
    after the shorter budget's end must fail before any work, not train without ever switching."""
    from components.steps import continual_config

    def with_retraining(epochs: int) -> ProjectConfig:
        raw = copy.deepcopy(raw_config())
        raw["training"].update(epochs=8, mt2st={"switch": {"epoch": 4}})
        raw["retraining"] = {**raw.get("retraining", {}), "epochs": epochs}
        return parse_config(raw)

    retrain = continual_config(with_retraining(5), "/models/champion")
    assert (retrain.training.epochs, retrain.training.warm_start) == (5, "/models/champion")
    too_short = r"(?s)<retraining: .*switch\.epoch \(4\) must be below training\.epochs \(3\)"
    with pytest.raises(ConfigError, match=too_short):
        continual_config(with_retraining(3), "/models/champion")
