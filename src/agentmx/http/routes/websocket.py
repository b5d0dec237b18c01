"""The event WebSocket at /v0 (API.md 3.3). Auth happens before the upgrade: a bad key gets HTTP 401."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from starlette.datastructures import QueryParams

from agentmx.errors import AgentMXError, RateLimited
from agentmx.events import hub as event_hub
from agentmx.events.stream import StreamError, serve
from agentmx.http.deps import resolve_caller
from agentmx.http.ws_frames import frame_writer
from agentmx.services import keys
from agentmx.services.runtime import Runtime

router = APIRouter()


@router.websocket("/v0")
async def event_socket(websocket: WebSocket) -> None:
    rt: Runtime = websocket.app.state.rt
    try:
        authorization = keys.one_credential(websocket.headers.getlist("authorization"))
        api_key = keys.one_credential(websocket.query_params.getlist("api_key"))
        caller = await resolve_caller(rt, authorization, api_key)
    except AgentMXError as exc:
        status = 429 if isinstance(exc, RateLimited) else 401
        name = "RateLimitExceededError" if status == 429 else "UnauthorizedError"
        await websocket.send_denial_response(
            JSONResponse({"name": name, "code": exc.code, "message": exc.message}, status_code=status)
        )
        return
    hub = event_hub.current_hub()
    if hub is None:
        await websocket.send_denial_response(
            JSONResponse({"name": "ServiceUnavailableError", "message": "Event streams are not running"}, 503)
        )
        return
    await websocket.accept()
    after = url_after_event_id(websocket.query_params)

    async def receive() -> str | None:
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return None
                text = message.get("text")
                if text is not None:
                    return str(text)
                data = message.get("bytes")
                if data is not None:
                    return bytes(data).decode("utf-8", "replace")
        except (WebSocketDisconnect, RuntimeError):
            return None

    async def still_allowed() -> bool:
        try:
            return await resolve_caller(rt, authorization, api_key, rate_limited=False) == caller
        except AgentMXError:
            return False

    write = frame_writer(websocket.scope)
    if await serve(rt, hub, caller, websocket.send_text, receive, after, write, still_allowed):
        with contextlib.suppress(Exception):  # the client may be gone already
            await websocket.close(code=1008, reason="API key deleted, expired or changed")


def url_after_event_id(query: QueryParams) -> str | StreamError | None:
    """``?after_event_id=`` (or ``last_event_id``). Given twice, it is refused as every HTTP route refuses
    a repeated single-value parameter (``repeated_query``), here as the stream refuses a bad resume
    point: an error frame at the first subscribe. The last copy was taken, while a proxy may read the first."""
    for name in ("after_event_id", "last_event_id"):
        if len(query.getlist(name)) > 1:
            return StreamError("ValidationError", f"{name} must be given once")
    return query.get("after_event_id") or query.get("last_event_id")
