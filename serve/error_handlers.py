"""Every refusal answers ``{"error": "one line"}``, whether the app or FastAPI refused."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from headstart.serve.parsing import describe_problems

__all__ = ["add_error_handlers"]


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(
        {"error": exc.detail},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": describe_problems(exc.errors())}, status_code=422)


def add_error_handlers(app: FastAPI) -> None:
    # Starlette's class: it also catches what Starlette raises itself (a malformed multipart
    # body, an unknown path, a wrong method), which FastAPI's subclass would let through.
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
