"""pydantic JSON Schema -> the structural OpenAPI v3 schema a CustomResourceDefinition needs.

Kubernetes accepts a subset of OpenAPI v3.0: no `$ref`, no `anyOf` with null (optional fields are
simply left out), `exclusiveMinimum` as a boolean beside `minimum`, no `additionalProperties: false`
(the API server prunes unknown fields instead), no `title`, no `const`.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]
_DROPPED = {"title", "$defs"}


def structural(model: type[BaseModel]) -> Schema:
    """The structural schema of `model` with its camelCase field names."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def _convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" in node:
        target = defs[node["$ref"].removeprefix("#/$defs/")]
        return _convert({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"only Optional[X] unions map onto a structural schema, got {node['anyOf']}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _convert({**options[0], **rest}, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            if value is not False:
                out[key] = _convert(value, defs) if isinstance(value, dict) else value
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        else:
            # A model used twice ($defs) must not share lists, which YAML would write as anchors.
            out[key] = copy.deepcopy(value)
    return out
