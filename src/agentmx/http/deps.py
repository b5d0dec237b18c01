"""Request dependencies: the runtime, the authenticated caller, query parsing."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request

from agentmx.errors import ValidationFailed
from agentmx.http.nul_guard import loads
from agentmx.http.repeated_query import LIST_PARAMETERS, refuse_repeated_parameter
from agentmx.services import authenticate, keys
from agentmx.services.caller import Caller
from agentmx.services.runtime import Runtime
from agentmx.services.validation import utc_time


def get_runtime(request: Request) -> Runtime:
    return request.app.state.rt


async def resolve_caller(
    rt: Runtime, authorization: str | None, api_key: str | None = None, *, rate_limited: bool = True
) -> Caller:
    secret = api_key if (api_key and not authorization) else keys.parse_bearer(authorization)
    return await authenticate.caller_for_secret(rt, secret, rate_limited=rate_limited)


async def get_caller(request: Request) -> Caller:
    authorization = keys.one_credential(request.headers.getlist("authorization"))
    caller = await resolve_caller(get_runtime(request), authorization)
    refuse_repeated_parameter(request)  # after the 401: parameter rules are for authenticated callers
    request.state.caller = caller
    return caller


async def _runtime_dependency(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a sync dependency in a worker thread, a hop per request.
    return get_runtime(request)


RuntimeDep = Annotated[Runtime, Depends(_runtime_dependency)]
CallerDep = Annotated[Caller, Depends(get_caller)]


def query_list(request: Request, name: str) -> list[str] | None:
    """A list query parameter in any of its forms: JSON array, repeated key, or one bare value."""
    # Any other key given twice is refused with the caller (repeated_query): a list must be named there.
    assert name in LIST_PARAMETERS, name
    values = request.query_params.getlist(name)
    if not values:
        return None
    out: list[str] = []
    for value in values:
        if value.startswith("["):
            parsed = loads(value, name, [name])
            if not isinstance(parsed, list):
                raise ValidationFailed(f"{name} must be a list", [{"path": [name], "message": "not a list"}])
            out.extend(str(item) for item in parsed)
        else:
            out.append(value)
    return out


def query_value(request: Request, name: str) -> str | None:
    """``request.query_params.get(name)``, without parsing an empty query string: Starlette's
    QueryParams took 4.5 of a GET thread's ~8 us of query reads when there was none (most GETs)."""
    if not request.scope["query_string"]:
        return None
    return request.query_params.get(name)


def single_header(request: Request, name: str) -> str | None:
    """A header that must appear at most once (Idempotency-Key): a second copy is a 400, not first-wins,
    since a proxy or client that doubled it may mean either value."""
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise ValidationFailed(
            f"{name} must be sent once; this request has {len(values)}",
            [{"path": [name], "message": "repeated header"}],
            fix=f"Send one {name} header.",
        )
    return values[0] if values else None


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    value = query_value(request, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValidationFailed(f"{name} must be true or false", [{"path": [name], "message": "not a boolean"}])


def query_int(request: Request, name: str) -> int | None:
    value = query_value(request, name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ValidationFailed(
            f"{name} must be an integer", [{"path": [name], "message": "not an integer"}]
        ) from exc


def query_datetime(request: Request, name: str) -> datetime | None:
    """An ISO-8601 time in UTC (a time without an offset is UTC), or 400."""
    value = query_value(request, name)
    if value is None:
        return None
    try:
        return utc_time(value.replace(" ", "+"))  # a "+" unencoded in a query string reads as a space
    except ValueError as exc:
        raise ValidationFailed(
            f"{name} must be an ISO-8601 datetime", [{"path": [name], "message": "bad datetime"}]
        ) from exc


MAX_BODY_BYTES = 6 * 1024 * 1024  # AgentMail's limit on a whole JSON request


async def _bounded_body(request: Request, fix: str | None) -> bytes:
    """The body, refused (400) once it passes MAX_BODY_BYTES: the rest is never buffered."""
    too_large = ValidationFailed("Request body exceeds 6 MB", [{"path": [], "message": "too large"}], fix=fix)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # the cached body, when a caller has read it already
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, *, fix: str | None = None) -> Any:
    """The raw JSON body, or None when there is none (the SDK sends no body on some creates).

    A body over 6 MB is a 400 (``fix`` says what to do instead) before the rest of it is read:
    no request needs more, and buffering whatever a key's holder sends could exhaust memory.
    """
    raw = await _bounded_body(request, fix)
    if not raw.strip():
        return None
    return loads(raw, "Request body", [])


def body_object(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ValidationFailed(
            "Request body must be a JSON object", [{"path": [], "message": "not an object"}]
        )
    return body
