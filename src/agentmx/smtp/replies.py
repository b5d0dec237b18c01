"""SMTP replies, and the table from domain errors to SMTP codes (the SMTP edge's http/errors.py)."""

from __future__ import annotations

from agentmx import errors as e

S250_OK = "250 OK"  # to MAIL and RCPT: the enhanced code says which (ENHANCED_CODES)
S250_QUEUED = "250 2.0.0 OK: message stored"
S421_TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
S421_TIMEOUT = "421 4.4.2 Error: timeout exceeded"
S421_TOO_MANY_ERRORS = "421 4.7.0 Error: too many errors"
S421_TOO_MANY_JUNK_COMMANDS = "421 4.7.0 Error: too many commands without mail"
S421_TLS_FAILED = "421 4.7.0 TLS handshake failed"
S421_SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
S451_TEMP_FAILURE = "451 4.3.0 Error: message could not be stored, try again later"
S451_RATE_LIMITED = "451 4.7.1 Too many messages, slow down"
S452_TOO_MANY_RECIPIENTS = "452 4.5.3 Error: too many recipients"
S452_STORAGE_FULL = "452 4.3.1 Insufficient system storage, try again later"
S550_NO_SUCH_INBOX = "550 5.1.1 Recipient address rejected: no such inbox"
S550_REJECTED = "550 5.7.1 Message rejected"
S550_DMARC = "550 5.7.1 Unauthenticated mail refused: the From domain's DMARC policy asks for it"
S552_TOO_BIG = "552 5.3.4 Error: message too big"
S554_TOO_MANY_HOPS = "554 5.4.6 Error: too many hops"  # Postfix's words for its hopcount_limit

# The most specific class wins (looked up along the exception's MRO).
ERROR_REPLIES: dict[type[e.AgentMXError], str] = {
    e.NotFound: S550_NO_SUCH_INBOX,
    e.Forbidden: S550_REJECTED,
    e.MessageRejected: S550_REJECTED,
    e.TooManyHops: S554_TOO_MANY_HOPS,
    e.RateLimited: S451_RATE_LIMITED,
    e.LimitExceeded: S552_TOO_BIG,
    e.TemporaryFailure: S451_TEMP_FAILURE,
    e.StorageFull: S452_STORAGE_FULL,
}


# SMTP submission (smtp/submission.py): the refusal's own words follow the code.
SUBMISSION_REPLIES: dict[type[e.AgentMXError], str] = {
    e.Unauthorized: "535 5.7.8",  # the key was deleted or expired since AUTH
    e.ValidationFailed: "550 5.6.0",
    e.Unprocessable: "554 5.6.0",
    e.NotFound: "550 5.1.0",
    e.Forbidden: "550 5.7.1",
    e.MessageRejected: "550 5.7.1",
    e.TooManyHops: "554 5.4.6",
    e.RateLimited: "451 4.7.1",
    e.LimitExceeded: "552 5.3.4",
    e.TemporaryFailure: "451 4.3.0",
    e.StorageFull: "452 4.3.1",
}
S553_NOT_YOUR_ADDRESS = "553 5.7.1 Sender address is not the authenticated inbox"
S553_BAD_RECIPIENT = "553 5.1.3 Recipient address cannot be sent to"


# RFC 3463 enhanced status codes (RFC 2034's ENHANCEDSTATUSCODES) for the replies written without
# one: aiosmtpd's own ("250 OK", "503 Error: need MAIL command", "221 Bye", ...) and S250_OK, as
# Postfix codes them. Looked up by the command answered, then by the reply code alone; a reply
# code not listed gets its class's x.0.0. Replies that carry a code keep it.
ENHANCED_CODES: dict[tuple[str | None, str], str] = {
    ("MAIL", "250"): "2.1.0",
    ("RCPT", "250"): "2.1.5",
    (None, "220"): "2.0.0",  # Ready to start TLS (the greeting takes none)
    (None, "221"): "2.0.0",
    (None, "235"): "2.7.0",
    (None, "250"): "2.0.0",
    (None, "252"): "2.0.0",  # VRFY
    (None, "454"): "4.7.0",  # TLS not available
    (None, "500"): "5.5.2",  # command not recognized, bad syntax, line too long
    (None, "501"): "5.5.4",  # syntax of the arguments
    (None, "502"): "5.5.1",  # not implemented (EXPN, VRFY of an unparsable address)
    (None, "503"): "5.5.1",  # bad sequence of commands
    (None, "530"): "5.7.0",
    (None, "535"): "5.7.8",
    (None, "552"): "5.3.4",  # MAIL FROM SIZE= over the limit
    (None, "554"): "5.7.0",  # aiosmtpd's only one: commands after a failed TLS handshake
    (None, "555"): "5.5.4",  # MAIL or RCPT parameters not recognized
}
# RFC 2034 section 3: not the greeting, nor the reply to EHLO or HELO. A client that said HELO
# still gets codes on the rest, as from Postfix (our own replies always carried them).
GREETING = "greeting"  # what a session answers before its first command
UNCODED = frozenset({GREETING, "EHLO", "HELO"})
_CODED = frozenset({"2.", "4.", "5."})


def with_enhanced_code(reply: str, command: str | None) -> str:
    """One line of a reply, with an enhanced code after its reply code if it should have one.

    ``command``: the command it answers, if known. Only 2xx, 4xx and 5xx replies take a code.
    """
    if command in UNCODED or reply[4:6] in _CODED or reply[:1] not in ("2", "4", "5"):
        return reply
    code = reply[:3]
    enhanced = ENHANCED_CODES.get((command, code)) or ENHANCED_CODES.get((None, code)) or f"{code[0]}.0.0"
    separator, text = reply[3:4] or " ", reply[4:]
    return f"{code}{separator}{enhanced} {text}" if text else f"{code}{separator}{enhanced}"


def submission_reply_for(exc: BaseException) -> str:
    """The reply to a refused submission: the code, then the error's message on one line."""
    code = _most_specific(SUBMISSION_REPLIES, exc)
    if code is None:
        return S451_TEMP_FAILURE
    words = " ".join(str(getattr(exc, "message", exc)).split())[:400]
    if isinstance(exc, e.RateLimited):  # the API's Retry-After, for the agent reading the reply
        words += f"; try again in {exc.retry_after} seconds"
    return f"{code} {words}"


def reply_for(exc: BaseException) -> str:
    """The SMTP reply for an error; anything unknown keeps custody with the client (451)."""
    return _most_specific(ERROR_REPLIES, exc) or S451_TEMP_FAILURE


def _most_specific(table: dict[type[e.AgentMXError], str], exc: BaseException) -> str | None:
    """The entry for the exception's class or its nearest base along the MRO."""
    return next((table[cls] for cls in type(exc).__mro__ if cls in table), None)
