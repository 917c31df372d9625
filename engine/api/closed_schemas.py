"""The OpenAPI schema of a body type that refuses unknown fields says so
(``additionalProperties: false``).

The API answers a field a body does not take with a 400 (rule ``unknown``): msgspec structs
declared with ``forbid_unknown_fields=True``. litestar's schema for a struct leaves
``additionalProperties`` out, which in JSON Schema allows any other property, so a client
generated from the document, or a tool that checks a request against it, took such a body for
valid. This plugin runs before litestar's own for structs (an app's plugins come first) and
adds the declaration to the schema litestar builds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

# litestar exports no public class for its struct schemas (tests/engine/api checks the result).
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin

if TYPE_CHECKING:
    from litestar.openapi.spec import Schema
    from litestar.typing import FieldDefinition


class ClosedStructSchemaPlugin(StructSchemaPlugin):
    """litestar's struct schemas, with ``additionalProperties: false`` for a struct that
    forbids unknown fields."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False
        return schema
