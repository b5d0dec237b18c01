"""Turning SendAttachment requests (base64 ``content`` or a ``url``) into attachment bytes.

Reusable by drafts. A URL must answer 2xx (redirects followed); anything else refuses the send
with 403 ``message_rejected`` as AgentMail does. URL bytes (decoded: ``bounded_decode``) are capped at ``MAX_URL_BYTES`` per message,
and all of a message's downloads together at ``timeout`` seconds: a server trickling bytes for ever
stays under every per-read timeout, and held the send (and its client) with it.
Every hop must resolve to a public address unless ``allow_private`` (the server would otherwise
fetch internal services and mail their answers out: SSRF).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import mimetypes
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentmx.errors import MessageRejected, ValidationFailed
from agentmx.events.ssrf import BlockedAddress, check_destination, pinned
from agentmx.mail.compose import OutAttachment
from agentmx.mail.parse import CONTENT_ID_CHARS, CONTENT_TYPE_CHARS, MIME_TYPE
from agentmx.services import limits
from agentmx.services.bounded_decode import (
    ACCEPT_ENCODING,
    BoundedDecoder,
    DecodedTooLarge,
    UnsupportedEncoding,
)

if TYPE_CHECKING:
    import httpx

MAX_URL_BYTES = 30 * 1024 * 1024
MAX_REDIRECTS = 5
FETCH_TIMEOUT = 30.0  # per read or connect; the whole download is bounded by resolve's ``timeout``
DISPOSITIONS = ("inline", "attachment")


@dataclass(frozen=True)
class AttachmentSpec:
    filename: str | None = None
    content_type: str | None = None
    content_disposition: str | None = None
    content_id: str | None = None
    content: str | None = None  # base64
    url: str | None = None


def _bad(index: int, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"attachments[{index}]: {message}", [{"path": ["attachments", str(index)], "message": message}]
    )


def _content_type(spec: AttachmentSpec, fetched: str | None = None) -> str:
    if spec.content_type:
        return spec.content_type
    fetched = (fetched or "").split(";", 1)[0].strip()
    if MIME_TYPE.fullmatch(fetched) and len(fetched) <= CONTENT_TYPE_CHARS:  # a server's header: any text
        return fetched
    guessed = mimetypes.guess_type(spec.filename or "")[0]
    return guessed or "application/octet-stream"


def _unfetchable(
    url: str, why: str, fix: str = "Use a public URL that can be downloaded without authentication."
) -> MessageRejected:
    return MessageRejected(f"Attachment URL could not be fetched ({why}): {url}", fix=fix)


def _too_large() -> MessageRejected:
    return MessageRejected(
        "URL attachments exceed 30 MB per message", fix="Send fewer or smaller attachments."
    )


async def _read(response: httpx.Response, url: str, budget: int) -> bytes:
    """The decoded body, refused as soon as it passes ``budget`` decoded bytes: httpx's own
    decoding inflates each received chunk whole, so a small gzip body could fill memory first."""
    try:
        decoder = BoundedDecoder(response.headers.get("content-encoding", ""), budget)
        chunks = [decoder.feed(chunk) async for chunk in response.aiter_raw()]
        chunks.append(decoder.flush())
    except DecodedTooLarge as exc:
        raise _too_large() from exc
    except UnsupportedEncoding as exc:
        raise _unfetchable(url, f"unsupported Content-Encoding {exc}") from exc
    except zlib.error as exc:
        raise _unfetchable(url, "bad compressed body") from exc
    return b"".join(chunks)


async def _fetch(
    client: httpx.AsyncClient, url: str, budget: int, allow_private: bool
) -> tuple[bytes, str | None]:
    """GET ``url``, following redirects by hand so each hop passes the address check, and each
    request goes to the address that was checked (a second DNS answer could name an internal one)."""
    import httpx

    try:
        for _ in range(MAX_REDIRECTS + 1):
            ip = await check_destination(url, allow_private)
            address, host, extensions = pinned(url, ip)
            headers = {**host, "Accept-Encoding": ACCEPT_ENCODING}  # what BoundedDecoder reads
            async with client.stream("GET", address, headers=headers, extensions=extensions) as response:
                if response.is_redirect and response.headers.get("location"):
                    url = str(httpx.URL(url).join(response.headers["location"]))
                    continue
                if not 200 <= response.status_code < 300:
                    raise _unfetchable(url, f"HTTP {response.status_code}")
                # Refused before reading when it says so (a compressed body's length is not its size).
                declared = response.headers.get("content-length", "")
                encoded = response.headers.get("content-encoding", "identity") != "identity"
                if declared.isascii() and declared.isdigit() and int(declared) > budget and not encoded:
                    raise _too_large()
                return await _read(response, url, budget), response.headers.get("content-type")
        raise _unfetchable(url, "too many redirects")
    except BlockedAddress as exc:
        raise _unfetchable(url, str(exc)) from exc
    except (httpx.HTTPError, OSError, ValidationFailed) as exc:
        raise _unfetchable(url, type(exc).__name__) from exc


def _checked(index: int, spec: AttachmentSpec) -> bytes | None:
    """Every rule of one attachment that needs no download: its decoded ``content``, or None for a URL."""
    if (spec.content is None) == (spec.url is None):
        raise _bad(index, "give exactly one of content or url")
    if spec.content_disposition is not None and spec.content_disposition not in DISPOSITIONS:
        raise _bad(index, "content_disposition must be inline or attachment")
    for name, value in (
        ("filename", spec.filename),
        ("content_type", spec.content_type),
        ("content_id", spec.content_id),
    ):
        if value is not None and ("\r" in value or "\n" in value):
            raise _bad(index, f"{name} contains a line break")
    content_type = spec.content_type or ""
    if not (content_type.isascii() and content_type.isprintable()):  # a MIME type is RFC 2045 tokens
        raise _bad(index, "content_type must be printable ASCII (a MIME type)")
    # The widths of the attachment columns: PostgreSQL refused a draft's longer ones (a 500).
    if len(content_type) > CONTENT_TYPE_CHARS or len(spec.content_id or "") > CONTENT_ID_CHARS:
        raise _bad(
            index,
            f"content_type is at most {CONTENT_TYPE_CHARS}, content_id {CONTENT_ID_CHARS} characters",
        )
    if spec.content is None:
        return None
    try:
        return base64.b64decode(spec.content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(index, "content is not valid base64") from exc


def check(specs: list[AttachmentSpec]) -> list[bytes | None]:
    """All of the attachments' own rules (400), before any URL is fetched: a bad request costs no
    outbound HTTP. The decoded ``content`` of each, None for a URL."""
    limits.check_count(specs, limits.MAX_ATTACHMENTS, "attachments", "attachments")
    return [_checked(index, spec) for index, spec in enumerate(specs)]


async def _download(
    url: str, budget: int, allow_private: bool, deadline: float, timeout: float
) -> tuple[bytes, str | None]:
    # httpx is imported at the first URL attachment: 15 ms of every start, for a few sends.
    import httpx

    # trust_env=False: a proxy from the environment would make its own DNS lookup.
    try:
        async with (
            asyncio.timeout_at(deadline),
            httpx.AsyncClient(follow_redirects=False, timeout=FETCH_TIMEOUT, trust_env=False) as client,
        ):
            return await _fetch(client, url, budget, allow_private)
    except TimeoutError as exc:
        slow = f"not downloaded within {timeout:g} s"
        fix = "Use a URL that serves the file at once, or send its bytes as content."
        raise _unfetchable(url, slow, fix) from exc


async def resolve(
    specs: list[AttachmentSpec],
    *,
    checked: list[bytes | None] | None = None,
    allow_private: bool = False,
    timeout: float = 60.0,
) -> list[OutAttachment]:
    """The attachments' bytes: ``check``'s rules for all of them first, then the URL downloads.

    ``checked`` is what ``check(specs)`` returned, when the caller ran it already (before its own
    checks): the ``content`` is not decoded a second time."""
    decoded = check(specs) if checked is None else checked
    out: list[OutAttachment] = []
    budget = MAX_URL_BYTES
    deadline = asyncio.get_running_loop().time() + timeout
    for spec, content in zip(specs, decoded, strict=True):
        fetched_type: str | None = None
        if content is not None:
            data = content
        else:
            assert spec.url is not None
            data, fetched_type = await _download(spec.url, budget, allow_private, deadline, timeout)
            budget -= len(data)
        out.append(
            OutAttachment(
                data=data,
                filename=spec.filename,
                content_type=_content_type(spec, fetched_type),
                disposition=spec.content_disposition,
                content_id=spec.content_id,
            )
        )
    return out
