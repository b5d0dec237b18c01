"""The HTTP edge's error table: domain errors to status codes and AgentMail's error bodies."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from agentmx import errors as e
from agentmx.db.retryable import retryable

log = logging.getLogger("agentmx.http")

# (status, legacy name) per domain error class; the most specific class wins.
STATUS: dict[type[e.AgentMXError], tuple[int, str]] = {
    e.ValidationFailed: (400, "ValidationError"),
    e.Unauthorized: (401, "UnauthorizedError"),
    e.MessageRejected: (403, "MessageRejectedError"),
    e.AlreadyTaken: (403, "IsTakenError"),
    e.LimitExceeded: (403, "LimitExceededError"),
    e.Forbidden: (403, "ForbiddenError"),
    e.NotFound: (404, "NotFoundError"),
    e.Conflict: (409, "ConflictError"),
    e.Unprocessable: (422, "UnprocessableError"),
    e.RateLimited: (429, "RateLimitExceededError"),
    e.TemporaryFailure: (503, "ServiceUnavailableError"),
}

DOCS = "https://docs.agentmail.to/errors#"
RETRY_AFTER = "1"  # seconds: a deadlock or a reconnect resolves within that


def error_body(name: str, code: str, message: str, fix: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "code": code, "message": message}
    if fix:
        body["fix"] = fix
    body["docs"] = DOCS + code
    body.update(extra)
    return body


def response_for(exc: e.AgentMXError, headers: dict[str, str] | None = None) -> JSONResponse:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            status, name = STATUS[cls]
            break
    else:
        status, name = 500, "InternalError"
    extra: dict[str, Any] = {}
    headers = dict(headers or {})
    if isinstance(exc, e.ValidationFailed):
        extra["errors"] = exc.errors
    if isinstance(exc, e.RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    body = error_body(name, exc.code, exc.message, exc.fix, **extra)
    return JSONResponse(body, status_code=status, headers=headers)


def _jsonable(errors: list[Any]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        out.append({"path": loc, "message": str(err.get("msg", "invalid value"))})
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(e.AgentMXError)
    async def _domain(_: Request, exc: e.AgentMXError) -> JSONResponse:
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable(list(exc.errors()))
        json_error = any(err.get("type") == "json_invalid" for err in exc.errors())
        message = "Request body is not valid JSON" if json_error else "Invalid request"
        if errors and not json_error:
            message = f"Invalid request: {'.'.join(errors[0]['path']) or 'body'}: {errors[0]['message']}"
        return response_for(e.ValidationFailed(message, errors))

    @app.exception_handler(json.JSONDecodeError)
    async def _bad_json(_: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return response_for(e.ValidationFailed("Request body is not valid JSON"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            body = error_body("NotFoundError", "not_found", "Route not found")
        elif exc.status_code == 405:
            body = error_body("MethodNotAllowedError", "method_not_allowed", "Method not allowed")
            headers["Allow"] = allowed_methods(request)
        else:
            body = error_body("Error", "error", str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    # A client gone while its body was read (or whose chunked body the parser refused midway):
    # nobody is left to answer, and it is no server fault, so no traceback (it logged two).
    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> Response:
        log.info("client disconnected before its request body was read")
        return Response(status_code=400)

    # Registered by class (not only under Exception, whose handler Starlette re-raises after it
    # answers): a retryable database failure is logged as one line, not a traceback.
    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(exc)


METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """The Allow header of a 405 (RFC 9110 15.5.6): the methods some route takes on this path.

    Starlette's own names only the first route whose path matched, and each method of a path
    (GET, PATCH, DELETE /v0/inboxes/{id}) is a route of its own here. Asked of the routes
    themselves (``matches``), as the router would for a request with each method."""
    allowed = {
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.router.routes
        )
    }
    if "GET" in allowed:
        allowed.add("HEAD")  # http/head.py
    return ", ".join(sorted(allowed))


def unexpected_response(exc: Exception) -> JSONResponse:
    """The answer to an exception no handler knows; call it inside ``except`` (logs the traceback).

    A database failure that rolled the whole transaction back and is worth retrying (a deadlock
    victim, a dropped connection: ``db.retryable``) is a 503 with Retry-After, not a 500."""
    if retryable(exc):
        log.warning("database unavailable for this request, answered 503: %s", exc)
        failure = e.TemporaryFailure(
            "The database could not complete this request; nothing was changed",
            fix="Retry the request.",
        )
        return response_for(failure, headers={"Retry-After": RETRY_AFTER})
    log.exception("unhandled error")
    return JSONResponse(error_body("InternalError", "internal_error", "Internal server error"), 500)
