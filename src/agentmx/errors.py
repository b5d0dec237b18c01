"""Domain errors. Services raise these; each edge maps them in one table (http/errors.py, smtp/replies.py)."""

from __future__ import annotations

from typing import Any


class AgentMXError(Exception):
    """Base of every domain error. ``code`` is the stable snake_case code clients branch on."""

    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.fix = fix


class ValidationFailed(AgentMXError):
    code = "validation_error"

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.errors = errors if errors is not None else [{"path": [], "message": message}]


class Unauthorized(AgentMXError):
    code = "unauthorized"


class Forbidden(AgentMXError):
    code = "forbidden"


class NotFound(AgentMXError):
    code = "not_found"


class Conflict(AgentMXError):
    code = "conflict"


class AlreadyTaken(AgentMXError):
    code = "resource_taken"


class LimitExceeded(AgentMXError):
    code = "limit_exceeded"


class Unprocessable(AgentMXError):
    code = "unprocessable"


class MessageRejected(AgentMXError):
    code = "message_rejected"


class TooManyHops(MessageRejected):
    """More Received fields than AGENTMX_SMTP_HOP_LIMIT: the message is in a mail loop (SMTP 554 5.4.6)."""

    code = "too_many_hops"


class RateLimited(AgentMXError):
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class TemporaryFailure(AgentMXError):
    """Storage or dependency failure the caller may retry (SMTP 451, HTTP 503)."""

    code = "service_unavailable"


class StorageFull(TemporaryFailure):
    """The disk holding mail bytes is full (or over quota): nothing was stored (SMTP 452 4.3.1)."""

    code = "insufficient_storage"
