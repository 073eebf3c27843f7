"""A bad config fails before any work, with a message naming the field path."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from components.config.schema import ConfigError, ProjectConfig, config_from_yaml, load_config, parse_config
from tests.conftest import DIAMONDS, FLIGHTS, TXHOUSING, raw_config


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
        (lambda r: r["data"].pop("time_column"), "data", "split 'time' (the default) needs 'time_column'"),
        (lambda r: r["model"].update(dropout=1.5), "model.dropout", "less than 1"),
        (lambda r: r.update(serving={"max_rows": 0}), "serving.max_rows", "greater than or equal to 1"),
        (lambda r: r.update(serving={"canary": {"share": 2}}), "serving.canary.share", "less than or equal to 1"),
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
    """Validation reads the torch-free settings classes; each registry holds one implementation per settings class,
    keyed by its name, and an architecture's settings say what its class is (a shared representation or not)."""
    from components.config.plugins import ARCHITECTURE_SETTINGS, STRATEGY_SETTINGS, plugin_name
    from components.training.architectures import ARCHITECTURES, SharedRepresentation
    from components.training.strategies import STRATEGIES

    assert [STRATEGIES[plugin_name(s)].settings for s in STRATEGY_SETTINGS] == list(STRATEGY_SETTINGS)
    assert [ARCHITECTURES[plugin_name(a)].settings for a in ARCHITECTURE_SETTINGS] == list(ARCHITECTURE_SETTINGS)
    assert len(STRATEGIES) == len(STRATEGY_SETTINGS) and len(ARCHITECTURES) == len(ARCHITECTURE_SETTINGS)
    assert {name: issubclass(cls, SharedRepresentation) for name, cls in ARCHITECTURES.items()} == {
        name: cls.settings.shares_representation for name, cls in ARCHITECTURES.items()}


# The docs' walk-through (docs/training.md, "Adding a plug-in"), done in a copy of `components/`: the settings class
# and its line in STRATEGY_SETTINGS / ARCHITECTURE_SETTINGS, and the implementation in its own new file.
NEW_PLUG_INS = {
    "strategy": ("STRATEGY_SETTINGS: tuple[type[StrategySettings], ...] = (\n", "HalfSettings",
                 '''class HalfSettings(StrategySettings):
    """half: every task's loss with weight 1/2."""

    name: Literal["half"] = Field("half", description="chooses this loss weighting")
''', "training/strategies/half.py", '''from typing import ClassVar

import torch

from components.config.plugins import HalfSettings
from components.training.strategies.base import Weighting, weighted_backward


class HalfWeighting(Weighting):
    settings: ClassVar[type[HalfSettings]] = HalfSettings

    def backward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        half = next(iter(losses.values())).new_full((), 0.5)
        return weighted_backward(losses, {name: half for name in losses})
''', {"training": {"strategy": {"name": "half"}}}, '''
from components.training.strategies import make_strategy
strategy = make_strategy([t.name for t in cfg.tasks], cfg.training.strategy)
w = torch.ones((), requires_grad=True)
weights = strategy.backward({t.name: 2 * w for t in cfg.tasks})
out = {"weights": sorted({float(v) for v in weights.values()}), "grad": float(w.grad)}
'''),
    "architecture": ("ARCHITECTURE_SETTINGS: tuple[type[ModelSettings], ...] = (\n", "NarrowSettings",
                     '''class NarrowSettings(HardSharingSettings):
    """narrow: hps, under another name."""

    architecture: Literal["narrow"] = Field("narrow", description="chooses this architecture")
''', "training/architectures/narrow.py", '''from typing import ClassVar

from components.config.plugins import NarrowSettings
from components.training.architectures.hps import HardSharingModel


class NarrowModel(HardSharingModel):
    settings: ClassVar[type[NarrowSettings]] = NarrowSettings
''', {"model": {"architecture": "narrow", "hidden": [16]}}, '''
from components.training.architectures import ARCHITECTURES
out = {"chosen": ARCHITECTURES[cfg.model.architecture].__name__, "hidden": list(cfg.model.hidden)}
'''),
}


