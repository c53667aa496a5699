"""What the service answers, as typed models: the OpenAPI document is generated from them, so a
client generated from it reads every answer, errors included."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "PROMETHEUS_TEXT",
    "Classification",
    "Embeddings",
    "ErrorBody",
    "Health",
    "Info",
    "Neighbors",
    "Readiness",
    "refusals",
]

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class ErrorBody(BaseModel):
    """Every refusal: one line saying what was wrong and how to fix it."""

    error: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    error: str | None = Field(default=None, description="Why not ready: loading, or failed.")


class Versions(BaseModel):
    headstart: str
    torch: str
    python: str


class Info(BaseModel):
    fingerprint: str = Field(description="Fingerprint of the embeddings the head reads.")
    model: str
    weights: str | None
    layer: str | None
    precision: str | None
    head: str
    classes: list[str]
    dim: int = Field(description="Embedding width.")
    index_size: int | None = Field(description="Items in the index; null without one.")
    text: bool = Field(
        description="Whether the model embeds text too, so that /v1/search can search the index."
    )
    max_batch: int
    versions: Versions


class LabelScore(BaseModel):
    label: str
    probability: float


class ImageClassification(BaseModel):
    image: int = Field(description="Position of the image in the request.")
    filename: str = Field(description="The multipart file name; empty for base64 images.")
    label: str = Field(description="The most likely class.")
    top: list[LabelScore]


class Classification(BaseModel):
    fingerprint: str
    results: list[ImageClassification]


class Embeddings(BaseModel):
    fingerprint: str
    dim: int
    embeddings: list[list[float]]


class Neighbor(BaseModel):
    id: int = Field(description="The item's row in the index.")
    label: str | None
    key: str = Field(description="Content key of the indexed image.")
    caption: str | None = Field(
        default=None, description="The caption its tar shard or table gave it, if any."
    )
    similarity: float
    thumbnail: str | None = Field(
        default=None, description="URL of its thumbnail; absent when the index keeps none."
    )
    path: str | None = Field(default=None, description="Only with --expose-paths.")


class Neighbors(BaseModel):
    fingerprint: str
    neighbors: list[Neighbor]


_REASONS = {
    400: "The body is empty, not valid JSON, or holds no image.",
    401: "Missing or wrong API key (the service was started with --api-key-env).",
    404: "No index is loaded.",
    413: "The body or the number of images is over the service's limit.",
    415: "Neither multipart/form-data nor application/json.",
    422: "A field is invalid, or an image cannot be decoded.",
    503: "The model is loading, or failed to load.",
}


def refusals(*statuses: int, reasons: dict[int, str] | None = None) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for the refusals an operation can answer, each an ErrorBody;
    ``reasons`` describes a status where the operation's reasons are not the common ones.

    Written out as JSON, not as a ``model``: FastAPI files a model under the operation's own media
    type, and a refusal is JSON even where success is Prometheus text or a JPEG. The schema is
    inline here; ``openapi_document.finish_document`` makes it the document's one ``ErrorBody``."""
    return {
        status: {
            "description": (reasons or {}).get(status, _REASONS[status]),
            "content": {"application/json": {"schema": ErrorBody.model_json_schema()}},
        }
        for status in statuses
    }
