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
    payload = json.dumps([blob_key, expires, content_type or "application/octet-stream", filename or ""])
    encoded = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    token = f"{encoded}.{sign(secret, 'download:' + encoded)}"
    return base_url.rstrip("/") + PATH + token, datetime.fromtimestamp(expires, UTC)


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
