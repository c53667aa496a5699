"""The service's OpenAPI document: the request bodies the routes read themselves, the limits of
one service (its index's vector width among them), and every named schema as a component, so a
generated client gets one model each. Search by text is documented only where the model can
embed text.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

__all__ = ["body_doc", "finish_document", "json_body_doc"]

# Where the request body models' schemas refer to each other: the document's components.
_COMPONENTS = "#/components/schemas/"
_SEARCH = "/v1/search"


def body_doc(json_model: type[BaseModel], many: bool) -> dict:
    """OpenAPI extras for an endpoint that reads its body itself: multipart file(s) or JSON.

    Each schema carries a title: :func:`finish_document` makes it a named component, so a client
    generated from the document gets one ``ImagesBody``, ``ImageFiles``, ... for every operation."""
    field = "files" if many else "file"
    binary = {"type": "string", "format": "binary"}
    schema = {"type": "array", "items": binary, "minItems": 1} if many else binary
    multipart = {
        "title": "ImageFiles" if many else "ImageFile",
        "type": "object",
        "properties": {field: schema},
        "required": [field],
    }
    document = json_body_doc(json_model)
    content = document["requestBody"]["content"]
    document["requestBody"]["content"] = {"multipart/form-data": {"schema": multipart}, **content}
    return document


def json_body_doc(json_model: type[BaseModel]) -> dict:
    """OpenAPI extras for an endpoint that reads a JSON body itself (and takes nothing else)."""
    schema = json_model.model_json_schema(ref_template=_COMPONENTS + "{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def finish_document(
    openapi: dict,
    max_images: int,
    max_upload_mb: float,
    *,
    vector_width: int | None = None,
    text: bool = True,
) -> dict:
    """Finish one service's OpenAPI document: write its limits in (the most images a request may
    carry, multipart ``files`` and JSON ``images``, and the largest body, on every operation that
    takes a body), then make every titled schema the routes wrote inline (request bodies,
    refusals) a named component, which each operation refers to.

    ``vector_width`` (the index's) bounds a query vector's length both ways, so a vector valid
    by the schema is one the service accepts. Without ``text`` (an image-only model),
    ``/v1/search`` is left out: it would only ever refuse."""
    if not text:
        openapi["paths"].pop(_SEARCH, None)
    for item in openapi["paths"].values():
        for operation in item.values():
            body = operation.get("requestBody")
            if body is None:
                continue
            body["description"] = f"At most {max_upload_mb:g} MB (413 above)."
            for content in body["content"].values():
                properties = content["schema"].get("properties", {})
                for name in ("files", "images"):
                    if properties.get(name, {}).get("type") == "array":
                        properties[name]["maxItems"] = max_images
    _name_inline_schemas(openapi)
    vector = openapi["components"]["schemas"].get("VectorQuery", {}).get("properties", {})
    if vector_width is not None and "vector" in vector:
        vector["vector"].update(minItems=vector_width, maxItems=vector_width)
    return openapi


def _name_inline_schemas(openapi: dict) -> None:
    """Move every request or response schema titled with a component's name (and the ``$defs``
    it carries) into the document's components, leaving a ``$ref``: a generator makes one model
    of a component, but one per operation of an inline schema."""
    components = openapi.setdefault("components", {}).setdefault("schemas", {})

    def register(name: str, schema: dict) -> None:
        if components.setdefault(name, schema) != schema:
            raise ValueError(f"two different OpenAPI schemas are named {name!r}")

    for item in openapi["paths"].values():
        for operation in item.values():
            answers = operation.get("responses", {}).values()
            for message in (operation.get("requestBody", {}), *answers):
                for content in message.get("content", {}).values():
                    schema = content.get("schema", {})
                    for name, definition in schema.pop("$defs", {}).items():
                        register(name, definition)
                    name = schema.get("title", "")
                    if re.fullmatch(r"[A-Za-z0-9._-]+", name):  # what a component may be called
                        register(name, schema)
                        content["schema"] = {"$ref": _COMPONENTS + name}
