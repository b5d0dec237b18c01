"""Threads at three prefixes: /v0/threads, /v0/inboxes/{inbox_id}/threads, /v0/pods/{pod_id}/threads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from agentmx.http import wire, wire_mail
from agentmx.http.bodies import Body, parse
from agentmx.http.deps import (
    CallerDep,
    RuntimeDep,
    json_body,
    query_bool,
    query_datetime,
    query_int,
    query_list,
    query_value,
)
from agentmx.http.routes.messages import base_url, include_flags
from agentmx.services import downloads, mail_lists, mail_reads
from agentmx.services import threads as svc
from agentmx.services.caller import Caller
from agentmx.services.pagination import MAX_LIMIT, check_limit
from agentmx.services.runtime import Runtime
from agentmx.services.threads import Scope, ThreadFilters

router = APIRouter()

SEARCH_MAX = 100
THREAD_MESSAGES_MAX = 100


class UpdateThread(Body):
    add_labels: list[str] | None = None
    remove_labels: list[str] | None = None


async def read_threads(request: Request, rt: Runtime, caller: Caller, scope: Scope) -> Response:
    caller.require("message_read")
    filters = ThreadFilters(
        labels=query_list(request, "labels") or [],
        before=query_datetime(request, "before"),
        after=query_datetime(request, "after"),
        include=include_flags(request),
        senders=query_list(request, "senders") or [],
        recipients=query_list(request, "recipients") or [],
        subject=query_list(request, "subject") or [],
    )
    limit = check_limit(
        query_int(request, "limit"), maximum=SEARCH_MAX if filters.has_text_filters else MAX_LIMIT
    )
    async with rt.db.read_driver() as conn:
        page = await mail_lists.list_threads(
            conn,
            caller,
            scope,
            filters,
            limit=limit,
            page_token=request.query_params.get("page_token"),
            ascending=query_bool(request, "ascending"),
        )
    items = [wire_mail.thread_list_item(row) for row in page.items]
    return wire.json_response(wire.page("threads", items, page.limit, page.next_page_token))


async def _search(request: Request, rt: Runtime, caller: Caller, scope: Scope) -> dict[str, Any]:
    caller.require("message_read")
    limit = check_limit(query_int(request, "limit"), maximum=SEARCH_MAX)
    async with rt.db.read(may_scan=True) as s:
        page = await svc.search_threads(
            s,
            caller,
            scope,
            q=request.query_params.get("q", ""),
            limit=limit,
            page_token=request.query_params.get("page_token"),
            before=query_datetime(request, "before"),
            after=query_datetime(request, "after"),
        )
        views = await svc.views(s, page.items)
        highlights = await svc.search_highlights(
            s, [t.id for t in page.items], request.query_params.get("q", "")
        )
    items = []
    for v in views:
        item = wire_mail.thread_item(v.thread, v.labels, v.attachments)
        if found := highlights[v.thread.id]:
            item["highlights"] = found
        items.append(item)
    return wire.page("threads", items, page.limit, page.next_page_token)


async def read_thread(
    request: Request, rt: Runtime, caller: Caller, scope: Scope, thread_id: str
) -> Response:
    caller.require("message_read")
    limit = check_limit(query_int(request, "limit"), maximum=THREAD_MESSAGES_MAX)
    async with rt.db.read_driver() as conn:
        found = await mail_reads.get_thread(
            conn, caller, scope, thread_id, limit=limit, page_token=query_value(request, "page_token")
        )
    page = found.messages
    messages = [
        wire_mail.message_document(m.row, m.labels, m.attachments, True, wire.as_is) for m in page.items
    ]
    return wire.json_response(
        wire_mail.thread(
            found.row, found.labels, found.attachments, messages, page.limit, page.next_page_token, wire.as_is
        )
    )


async def _attachment(
    request: Request, rt: Runtime, caller: Caller, scope: Scope, thread_id: str, attachment_id: str
) -> dict[str, Any]:
    caller.require("message_read")
    async with rt.db.read() as s:
        attachment = await svc.get_thread_attachment(s, caller, scope, thread_id, attachment_id)
    url, expires = downloads.make_url(
        rt.secret,
        base_url(request, rt),
        attachment.blob_key,
        attachment.content_type,
        attachment.filename,
        rt.settings.download_url_ttl,
    )
    return {**wire_mail.attachment(attachment), "download_url": url, "expires_at": wire.iso(expires)}


async def _update(
    request: Request, rt: Runtime, caller: Caller, scope: Scope, thread_id: str
) -> dict[str, Any]:
    caller.require("message_update")
    body = parse(UpdateThread, await json_body(request))
    async with rt.db.transaction() as s:
        view = await svc.update_thread(
            s, caller, scope, thread_id, body.add_labels or [], body.remove_labels or []
        )
    return {"thread_id": view.thread.id, "labels": sorted(view.labels)}


async def _delete(rt: Runtime, caller: Caller, scope: Scope, thread_id: str) -> Response:
    caller.require("message_delete")
    async with rt.db.transaction() as s:
        await svc.delete_thread(s, caller, scope, thread_id)
    return Response(status_code=204)


def _register(prefix: str, scope_of: Callable[[dict[str, str]], Scope]) -> None:
    """The same six operations under one prefix; search and sub-paths before {thread_id}."""

    @router.get(prefix, name=f"list_threads{prefix}", response_model=dict[str, Any])
    async def list_threads(request: Request, rt: RuntimeDep, caller: CallerDep) -> Response:
        return await read_threads(request, rt, caller, scope_of(request.path_params))

    @router.get(prefix + "/search", name=f"search_threads{prefix}")
    async def search_threads(request: Request, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
        return await _search(request, rt, caller, scope_of(request.path_params))

    @router.get(prefix + "/{thread_id}/attachments/{attachment_id}", name=f"thread_attachment{prefix}")
    async def thread_attachment(
        thread_id: str, attachment_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
    ) -> dict[str, Any]:
        return await _attachment(request, rt, caller, scope_of(request.path_params), thread_id, attachment_id)

    # GET is served by http/hot_routes.py through read_thread; this declaration documents it.
    @router.get(prefix + "/{thread_id}", name=f"get_thread{prefix}", response_model=dict[str, Any])
    async def get_thread(thread_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> Response:
        return await read_thread(request, rt, caller, scope_of(request.path_params), thread_id)

    @router.patch(prefix + "/{thread_id}", name=f"update_thread{prefix}")
    async def update_thread(
        thread_id: str, request: Request, rt: RuntimeDep, caller: CallerDep
    ) -> dict[str, Any]:
        return await _update(request, rt, caller, scope_of(request.path_params), thread_id)

    @router.delete(prefix + "/{thread_id}", status_code=204, name=f"delete_thread{prefix}")
    async def delete_thread(thread_id: str, request: Request, rt: RuntimeDep, caller: CallerDep) -> Response:
        return await _delete(rt, caller, scope_of(request.path_params), thread_id)


# Each prefix and how its path parameters name the scope.
PREFIXES: dict[str, Callable[[dict[str, str]], Scope]] = {
    "/v0/threads": lambda p: Scope(),
    "/v0/inboxes/{inbox_id}/threads": lambda p: Scope(inbox_id=p["inbox_id"]),
    "/v0/pods/{pod_id}/threads": lambda p: Scope(pod_id=p["pod_id"]),
}
for _prefix, _scope_of in PREFIXES.items():
    _register(_prefix, _scope_of)
