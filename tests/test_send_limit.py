"""The per-inbox send limit (AGENTMX_INBOX_SEND_LIMIT_PER_HOUR): every way of sending counts, over the
limit the API answers 429 with Retry-After and submission 451 4.7.1, and a scheduled draft due
meanwhile waits for room (scheduled, not failed) and is sent once there is room."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage

import httpx
import pytest
from agentmail.core.api_error import ApiError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmx.db.models import Job, Message
from agentmx.testing.certs import unverified_client_context, write_self_signed
from agentmx.testing.server import free_port
from conftest import BACKENDS, NO_RETRY, Harness
from file_server import FileServer
from send_support import ext, relaying_server, wait_for

LIMIT = 2


class Served(Harness):
    submission_port = 0

    def submit(self, inbox: str, to: str, subject: str, sender: str | None = None) -> None:
        msg = EmailMessage(policy=policy.SMTP)
        msg["From"], msg["To"], msg["Subject"] = sender or inbox, to, subject
        msg.set_content(subject)
        with smtplib.SMTP(
            "127.0.0.1", self.submission_port, timeout=30, local_hostname="agent.example"
        ) as smtp:
            smtp.starttls(context=unverified_client_context())
            smtp.login(inbox, self.api_key)
            smtp.sendmail(inbox, [to], msg.as_bytes())

    def age_sent_mail(self, inbox: str) -> None:
        """Moves the inbox's messages two hours back, out of the window (as if the hour had passed)."""
        then = datetime.now(UTC) - timedelta(hours=2)

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(update(Message).where(Message.inbox_id == inbox).values(timestamp=then))

        self._on_database(write, write=True)

    def run_job_now(self, key: str) -> None:
        async def write(conn: AsyncConnection) -> None:
            await conn.execute(update(Job).where(Job.key == key).values(run_at=datetime.now(UTC)))

        self._on_database(write, write=True)


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp(f"send-limit-{request.param}")
    write_self_signed(tmp)
    port = free_port()
    env = {
        "AGENTMX_INBOX_SEND_LIMIT_PER_HOUR": str(LIMIT),
        "AGENTMX_SMTP_TLS_CERT": str(tmp / "cert.pem"),
        "AGENTMX_SMTP_TLS_KEY": str(tmp / "key.pem"),
        "AGENTMX_SUBMISSION_PORT": str(port),
        "AGENTMX_ATTACHMENT_URL_ALLOW_PRIVATE": "true",  # the file server is on loopback
    }
    with relaying_server(tmp / "data", request.param, env) as (server, _):
        served = Served(server, request.param)
        served.submission_port = port
        yield served


def test_api_sends_past_the_limit_get_429_with_retry_after(served: Served) -> None:
    client = served.client()
    inbox, other = client.inboxes.create().inbox_id, client.inboxes.create().inbox_id
    first = client.inboxes.messages.send(inbox, to=ext(), subject="one", text="1")
    client.inboxes.messages.reply(inbox, first.message_id, text="a reply counts too")
    with pytest.raises(ApiError) as limited:
        client.inboxes.messages.send(inbox, to=ext(), subject="three", text="3", request_options=NO_RETRY)
    assert limited.value.status_code == 429
    assert isinstance(limited.value.body, dict) and limited.value.body["code"] == "rate_limit_exceeded"
    assert limited.value.headers is not None
    assert 3500 <= int(limited.value.headers["retry-after"]) <= 3600  # the first send leaves the hour then
    with pytest.raises(ApiError) as forward:
        client.inboxes.messages.forward(inbox, first.message_id, to=ext(), request_options=NO_RETRY)
    assert forward.value.status_code == 429
    # Per inbox: another inbox of the same key sends.
    assert client.inboxes.messages.send(other, to=ext(), text="mine").message_id
    assert sorted(m.subject or "" for m in client.inboxes.messages.list(inbox).messages) == ["Re: one", "one"]


