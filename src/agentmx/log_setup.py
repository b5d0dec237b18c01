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


# A key in a query string, and a download link's token (it is the authorisation: anyone reading
# the log could fetch the file until it expires).
_SECRET_IN_PATH = re.compile(r"(api_key=|/v0/downloads/)[^&\s\"?]+")


class RedactKeys(logging.Filter):
    """uvicorn logs an accepted WebSocket's path with its query string at INFO, and every request's
    at debug (its access log): a ``?api_key=`` (README: the key may come in the URL) or a download
    token would put the secret in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(
                _SECRET_IN_PATH.sub(r"\1[redacted]", a)
                if isinstance(a, str) and ("api_key=" in a or "/v0/downloads/" in a)
                else a
                for a in record.args
            )
        return True
