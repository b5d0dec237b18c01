"""TLS for the SMTP listeners (inbound STARTTLS, submission): the certificate, reloaded when its files change.

Certificates from ACME clients (certbot, lego, acme.sh) are renewed every 60-90 days by rewriting
the files. New sessions look at the files at most once a second and, when they changed, load them
into the live context, so a renewal is served without a restart; a renewal that does not load (a
key that does not match, a half-written file) is logged and the previous certificate kept.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
from typing import Any

from agentmx.config_errors import ConfigError

log = logging.getLogger("agentmx.smtp")

CHECK_EVERY = 1.0  # seconds between looks at the files' modification times
# Seconds a closing session waits for the client's close_notify. A client that vanished never
# sends one: asyncio's default of 30 s held its socket, and its place under the connection caps.
SHUTDOWN_TIMEOUT = 1.0


def load_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, no client certificates asked for."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_NONE  # senders are not authenticated by certificate
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the SMTP TLS certificate {cert!r} with key {key!r}: {exc}") from exc
    return context


class ReloadingContext:
    """The server context for ``cert`` and ``key``, reloaded in place when either file changes.

    In place: a listener with implicit TLS (submission on 465) holds its context from the start.
    """

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self._context = load_context(cert, key)  # a bad certificate at start stops the server
        self._stamp = self._files_stamp()
        self._checked_at = time.monotonic()

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked_at >= CHECK_EVERY:
            self._checked_at = now
            self._reload_if_changed()
        return self._context

    def _reload_if_changed(self) -> None:
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp  # logged once per change, not once per session
        try:
            load_context(self.cert, self.key)  # whole, before the live context takes them
            self._context.load_cert_chain(self.cert, self.key)
        except (ConfigError, OSError, ssl.SSLError) as exc:
            # Perhaps written half-way or missing for a moment: tried again when the files change.
            log.error("%s; keeping the loaded one", exc)
        else:
            log.info("SMTP TLS certificate reloaded from %s", self.cert)

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...] | None:
        """What changes when either file is rewritten or replaced; None while one is missing."""
        try:
            stats = [os.stat(path) for path in (self.cert, self.key)]
        except OSError:
            return None
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in stats)


def describe(session: Any) -> str | None:
    """The TLS in use on an aiosmtpd session, as a Received field states it; None for plain text."""
    info = getattr(session, "ssl", None)
    if not info:
        return None
    cipher = info.get("cipher")
    if not cipher:
        return "TLS"
    name, version, bits = cipher
    return f"{_token(str(version))} with cipher {_token(str(name))} ({int(bits)}/{int(bits)} bits)"


def _token(value: str) -> str:
    """Printable ASCII without the characters that would end a Received comment."""
    return re.sub(r"[^\x21-\x7e]|[()\\]", "", value)[:64]