def test_submission_counts_and_is_refused_with_451(served: Served) -> None:
    client = served.client()
    inbox = client.inboxes.create().inbox_id
    served.submit(inbox, ext(), "submitted one")
    served.submit(inbox, ext(), "submitted two")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        served.submit(inbox, ext(), "submitted three")
    assert refused.value.smtp_code == 451 and refused.value.smtp_error.startswith(b"4.7.1 ")
    # The reply says when there is room again (the API's Retry-After), for the agent behind the client.
    retry = re.search(rb"try again in (\d+) seconds", refused.value.smtp_error)
    assert retry is not None, refused.value.smtp_error
    assert 3500 <= int(retry.group(1)) <= 3600
    # A message that could never go is refused for what it is, over the limit too.
    with pytest.raises(smtplib.SMTPDataError) as not_from_the_inbox:
        served.submit(inbox, ext(), "forged", sender=ext())
    assert not_from_the_inbox.value.smtp_code == 550
    with pytest.raises(ApiError) as limited:
        client.inboxes.messages.send(inbox, to=ext(), text="api", request_options=NO_RETRY)
    assert limited.value.status_code == 429


def test_a_scheduled_draft_due_over_the_limit_waits_for_room(served: Served) -> None:
    client = served.client()
    inbox = client.inboxes.create().inbox_id
    for n in range(LIMIT):
        client.inboxes.messages.send(inbox, to=ext(), text=f"{n}")
    draft = client.inboxes.drafts.create(
        inbox,
        to=[ext()],
        subject="scheduled",
        text="later",
        send_at=datetime.now(UTC) + timedelta(seconds=0.3),
    )
    job = f"draft:{draft.draft_id}"

    def ran() -> bool:  # and was put off, or failed the draft
        if client.inboxes.drafts.get(inbox, draft.draft_id).send_status == "failed":
            return True
        return served.count_rows("SELECT count(*) FROM jobs WHERE key = :k AND attempts > 0", k=job) > 0

    wait_for(ran)
    waiting = client.inboxes.drafts.get(inbox, draft.draft_id)  # still there, scheduled, not failed
    assert waiting.send_status == "scheduled" and "scheduled" in waiting.labels
    assert served.count_rows("SELECT count(*) FROM jobs WHERE key = :k", k=job) == 1
    assert "scheduled" not in [m.subject for m in client.inboxes.messages.list(inbox).messages]

    served.age_sent_mail(inbox)  # the hour has passed
    served.run_job_now(job)  # its retry is due
    sent = wait_for(
        lambda: [m for m in client.inboxes.messages.list(inbox).messages if m.subject == "scheduled"]
    )
    assert len(sent) == 1
    with pytest.raises(ApiError) as gone:
        client.inboxes.drafts.get(inbox, draft.draft_id, request_options=NO_RETRY)
    assert gone.value.status_code == 404


def test_a_send_over_the_limit_fetches_no_url_attachment(served: Served) -> None:
    """Refused before the slow work: a runaway agent's sends past the limit fetch, render and write nothing."""
    files = FileServer({"/file.txt": ({"Content-Type": "text/plain"}, b"attachment bytes")})
    try:
        client = served.client()
        inbox = client.inboxes.create().inbox_id
        for n in range(LIMIT):
            client.inboxes.messages.send(inbox, to=ext(), subject=f"s{n}", text="t")
        attachment = {"filename": "file.txt", "url": files.base + "/file.txt"}
        headers = {"Authorization": f"Bearer {served.api_key}"}
        with httpx.Client(base_url=served.server.base_url, headers=headers, timeout=30) as http:
            response = http.post(
                f"/v0/inboxes/{inbox}/messages/send",
                json={"to": ext(), "text": "t", "attachments": [attachment]},
            )
        assert response.status_code == 429, response.text
        assert files.requests == [], "a send over the limit fetched its URL attachment"
    finally:
        files.stop()


