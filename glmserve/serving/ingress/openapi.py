"""/openapi.json with the real request bodies: the handlers read raw bytes (parse_body), so
FastAPI cannot see their pydantic models; this hands it their JSON schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

REF = "#/components/schemas/{model}"


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra`: `model` as its required JSON body. The schemas it refers to
    are added to the document's components by `with_components`."""
    schema = model.model_json_schema(ref_template=REF)
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def with_components(document: dict[str, Any], models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    """`document` with the schemas `models` refer to in components.schemas."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schemas.update(model.model_json_schema(ref_template=REF).get("$defs", {}))
    return document
