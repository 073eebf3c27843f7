"""Check a rendered KServe object against the KServe SDK's API models, run in the SDK's own venv
(`.venv-kserve`: its pins clash with BentoML's): every field must be one the model declares (by its
JSON name) with a value of the declared type, recursively into Kubernetes' own models. Prints the
problems as JSON (an empty list: valid). The models are generated from KServe's CRD OpenAPI schema;
the SDK's deserializer drops unknown fields silently, hence this walk."""

from __future__ import annotations

import json
import re
import sys

import kserve.models
import kubernetes.client.models

PRIMITIVES = {"str": str, "int": int, "float": (int, float), "bool": bool}


def model(name: str) -> type:
    for module in (kserve.models, kubernetes.client.models):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"no model {name}")


def problems(value: object, declared: str, path: str) -> list[str]:
    if value is None or declared in ("object", "datetime"):
        return []
    if m := re.fullmatch(r"[Ll]ist\[(.+)\]", declared):
        if not isinstance(value, list):
            return [f"{path}: expected a list ({declared})"]
        return [p for i, v in enumerate(value) for p in problems(v, m.group(1), f"{path}[{i}]")]
    if m := re.fullmatch(r"dict\((\w+), (.+)\)|Dict\[(\w+), (.+)\]", declared):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping ({declared})"]
        item = m.group(2) or m.group(4)
        return [p for k, v in value.items() for p in problems(v, item, f"{path}.{k}")]
    if declared in PRIMITIVES:
        wanted = PRIMITIVES[declared]
        ok = isinstance(value, wanted) and not (declared != "bool" and isinstance(value, bool))
        return [] if ok else [f"{path}: {value!r} is not {declared}"]
    cls = model(declared)
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({declared})"]
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    found = [f"{path}.{k}: not a field of {declared}" for k in value if k not in by_json]
    return found + [p for k, v in value.items() if k in by_json
                    for p in problems(v, cls.openapi_types[by_json[k]], f"{path}.{k}")]


if __name__ == "__main__":
    obj = json.loads(sys.stdin.read())
    print(json.dumps(problems(obj, "V1beta1InferenceService", obj.get("kind", "?"))))
