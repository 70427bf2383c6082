"""Validation the API server would do, without one: strict built-in schemas, CRD schemas and CEL.

Built-in kinds go through `kubernetes-validate --strict` (Kubernetes 1.34). Custom resources are
checked against their CRD's openAPIV3Schema made strict as vendor/crds/README.md says
(unknown fields rejected, `nullable`, int-or-string), after the API server's defaulting, and their
`x-kubernetes-validations` are evaluated with celpy (transition rules need an old object and are
skipped, as on create).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import yaml
from celpy import celtypes

KUBERNETES_VERSION = "1.34"
Schema = dict[str, Any]


def strict_schema(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) if k in ("items", "additionalProperties", "not") else v for k, v in node.items()}
    if "properties" in node:
        out["properties"] = {k: strict_schema(v) for k, v in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [strict_schema(v) for v in node[key]]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def apply_defaults(schema: Schema, value: Any) -> Any:
    """The object as the API server stores it: `default`s filled in wherever the parent exists."""
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(value) - set(schema.get("properties") or {}):
                value[name] = apply_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _find(text: Any, pattern: Any) -> celtypes.StringType:
    """Kubernetes' CEL regex library `<string>.find(<regex>)`: the first match, or ''."""
    match = re.search(str(pattern), str(text))
    return celtypes.StringType(match.group(0) if match else "")


CEL_FUNCTIONS = {"find": _find}
_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule), functions=CEL_FUNCTIONS)
    return _PROGRAMS[rule]


def _located(schema: Schema, value: Any, path: str) -> Iterator[tuple[Schema, Any, str]]:
    yield schema, value, path
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name in value:
                yield from _located(sub, value[name], f"{path}.{name}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(value) - set(props):
                yield from _located(extra, value[name], f"{path}[{name}]")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _located(schema["items"], item, f"{path}[{i}]")


def cel_failures(schema: Schema, value: Any) -> list[str]:
    """`path: message` of every CEL rule that `value` (already defaulted) breaks."""
    failures = []
    for node, sub, path in _located(schema, value, ""):
        for rule in node.get("x-kubernetes-validations") or []:
            if "oldSelf" in rule["rule"]:
                continue
            result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(sub)})
            if isinstance(result, celpy.CELEvalError):
                raise AssertionError(f"CEL rule {rule['rule']!r} failed to evaluate at {path or '.'}: {result}")
            if not result:
                failures.append(f"{path or '.'}: {rule.get('message', rule['rule'])}")
    return failures


class CustomResourceSchemas:
    """The served version of each custom resource kind, from CRD documents."""

    def __init__(self, crds: Iterable[dict[str, Any]]) -> None:
        self.schemas: dict[tuple[str, str], Schema] = {}
        for crd in crds:
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    self.schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]

    @classmethod
    def load(cls, *directories: Path) -> CustomResourceSchemas:
        docs = [
            doc
            for directory in directories
            for path in sorted(directory.glob("*.yaml"))
            for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader)
            if doc and doc.get("kind") == "CustomResourceDefinition"
        ]
        return cls(docs)

    def merged(self, other: CustomResourceSchemas) -> CustomResourceSchemas:
        merged = CustomResourceSchemas([])
        merged.schemas = self.schemas | other.schemas
        return merged

    def knows(self, obj: dict[str, Any]) -> bool:
        return (obj.get("apiVersion"), obj.get("kind")) in self.schemas

    def problems(self, obj: dict[str, Any]) -> list[str]:
        schema = self.schemas[(obj["apiVersion"], obj["kind"])]
        stored = apply_defaults(schema, copy.deepcopy(obj))
        validator = jsonschema.Draft7Validator(strict_schema(schema))
        errors = [f"{'.'.join(map(str, e.absolute_path)) or '.'}: {e.message}" for e in validator.iter_errors(stored)]
        return errors + cel_failures(schema, stored)


def builtin_problems(obj: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '.'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def manifest_problems(obj: dict[str, Any], custom: CustomResourceSchemas) -> list[str]:
    """What the API server would reject `obj` for (an empty list: it would accept it)."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    found = custom.problems(obj) if custom.knows(obj) else builtin_problems(obj)
    return [f"{where} {problem}" for problem in found]
