"""Registers outbound delivery: the deliver_outbound job handler and DSN intake at our return paths."""

from __future__ import annotations

from agentmx.outbound import delivery, dsn
from agentmx.services import hooks

__all__ = ["delivery"]

hooks.return_path_handlers.append(hooks.ReturnPathHandler(claims=dsn.claims, handle=dsn.handle_dsn))
