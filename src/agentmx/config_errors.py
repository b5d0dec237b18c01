"""Settings that cannot be used: the CLI prints the message as one line and exits (status 2).

Apart from settings.py, which needs pydantic, so that an SMTP front end may raise them without it.
"""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A setting that cannot be used (a file that does not load, ...): the CLI prints it and exits."""


def cannot_listen(what: str, host: str, port: int, exc: OSError) -> ConfigError:
    """A listener that could not bind (a port in use or privileged, an address this host lacks)."""
    # asyncio's own words repeat the address; a resolver's error (gaierror) has a negative number,
    # which os.strerror cannot name ("unknown error -2"): its strerror says why.
    reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
    return ConfigError(f"cannot listen for {what} on {host}:{port}: {reason[:1].lower()}{reason[1:]}")


def cannot_open_database(exc: Exception) -> ConfigError:
    """A database that is down, unknown, refuses us or may not be written: the operator's to fix."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy's wrapper: the driver's words, not the statement
    reason = str(orig if orig is not None else exc).strip() or type(exc).__name__
    return ConfigError(f"cannot open the database: {reason.splitlines()[0]}")