@pytest.mark.parametrize("family", NEW_PLUG_INS)
def test_a_new_plug_in_is_one_new_file_and_its_settings_line(family: str, tmp_path: Path) -> None:
    """In a copy of `components/`, a new weighting (`half`) or architecture (`narrow`) touches two files: its
    settings class with its registry line in plugins.py, and its implementation in one new file; a config
    chooses it by name and the registry hands out its class."""
    import filecmp
    import shutil
    import subprocess
    import sys

    registry_line, settings_name, settings_class, new_file, implementation, choice, check = NEW_PLUG_INS[family]
    source = Path(__file__).resolve().parents[1] / "components"
    copy = tmp_path / "components"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    plugins = copy / "config" / "plugins.py"
    text = plugins.read_text()
    assert registry_line in text
    plugins.write_text(text.replace(registry_line, f"{settings_class}\n\n{registry_line}    {settings_name},\n"))
    (copy / new_file).write_text(implementation)

    def changed(cmp: filecmp.dircmp, prefix: str = "") -> list[str]:
        files = [prefix + f for f in cmp.diff_files + cmp.left_only + cmp.right_only]
        return files + [f for name, sub in cmp.subdirs.items() for f in changed(sub, f"{prefix}{name}/")]

    cmp = filecmp.dircmp(source, copy, ignore=["__pycache__"])
    assert sorted(changed(cmp)) == sorted(["config/plugins.py", new_file])
    assert cmp.subdirs["training"].subdirs[Path(new_file).parent.name].right_only == [Path(new_file).name]

    raw = raw_config(FLIGHTS)
    for section, values in choice.items():
        raw[section] = {**raw.get(section, {}), **values}
    script = ("import json, sys, torch, components\n"
              "from components.config.schema import parse_config\n"
              f"cfg = parse_config(json.loads(sys.argv[1]))\n{check}"
              "print(json.dumps({**out, 'from': components.__file__}))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(raw, default=str)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out.pop("from").startswith(str(copy))
    n_tasks = len(raw["tasks"])
    assert out == ({"weights": [0.5], "grad": float(n_tasks)} if family == "strategy"
                   else {"chosen": "NarrowModel", "hidden": [16]})


@pytest.mark.parametrize(("section", "chosen", "foreign"), [
    ("strategy", {"name": "ew"}, {"temperature": 5.0}),
    ("strategy", {"name": "dwa"}, {"cagrad_c": 3.0}),
    ("strategy", {"name": "uw"}, {"weights": {"dep_delay": 1.0}}),
    ("model", {"architecture": "hps"}, {"experts": 8}),
    ("model", {}, {"token_dim": 16}),
    ("model", {"architecture": "mmoe"}, {"private_hidden": [8]}),
])
def test_an_option_of_another_plug_in_is_an_error_naming_the_field(section: str, chosen: dict, foreign: dict) -> None:
    """Each plug-in owns its options: one that belongs to another plug-in does not validate silently."""
    where = (lambda r: r["training"]) if section == "strategy" else (lambda r: r)
    message = _broken(lambda r: where(r).update({section: chosen | foreign}))
    path = "training.strategy" if section == "strategy" else "model"
    assert f"{path}.{next(iter(foreign))}: unknown field" in message
    raw = copy.deepcopy(raw_config())
    where(raw).update({section: chosen})
    assert parse_config(raw, "flights.yaml")  # the chosen plug-in alone validates


def test_the_method_docs_cover_every_strategy_and_architecture() -> None:
    from components.config.plugins import ARCHITECTURE_NAMES, STRATEGY_NAMES

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


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda r: r["tasks"][0]["label"].update(value=[15, 30]), "tasks[0].label.value",
         "for a set of values use op 'in'"),
        (lambda r: r["tasks"][0].update(label={"column": "carrier", "op": "in"}), "tasks[0].label", "needs 'values'"),
        (lambda r: r["tasks"][0].update(label={"column": "arr_delay", "op": "between", "low": 30, "high": 15}),
         "tasks[0].label", "'low' <= 'high'"),
        (lambda r: r["tasks"][0].update(label={"column": "arr_delay", "op": "gt", "value": 15, "values": [1]}),
         "tasks[0].label", "['values'] do not apply to op 'gt'"),
        (lambda r: r["tasks"][0].update(transform="log1p"), "tasks[0]", "'transform' applies to regression tasks"),
        (lambda r: r["data"]["source"]["derive"].append({"name": "speed", "op": "ratio", "source": "distance"}),
         "data.source.derive[2]", "exactly two columns"),
        (lambda r: r["data"]["source"]["derive"].append({"name": "h", "op": "cyclical", "source": "sched_dep"}),
         "data.source.derive[2]", "needs 'period'"),
        (lambda r: r["data"]["source"]["derive"].append({"name": "h", "op": "hour", "source": "x", "format": "%Y"}),
         "data.source.derive[2]", "'format' only applies to op 'datetime'"),
        (lambda r: r["data"].update(split="random"), "data", "'windows' only applies to split 'time'"),
        (lambda r: (r["data"].pop("windows"), r["data"].update(split="group")), "data.split", "needs 'column'"),
        (lambda r: (r["data"].pop("windows"), r["data"].pop("time_column"), r["data"].update(
            split="random", partition="month")), "data", "partition 'month' needs 'time_column'"),
        (lambda r: r.update(leakage={"allow_leaky": [{"feature": "tail", "reason": "x"}]}), "<root>",
         "allow_leaky names unknown features: ['tail']"),
        (lambda r: r.update(leakage={"allow_leaky": [{"feature": "tailnum"}]}), "leakage.allow_leaky[0].reason",
         "Field required"),
    ],
)
def test_richer_labels_derives_splits_and_leaks_name_the_field(mutate, field: str, words: str) -> None:  # type: ignore[no-untyped-def]
    message = _broken(mutate)
    assert f"  {field}" in message, message
    assert words in message, message


