"""Reading a request's images (multipart files or base64 JSON), neighbor and text queries.

Every refusal is an ``HTTPException`` with the status and the one-line reason the client sees.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Annotated, Any

import numpy as np
from fastapi import HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "MAX_TEXT",
    "ImageQuery",
    "Images",
    "ImagesBody",
    "NeighborsBody",
    "QueryK",
    "TextQuery",
    "VectorQuery",
    "describe_problems",
    "read_images",
    "read_query",
    "read_text_query",
]

# How many labels or neighbors one answer may hold, asked in the JSON body or the query string.
_MAX_K = 1000
QueryK = Annotated[int | None, Query(ge=1, le=_MAX_K)]
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # vectors are compared in float32
# The longest search text, in characters. Text towers read a few dozen tokens (CLIP 77) and cut
# the rest; the cap keeps a request from spending the service's time on text no model reads.
MAX_TEXT = 1000
_BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# Somewhere, a character that is not white space. Spelled out, not \S: Python's re (which
# generates and checks test requests) and pydantic's regex engine differ on what \s holds.
_WORDS_PATTERN = r"[^ \t\n\r\f\v]"
_PATTERN_PROBLEMS = {_BASE64_PATTERN: "is not valid base64", _WORDS_PATTERN: "is blank"}

# (filename, bytes) of each image of a request; the filename is "" for base64 images.
Images = list[tuple[str, bytes]]


# An image file as standard base64 (RFC 4648, padded): what the JSON forms carry.
Base64Image = Annotated[
    str,
    Field(
        pattern=_BASE64_PATTERN,
        min_length=4,
        description="An image file (JPEG, PNG, WebP, ...), base64-encoded.",
    ),
]


class ImagesBody(BaseModel):
    """JSON form of a request: base64-encoded image files."""

    model_config = ConfigDict(extra="forbid")
    images: list[Base64Image] = Field(min_length=1)
    top_k: int = Field(default=5, ge=1, le=_MAX_K)


_NEIGHBORS_K = Field(default=10, ge=1, le=_MAX_K, description="How many neighbors.")


class ImageQuery(BaseModel):
    """JSON neighbors request by image: one base64-encoded image file."""

    model_config = ConfigDict(extra="forbid")
    image: Base64Image
    k: int = _NEIGHBORS_K


class VectorQuery(BaseModel):
    """JSON neighbors request by vector: an embedding as wide as the index's."""

    model_config = ConfigDict(extra="forbid")
    vector: list[Annotated[float, Field(ge=-_FLOAT32_MAX, le=_FLOAT32_MAX)]] = Field(min_length=1)
    k: int = _NEIGHBORS_K


class TextQuery(BaseModel):
    """JSON search request: a text, embedded by the model's text tower, and how many neighbors."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(
        min_length=1,
        max_length=MAX_TEXT,
        pattern=_WORDS_PATTERN,
        description="What to look for, in words (not blank). Text towers read the first few "
        "dozen tokens (CLIP: 77) and ignore the rest.",
    )
    k: int = _NEIGHBORS_K


def _one_of(schema: dict) -> None:
    schema["oneOf"] = schema.pop("anyOf")  # no body is both: each forbids the other's field


class NeighborsBody(RootModel[ImageQuery | VectorQuery]):
    """JSON form of a neighbors request: one base64 image, or an embedding vector."""

    model_config = ConfigDict(json_schema_extra=_one_of)


async def read_images(request: Request, limit: int) -> tuple[Images, int]:
    """(filename, bytes) of every image in a multipart or JSON request, and its top_k."""
    kind = request.headers.get("content-type", "")
    images: Images = []
    top_k = 5
    if kind.startswith("multipart/form-data"):
        try:
            # One file over the limit is parsed (and refused below with the count); beyond
            # that Starlette stops reading, with a 400 of its own that is a size refusal here.
            form = await request.form(max_files=limit + 1)
        except StarletteHTTPException as exc:
            if exc.status_code == 400 and "Too many files" in str(exc.detail):
                raise HTTPException(
                    413, f"more than {limit + 1} images in one request; the limit is {limit}"
                ) from None
            raise
        for _, value in form.multi_items():
            if hasattr(value, "read"):
                images.append((value.filename or "", await value.read()))
    elif kind.startswith("application/json"):
        body = _parse(ImagesBody, await _json(request))
        top_k = body.top_k
        images = [("", _base64(text, f"images[{i}]")) for i, text in enumerate(body.images)]
    elif not await request.body():
        raise HTTPException(400, 'empty request: send multipart files or JSON {"images": [...]}')
    else:
        raise HTTPException(415, f"unsupported content type {kind!r}; use multipart or JSON")
    if not images:
        raise HTTPException(400, "no images in the request: send multipart files or JSON images")
    if len(images) > limit:
        raise HTTPException(413, f"{len(images)} images in one request; the limit is {limit}")
    for number, (name, data) in enumerate(images):
        if not data:
            raise HTTPException(422, f"image {number} ({name or 'unnamed'}) is empty")
    return images, top_k


async def read_query(request: Request) -> tuple[np.ndarray | None, Images | None, int]:
    """A neighbors request: (vector, None, k) or (None, [one image], k)."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        images, _ = await read_images(request, 1)
        return None, images, 10
    data = await _json(request)
    given = [name for name in ("image", "vector") if name in data] if isinstance(data, dict) else []
    if len(given) != 1:  # checked first: the union's own errors would list both members' fields
        raise HTTPException(
            422, "send a JSON object with exactly one of 'image' (base64) or 'vector'"
        )
    body = _parse(ImageQuery if given == ["image"] else VectorQuery, data)
    if isinstance(body, ImageQuery):
        return None, [("", _base64(body.image, "image"))], body.k
    vector = np.asarray(body.vector, dtype=np.float32)[None]
    if not np.isfinite(vector).all():
        raise HTTPException(422, "the vector must hold finite numbers")
    return vector, None, body.k


async def read_text_query(request: Request) -> TextQuery:
    """A search request: JSON ``{"text": ..., "k": ...}``."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("application/json"):
        if not await request.body():
            raise HTTPException(400, 'empty request: send JSON {"text": "...", "k": 10}')
        raise HTTPException(415, f"unsupported content type {kind!r}; use JSON")
    # pydantic refuses what JSON can carry but no text holds: a lone surrogate ("\ud800").
    return _parse(TextQuery, await _json(request))


def describe_problems(errors: Iterable[dict[str, Any]]) -> str:
    """Validation errors in one line: 'images: Field required; pictures: Extra inputs ...'."""
    lines = []
    for error in list(errors)[:3]:
        where = ""
        for part in error.get("loc", ()):
            if part != "body":
                where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else part
        if error.get("type") == "string_pattern_mismatch":
            pattern = error.get("ctx", {}).get("pattern")
            lines.append(f"{where} {_PATTERN_PROBLEMS.get(pattern, 'is not as documented')}")
            continue
        message = error.get("msg", "invalid")
        lines.append(f"{where}: {message}" if where else str(message))
    return "; ".join(lines) or "invalid request"


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise HTTPException(400, "the body is not valid JSON") from None


def _parse(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, describe_problems(exc.errors())) from None


def _base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, f"{where} is not valid base64") from None
