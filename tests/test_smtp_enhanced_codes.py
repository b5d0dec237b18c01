"""RFC 2034 ENHANCEDSTATUSCODES on the inbound listener: offered in the EHLO answer, and every reply
after the greeting and EHLO (or HELO) carries an RFC 3463 code, aiosmtpd's own replies included.

Submission (tests/test_smtp_submission.py) and STARTTLS (tests/test_smtp_starttls.py) check theirs.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.server import ServerProcess
from conftest import Harness
from mail_support import make_message

SIZE_LIMIT = 20_000


def _codes(replies: list[tuple[int, bytes]]) -> list[tuple[int, str]]:
    """Each reply's code and the first word of its text: the enhanced code, when it has one."""
    return [(code, text.split(maxsplit=1)[0].decode()) for code, text in replies]


def _session(server: ServerProcess, inbox: str) -> list[tuple[int, bytes]]:
    """A session of errors and one delivery; the replies after EHLO, in order."""
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.has_extn("enhancedstatuscodes")
        replies = [
            smtp.docmd("RCPT", "TO:<a@example.com>"),  # before MAIL
            smtp.docmd("FROB"),
            smtp.docmd("MAIL", "<sender@example.com>"),  # no FROM:
            smtp.docmd("MAIL", f"FROM:<sender@example.com> SIZE={SIZE_LIMIT * 100}"),
            smtp.docmd("MAIL", "FROM:<sender@example.com> FOO=1"),
            smtp.mail("sender@example.com"),
            smtp.docmd("MAIL", "FROM:<sender@example.com>"),  # nested
            smtp.rcpt("nobody@agentmx.localhost"),
            smtp.docmd("DATA", "now"),
            smtp.rcpt(inbox),
            smtp.data(make_message(inbox).as_bytes()),
            smtp.noop(),
            smtp.verify("someone@example.com"),
            smtp.docmd("EXPN", "list"),
            smtp.rset(),
            smtp.mail("sender@example.com"),
            smtp.rcpt(inbox),
            smtp.data(b"x" * (SIZE_LIMIT + 100)),
            smtp.quit(),
        ]
    return replies


EXPECTED = [
    (503, "5.5.1"),  # Error: need MAIL command
    (500, "5.5.2"),  # Error: command "FROB" not recognized
    (501, "5.5.4"),  # Syntax: MAIL FROM: <address>
    (552, "5.3.4"),  # message size exceeds fixed maximum
    (555, "5.5.4"),  # MAIL FROM parameters not recognized
    (250, "2.1.0"),  # MAIL
    (503, "5.5.1"),  # Error: nested MAIL command
    (550, "5.1.1"),  # no such inbox
    (503, "5.5.1"),  # Error: need RCPT command
    (250, "2.1.5"),  # RCPT
    (250, "2.0.0"),  # stored
    (250, "2.0.0"),  # NOOP
    (252, "2.0.0"),  # VRFY
    (502, "5.5.1"),  # EXPN not implemented
    (250, "2.0.0"),  # RSET
    (250, "2.1.0"),
    (250, "2.1.5"),
    (552, "5.3.4"),  # too much mail data
    (221, "2.0.0"),  # Bye
]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_every_reply_after_ehlo_carries_an_enhanced_code(
    workers: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    """In the server process and in a front end: the replies aiosmtpd words (without a code)
    and ours get the code Postfix gives them."""
    env = {"AGENTMX_SMTP_WORKERS": workers, "AGENTMX_SMTP_MAX_MESSAGE_SIZE": str(SIZE_LIMIT)}
    server = fresh_server("sqlite", env=env).start()
    api = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
    inbox = AgentMail(api_key=server.create_key(), environment=api).inboxes.create().inbox_id
    assert _codes(_session(server, inbox)) == EXPECTED


def test_codes_on_both_databases_and_not_on_the_greeting_or_helo(harness: Harness) -> None:
    """RFC 2034 3: neither the greeting nor the EHLO/HELO answer takes one. A client that said HELO
    gets codes on the rest too, as from Postfix."""
    inbox = harness.client().inboxes.create().inbox_id
    smtp = smtplib.SMTP(timeout=30)
    try:
        assert smtp.connect("127.0.0.1", harness.server.smtp_port) == (
            220,
            b"agentmx.localhost agentmx ESMTP",
        )
        assert smtp.helo("client.example") == (250, b"agentmx.localhost")
        assert not smtp.has_extn("enhancedstatuscodes")  # HELO lists no extensions
        replies = [
            smtp.mail("sender@example.com"),
            smtp.rcpt(inbox),
            smtp.data(make_message(inbox).as_bytes()),
            smtp.quit(),
        ]
    finally:
        smtp.close()
    assert _codes(replies) == [(250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0"), (221, "2.0.0")]
    assert harness.client().inboxes.messages.list(inbox).count == 1


def test_no_code_on_an_ehlo_or_helo_refused(harness: Harness) -> None:
    """RFC 2034 3: any response to EHLO or HELO goes without a code, a 501 for a missing name too."""
    with smtplib.SMTP("127.0.0.1", harness.server.smtp_port, timeout=30) as smtp:
        assert smtp.docmd("EHLO") == (501, b"Syntax: EHLO hostname")
        assert smtp.docmd("HELO") == (501, b"Syntax: HELO hostname")
        assert smtp.docmd("FROB") == (500, b'5.5.2 Error: command "FROB" not recognized')