def test_a_list_value_gives_one_clean_error() -> None:
    message = _broken(lambda r: r["tasks"][0]["label"].update(value=["Current", "Fully Paid"]))
    assert message.count("\n") == 1, message  # one line under the header, no per-union-member noise
    assert "value.float" not in message and "value.str" not in message


def test_a_table_without_time_column_needs_a_non_time_split() -> None:
    raw = copy.deepcopy(raw_config(DIAMONDS))
    assert parse_config(raw).data.partition == "none"
    raw["data"]["split"] = "time"
    with pytest.raises(ConfigError, match=r"split 'time' \(the default\) needs 'time_column'"):
        parse_config(raw)


def test_a_feature_typo_fails_at_config_time_with_the_closest_column(tmp_path: Path) -> None:
    from components.data.columns import check_columns

    raw = copy.deepcopy(raw_config(DIAMONDS))
    raw["features"]["categorical"][1]["name"] = "clarty"
    raw["tasks"][1]["label"]["column"] = "cutt"
    raw["data"]["source"]["derive"][0]["sources"] = ["x", "why"]
    with pytest.raises(ConfigError) as err:
        check_columns(parse_config(raw), tmp_path, "diamonds.yaml")
    message = str(err.value)
    assert "features.categorical[1].name: column 'clarty' is not in the source (closest: 'clarity')" in message
    assert "tasks[1].label.column: column 'cutt' is not in the source (closest: 'cut')" in message
    assert "data.source.derive[0] (volume): column 'why'" in message
    check_columns(load_config(DIAMONDS), tmp_path)  # the committed config is clean
    check_columns(load_config(FLIGHTS), tmp_path)


def test_the_config_reference_is_generated_from_the_schema() -> None:
    """docs/config.md must be what `python -m components.config.reference` writes; every example parses."""
    from components.config.reference import EXAMPLES, render
    from components.config.schema import ProjectConfig as Schema

    committed = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert committed == render(), "docs/config.md is stale: python -m components.config.reference > docs/config.md"
    assert set(EXAMPLES) == set(Schema.model_fields)
    for section, example in EXAMPLES.items():
        merged = copy.deepcopy(raw_config(DIAMONDS))
        merged[section] = yaml.safe_load(example)[section]
        if section == "leakage":
            merged["features"]["categorical"].append({"name": "tailnum"})
            merged["tasks"].append({"name": "cancelled", "type": "binary", "label": {"column": "price", "op": "gt",
                                                                                      "value": 1000}})
        if section == "tasks":
            merged["features"]["numeric"] = [f for f in merged["features"]["numeric"] if f["name"] != "depth"]
        if section == "alerts":
            merged["tasks"][0]["name"] = "price"
        parse_config(merged, f"docs example {section}")
    for name in Schema.model_fields:
        assert f"## `{name}`" in committed


def test_the_json_schema_editors_read_is_committed_and_every_option_is_described() -> None:
    """docs/config.schema.json is what the models give (the shipped configs point their editors at it), and
    every option carries a description or is a section whose model has its own docstring."""
    from components.config.reference import json_schema

    docs = Path(__file__).resolve().parents[1] / "docs"
    assert (docs / "config.schema.json").read_text() == json_schema(), \
        "stale: python -m components.config.reference --schema > docs/config.schema.json"
    schema = json.loads(json_schema())
    undocumented = [f"{model}.{name}" for model, spec in [("ProjectConfig", schema), *schema["$defs"].items()]
                    for name, field in spec.get("properties", {}).items()
                    if "description" not in field and not re.search(r'"\$ref"', json.dumps(field))]
    assert undocumented == []
    assert [name for name, spec in schema["$defs"].items() if "description" not in spec] == []
    for config in sorted((docs.parent / "configs").glob("*.yaml")):
        assert config.read_text().startswith("# yaml-language-server: $schema=../docs/config.schema.json"), config
