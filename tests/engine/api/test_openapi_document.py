"""The OpenAPI document describes the request bodies as the API takes them."""

from __future__ import annotations

from typing import Any

from engine.api.app import create_app


def _document() -> dict[str, Any]:
    app = create_app(pool=None)  # never queried here
    document: dict[str, Any] = app.openapi_schema.to_schema()
    return document


def _referenced(value: Any) -> set[str]:
    """The component names ``value`` (a schema, or any part of the document) refers to."""
    if isinstance(value, dict):
        found = {str(v).rsplit("/", 1)[-1] for k, v in value.items() if k == "$ref"}
        for item in value.values():
            found |= _referenced(item)
        return found
    if isinstance(value, list):
        return set().union(*(_referenced(item) for item in value))
    return set()


def test_request_body_schemas_refuse_other_properties() -> None:
    """The API answers a body field it does not take with a 400 (rule unknown); the schemas of
    the request bodies left additionalProperties out, which allows any, so a client built from
    the document sent such fields believing them valid."""
    document = _document()
    components = document["components"]["schemas"]
    bodies = [
        operation["requestBody"]
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "requestBody" in operation
    ]
    assert len(bodies) > 20
    pending, seen = _referenced(bodies), set()
    while pending:
        name = pending.pop()
        seen.add(name)
        pending |= _referenced(components[name]) - seen
    assert {"DealerCreate", "StationIn", "ReceiverConfig", "CustomerCreate", "Address"} <= seen
    for name in sorted(seen):
        schema = components[name]
        if schema.get("type") == "object":
            assert schema.get("additionalProperties") is False, name


def test_a_free_form_field_stays_open() -> None:
    """A field that holds any object (a draft's document) is not closed by its struct's rule."""
    draft = _document()["components"]["schemas"]["DraftIn"]
    assert draft["additionalProperties"] is False
    assert draft["properties"]["document"].get("additionalProperties") is not False
