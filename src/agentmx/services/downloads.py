"""Signed, expiring download links for raw messages and attachments (no API key needed to follow one)."""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from agentmx.errors import Forbidden, NotFound
from agentmx.services.secrets import sign, verify

PATH = "/v0/downloads/"
# Characters of a filename the link carries (for its Content-Disposition): a name of any length came
# back in the link, and one of 100,000 characters made it longer than any server reads (the
# connection was reset; nginx refuses a request line over 8 KB). File systems keep 255 at most.
FILENAME_CHARS = 255
KEPT_SUFFIX_CHARS = 16  # ".tar.gz", ".docx": the part after the last dot stays, when it is short


@dataclass
class Download:
    blob_key: str
    content_type: str
    filename: str | None
    expires_at: datetime


def make_url(
    secret: bytes,
    base_url: str,
    blob_key: str,
    content_type: str | None,
    filename: str | None,
    ttl: int,
) -> tuple[str, datetime]:
    expires = math.ceil(time.time()) + ttl  # whole seconds, rounded up: a link lives at least ttl
    payload = json.dumps(
        [blob_key, expires, content_type or "application/octet-stream", _short(filename or "")]
    )
    encoded = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    token = f"{encoded}.{sign(secret, 'download:' + encoded)}"
    return base_url.rstrip("/") + PATH + token, datetime.fromtimestamp(expires, UTC)


def _short(filename: str) -> str:
    if len(filename) <= FILENAME_CHARS:
        return filename
    stem, dot, suffix = filename.rpartition(".")
    if not dot or len(suffix) >= KEPT_SUFFIX_CHARS:
        return filename[:FILENAME_CHARS]
    return stem[: FILENAME_CHARS - len(suffix) - 1] + "." + suffix


def resolve(secret: bytes, token: str) -> Download:
    """The download a token names; 404 for a forged or malformed token, 403 once it has expired."""
    encoded, _, signature = token.partition(".")
    if not signature or not verify(secret, "download:" + encoded, signature):
        raise NotFound("Download not found")
    try:
        blob_key, expires, content_type, filename = json.loads(
            base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        )
    except (ValueError, TypeError, binascii.Error) as exc:
        raise NotFound("Download not found") from exc
    if int(expires) < time.time():
        raise Forbidden("Download link expired", code="forbidden", fix="Request a new download_url.")
    return Download(str(blob_key), str(content_type), filename or None, datetime.fromtimestamp(expires, UTC))
