"""Logging as the server and its SMTP front ends set it up (``AGENTMX_LOG_LEVEL``)."""

from __future__ import annotations

import logging
import re

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# aiosmtpd logs every SMTP command line of every session at INFO ("mail.log"): about a dozen lines
# a message, with the envelope addresses. Shown at debug only; its warnings and errors always.
QUIET_BELOW_DEBUG = ("alembic", "mail.log")


def configure(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    if level.lower() != "debug":
        for name in QUIET_BELOW_DEBUG:
            logging.getLogger(name).setLevel(logging.WARNING)


_KEY_IN_QUERY = re.compile(r"(api_key=)[^&\s\"]+")


class RedactKeys(logging.Filter):
    """uvicorn logs an accepted WebSocket's path with its query string at INFO: a ``?api_key=``
    (README: the key may come in the URL) would put the secret in every log line of a connect."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(
                _KEY_IN_QUERY.sub(r"\1[redacted]", a) if isinstance(a, str) and "api_key=" in a else a
                for a in record.args
            )
        return True