def test_a_malformed_send_over_the_limit_is_refused_as_malformed(served: Served) -> None:
    """429 means "well-formed, try again later": a request that could never be sent learns so first."""
    client = served.client()
    inbox = client.inboxes.create().inbox_id
    for n in range(LIMIT):
        first = client.inboxes.messages.send(inbox, to=ext(), subject=f"s{n}", text="t")
    headers = {"Authorization": f"Bearer {served.api_key}"}
    send = f"/v0/inboxes/{inbox}/messages/send"
    malformed = [
        (send, {"to": "not an address", "text": "t"}, 400),
        (send, {"to": ext(), "cc": ["a@b.example", "nope"], "text": "t"}, 400),
        (send, {"text": "no recipients"}, 422),
        (send, {"to": ext(), "subject": "a\r\nBcc: victim@example.org", "text": "t"}, 400),
        (send, {"to": ext(), "subject": "a\u2028b", "text": "t"}, 400),
        (send, {"to": ext(), "headers": {"X-A": "v\r\nBcc: victim@example.org"}, "text": "t"}, 400),
        (send, {"to": ext(), "headers": {"Bad Name": "v"}, "text": "t"}, 400),
        (send, {"to": ext(), "labels": ["bounced"], "text": "t"}, 400),
        (f"/v0/inboxes/{inbox}/messages/{first.message_id}/reply", {"cc": "nope", "text": "t"}, 400),
        (f"/v0/inboxes/{inbox}/messages/{first.message_id}/forward", {"to": "nope"}, 400),
    ]
    with httpx.Client(base_url=served.server.base_url, headers=headers, timeout=30) as http:
        for path, body, status in malformed:
            response = http.post(path, json=body)
            assert response.status_code == status, (body, response.text)
            assert "retry-after" not in response.headers
        # Well-formed, it is the limit that refuses it.
        assert http.post(send, json={"to": ext(), "text": "t"}).status_code == 429


def test_an_api_draft_sent_over_the_limit_gets_429_and_is_kept(served: Served) -> None:
    client = served.client()
    inbox = client.inboxes.create().inbox_id
    draft = client.inboxes.drafts.create(inbox, to=[ext()], subject="a draft", text="later", labels=["mine"])
    empty = client.inboxes.drafts.create(inbox, subject="nobody to send to")
    for n in range(LIMIT):
        client.inboxes.messages.send(inbox, to=ext(), subject=f"s{n}", text="t")

    with pytest.raises(ApiError) as limited:
        client.inboxes.drafts.send(inbox, draft.draft_id, request_options=NO_RETRY)
    assert limited.value.status_code == 429
    assert isinstance(limited.value.body, dict) and limited.value.body["code"] == "rate_limit_exceeded"
    assert limited.value.headers is not None
    assert 3500 <= int(limited.value.headers["retry-after"]) <= 3600
    kept = client.inboxes.drafts.get(inbox, draft.draft_id)
    assert kept.model_dump() == client.inboxes.drafts.get(inbox, draft.draft_id).model_dump()
    assert (kept.subject, kept.to, kept.text, kept.send_status) == ("a draft", draft.to, "later", None)
    assert kept.updated_at == draft.updated_at and "mine" in kept.labels
    assert "a draft" not in [m.subject for m in client.inboxes.messages.list(inbox).messages]
    # A draft that could never be sent is refused for that first.
    with pytest.raises(ApiError) as unsendable:
        client.inboxes.drafts.send(inbox, empty.draft_id, request_options=NO_RETRY)
    assert unsendable.value.status_code == 422

    served.age_sent_mail(inbox)  # the hour has passed: the kept draft sends as it was
    sent = client.inboxes.drafts.send(inbox, draft.draft_id, request_options=NO_RETRY)
    got = client.inboxes.messages.get(inbox, sent.message_id)
    assert got.subject == "a draft" and "mine" in got.labels
