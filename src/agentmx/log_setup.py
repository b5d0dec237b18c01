"""Logging as the server and its SMTP front ends set it up (``AGENTMX_LOG_LEVEL``)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# aiosmtpd logs every SMTP command line of every session at INFO ("mail.log"): about a dozen lines
# a message, with the envelope addresses. Shown at debug only; its warnings and errors always.
QUIET_BELOW_DEBUG = ("alembic", "mail.log")


def configure(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=FORMAT)
    if level.lower() != "debug":
        for name in QUIET_BELOW_DEBUG:
            logging.getLogger(name).setLevel(logging.WARNING)
