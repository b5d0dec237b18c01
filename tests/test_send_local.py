"""Sending between inboxes of one server, through the SDK: send, reply, reply-all, forward, idempotency, limits."""

from __future__ import annotations

import base64
import secrets
import smtplib
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage

import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.events.types.message_received_event import MessageReceivedEvent
from agentmail.websockets.types import Subscribe, Subscribed

from conftest import NO_RETRY, Harness
from send_support import new_inbox, wait_for


def _arrived(client: AgentMail, inbox_id: str, message_id: str):  # type: ignore[no-untyped-def]
    def find():  # type: ignore[no-untyped-def]
        for item in client.inboxes.messages.list(inbox_id).messages:
            if item.message_id == message_id:
                return item
        return None

    return wait_for(find)


def _code(exc: ApiError) -> str | None:
    body = exc.body
    return body.get("code") if isinstance(body, dict) else getattr(body, "code", None)


def _labels(client: AgentMail, inbox_id: str, message_id: str) -> set[str]:
    return set(client.inboxes.messages.get(inbox_id, message_id).labels)


def test_send_to_local_inbox_arrives(harness: Harness) -> None:
    client = harness.client()
    a = new_inbox(client, display_name="Agent A")
    b = new_inbox(client)
    sent = client.inboxes.messages.send(
        a, to=b, subject="Hello B", text="Plain body", html="<p>Plain body</p>"
    )
    assert sent.message_id.startswith("<") and sent.message_id.endswith("@" + a.split("@")[1] + ">")
    assert sent.thread_id

    mine = client.inboxes.messages.get(a, sent.message_id)
    assert "sent" in mine.labels and mine.thread_id == sent.thread_id
    assert mine.to == [b] and mine.subject == "Hello B"

    _arrived(client, b, sent.message_id)
    theirs = client.inboxes.messages.get(b, sent.message_id)
    assert "received" in theirs.labels
    assert theirs.from_ == f"Agent A <{a}>"
    assert theirs.text is not None and "Plain body" in theirs.text
    assert theirs.html is not None and "<p>Plain body</p>" in theirs.html
    wait_for(lambda: "delivered" in _labels(client, a, sent.message_id))


def test_mail_an_inbox_sends_itself_is_received_too(harness: Harness) -> None:
    """An agent mailing itself (a reminder, a first test) gets it as received mail: one message in the
    inbox, labelled sent and received, with its message.received event (it was dropped as a duplicate)."""
    client = harness.client()
    a = new_inbox(client)
    with client.websockets.connect() as socket:
        socket.send_subscribe(Subscribe(inbox_ids=[a], event_types=["message.received"]))
        assert isinstance(socket.recv(), Subscribed)
        sent = client.inboxes.messages.send(a, to=a, subject="Note to self", text="Remember the milk")
        event = socket.recv()
    assert isinstance(event, MessageReceivedEvent), event
    assert event.message.message_id == sent.message_id and "received" in event.message.labels
    items = client.inboxes.messages.list(a).messages
    assert [m.message_id for m in items] == [sent.message_id]
    assert {"sent", "received", "unread"} <= set(items[0].labels)
    thread = client.inboxes.threads.get(a, sent.thread_id)
    assert thread.message_count == 1 and {"sent", "received"} <= set(thread.labels)


def test_mail_an_inbox_sends_itself_that_its_lists_refuse_stays_visible(harness: Harness) -> None:
    """A copy of its own mail that the inbox's receive lists refuse is not received: taking its
    ``blocked`` label hid the sent message itself from every list (allow lists refuse all others)."""
    client = harness.client()
    a = new_inbox(client)
    client.inboxes.lists.create(a, "receive", "allow", entry="partner.example")
    sent = client.inboxes.messages.send(a, to=a, subject="Note to self", text="Remember the milk")
    wait_for(lambda: "delivered" in _labels(client, a, sent.message_id))
    labels = _labels(client, a, sent.message_id)
    assert "blocked" not in labels and "sent" in labels, labels
    assert [m.message_id for m in client.inboxes.messages.list(a).messages] == [sent.message_id]
    assert [t.thread_id for t in client.inboxes.threads.list(a).threads] == [sent.thread_id]


def test_bcc_is_delivered_but_not_in_headers(harness: Harness) -> None:
    client = harness.client()
    a, b, hidden = new_inbox(client), new_inbox(client), new_inbox(client)
    sent = client.inboxes.messages.send(a, to=[b], bcc=[hidden], subject="bcc", text="x")
    _arrived(client, hidden, sent.message_id)
    _arrived(client, b, sent.message_id)
    seen_by_b = client.inboxes.messages.get(b, sent.message_id)
    assert not seen_by_b.bcc
    assert hidden not in (seen_by_b.to or []) + (seen_by_b.cc or [])
    assert client.inboxes.messages.get(a, sent.message_id).bcc == [hidden]


def test_reply_threads_on_both_sides(harness: Harness) -> None:
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    first = client.inboxes.messages.send(a, to=b, subject="Question", text="How are you?")
    received = _arrived(client, b, first.message_id)

    answer = client.inboxes.messages.reply(b, first.message_id, text="Fine, thanks.")
    assert answer.thread_id == received.thread_id  # b's reply joins b's thread
    in_b = client.inboxes.messages.get(b, answer.message_id)
    assert in_b.to == [a] and in_b.subject == "Re: Question"
    assert in_b.in_reply_to == first.message_id and first.message_id in (in_b.references or [])

    back = _arrived(client, a, answer.message_id)
    assert back.thread_id == first.thread_id  # lands in a's original thread
    thread = client.inboxes.threads.get(a, first.thread_id)
    assert thread.message_count == 2

    # Replying again does not stack prefixes.
    again = client.inboxes.messages.reply(a, answer.message_id, text="Good.")
    assert client.inboxes.messages.get(a, again.message_id).subject == "Re: Question"
    assert again.thread_id == first.thread_id


def test_reply_all_addresses_everyone_but_the_inbox(harness: Harness) -> None:
    client = harness.client()
    a, b, c, d = (new_inbox(client) for _ in range(4))
    first = client.inboxes.messages.send(a, to=[b, c], cc=[d], subject="Team", text="Hi all")
    _arrived(client, b, first.message_id)

    reply = client.inboxes.messages.reply_all(b, first.message_id, text="Hi team")
    stored = client.inboxes.messages.get(b, reply.message_id)
    assert set(stored.to or []) == {a, c}
    assert set(stored.cc or []) == {d}
    for inbox in (a, c, d):
        _arrived(client, inbox, reply.message_id)

    # reply with reply_all=True on the reply endpoint behaves the same.
    second = client.inboxes.messages.reply(c, first.message_id, text="me too", reply_all=True)
    stored = client.inboxes.messages.get(c, second.message_id)
    assert set((stored.to or []) + (stored.cc or [])) == {a, b, d}


def test_reply_recipients_given_override_the_derived_ones_field_by_field(harness: Harness) -> None:
    client = harness.client()
    a, b, c, d = (new_inbox(client) for _ in range(4))
    first = client.inboxes.messages.send(a, to=[b], subject="Plan", text="Thoughts?")
    _arrived(client, b, first.message_id)

    # cc alone: the sender stays in to (cc and bcc alone were treated differently).
    with_cc = client.inboxes.messages.reply(b, first.message_id, text="Looping in c", cc=c)
    stored = client.inboxes.messages.get(b, with_cc.message_id)
    assert (stored.to, stored.cc) == ([a], [c])
    with_bcc = client.inboxes.messages.reply(b, first.message_id, text="Quietly to d", bcc=[d])
    stored = client.inboxes.messages.get(b, with_bcc.message_id)
    assert (stored.to, stored.bcc) == ([a], [d])
    # to replaces the sender.
    rerouted = client.inboxes.messages.reply(b, first.message_id, text="For c", to=[c])
    assert client.inboxes.messages.get(b, rerouted.message_id).to == [c]
    for inbox, mid in ((a, with_cc), (c, with_cc), (a, with_bcc), (d, with_bcc), (c, rerouted)):
        _arrived(client, inbox, mid.message_id)


def test_forward_quotes_original_and_attachments(harness: Harness) -> None:
    client = harness.client()
    a, b, c = new_inbox(client), new_inbox(client), new_inbox(client)
    payload = b"attachment bytes \x00\x01"
    first = client.inboxes.messages.send(
        a,
        to=b,
        subject="Report",
        text="Original text here",
        attachments=[
            {
                "filename": "r.bin",
                "content_type": "application/octet-stream",
                "content": base64.b64encode(payload).decode(),
            }
        ],
    )
    original = _arrived(client, b, first.message_id)

    fwd = client.inboxes.messages.forward(b, first.message_id, to=c, text="FYI see below")
    assert fwd.thread_id == original.thread_id
    got = _arrived(client, c, fwd.message_id)
    full = client.inboxes.messages.get(c, got.message_id)
    assert full.subject == "Fwd: Report"
    assert full.text is not None
    assert (
        "FYI see below" in full.text
        and "Forwarded message" in full.text
        and "Original text here" in full.text
    )
    names = [att.filename for att in full.attachments or []]
    assert "r.bin" in names
    att = next(att for att in full.attachments or [] if att.filename == "r.bin")
    assert att.size == len(payload)


def test_attached_emails_arrive_intact(harness: Harness) -> None:
    """message/rfc822 parts went base64-encoded, which MIME forbids (RFC 2045 6.4): receivers read
    the base64 text as the attached email."""
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    seven = b"From: x@example.org\r\nSubject: Inner seven\r\n\r\nplain body\r\n"
    eight = "From: x@example.org\r\nSubject: Inner eight\r\n\r\nbody \u00fc\r\n".encode()
    sent = client.inboxes.messages.send(
        a,
        to=b,
        text="two emails attached",
        attachments=[
            {"filename": n, "content_type": "message/rfc822", "content": base64.b64encode(d).decode()}
            for n, d in (("seven.eml", seven), ("eight.eml", eight))
        ],
    )
    got = _arrived(client, b, sent.message_id)
    by_name = {att.filename: att for att in got.attachments or []}
    assert by_name["seven.eml"].content_type == "message/rfc822"
    assert by_name["eight.eml"].content_type == "application/octet-stream"  # 8-bit: as bytes
    for name, data in (("seven.eml", seven), ("eight.eml", eight)):
        url = client.inboxes.messages.get_attachment(
            b, sent.message_id, by_name[name].attachment_id
        ).download_url
        assert httpx.get(url).content.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n"), name

    # A forward carries them on as they arrived.
    fwd = client.inboxes.messages.forward(b, sent.message_id, to=a)
    again = _arrived(client, a, fwd.message_id)
    atts = {att.filename: att for att in again.attachments or []}
    url = client.inboxes.messages.get_attachment(
        a, fwd.message_id, atts["seven.eml"].attachment_id
    ).download_url
    assert b"Subject: Inner seven" in httpx.get(url).content


def test_reply_to_message_id_with_slash_and_plus(harness: Harness) -> None:
    client = harness.client()
    b = new_inbox(client)
    message_id = f"<x+{secrets.token_hex(3)}/part@example.com>"
    # A sender of its own: the shared server suppresses addresses that bounced in other tests.
    alice = f"alice-{secrets.token_hex(3)}@example.com"
    msg = EmailMessage()
    msg["From"] = f"Alice <{alice}>"
    msg["To"] = b
    msg["Subject"] = "slashy"
    msg["Message-ID"] = message_id
    msg.set_content("hello")
    with smtplib.SMTP("127.0.0.1", harness.server.smtp_port, timeout=30) as smtp:
        smtp.send_message(msg, from_addr=alice, to_addrs=[b])
    _arrived(client, b, message_id)
    reply = client.inboxes.messages.reply(b, message_id, text="ok")
    stored = client.inboxes.messages.get(b, reply.message_id)
    assert stored.to in ([f"Alice <{alice}>"], [alice])
    assert stored.in_reply_to == message_id


def test_idempotency_key(harness: Harness) -> None:
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    key = "key-" + secrets.token_hex(8)
    one = client.inboxes.messages.send(a, to=b, subject="once", text="body", idempotency_key=key)
    two = client.inboxes.messages.send(a, to=b, subject="once", text="body", idempotency_key=key)
    assert (one.message_id, one.thread_id) == (two.message_id, two.thread_id)
    _arrived(client, b, one.message_id)
    sent = [m for m in client.inboxes.messages.list(a).messages if "sent" in m.labels]
    assert len(sent) == 1

    with pytest.raises(ApiError) as conflict:
        client.inboxes.messages.send(
            a, to=b, subject="once", text="other body", idempotency_key=key, request_options=NO_RETRY
        )
    assert conflict.value.status_code == 409
    assert _code(conflict.value) == "conflict"
    with pytest.raises(ApiError) as other_endpoint:
        client.inboxes.messages.reply(
            a, one.message_id, text="body", idempotency_key=key, request_options=NO_RETRY
        )
    assert other_endpoint.value.status_code == 409

    for bad in ("", "has space", "x" * 257, "a@b", "a/b"):
        with pytest.raises(ApiError) as invalid:
            client.inboxes.messages.send(a, to=b, text="x", idempotency_key=bad, request_options=NO_RETRY)
        assert invalid.value.status_code == 400, bad

    # A failed first attempt frees the key.
    free = "free-" + secrets.token_hex(6)
    with pytest.raises(ApiError):
        client.inboxes.messages.send(
            a, to="not an address", text="x", idempotency_key=free, request_options=NO_RETRY
        )
    ok = client.inboxes.messages.send(a, to=b, text="x", idempotency_key=free)
    assert ok.message_id


def test_recipient_limits(harness: Harness) -> None:
    client = harness.client()
    a = new_inbox(client)
    many = [f"r{i}@remote.test" for i in range(51)]
    with pytest.raises(ApiError) as too_many:
        client.inboxes.messages.send(
            a, to=many[:30], cc=many[30:45], bcc=many[45:], text="x", request_options=NO_RETRY
        )
    assert too_many.value.status_code == 400
    with pytest.raises(ApiError) as none:
        client.inboxes.messages.send(a, subject="nobody", text="x", request_options=NO_RETRY)
    assert none.value.status_code == 422
    assert _code(none.value) == "unprocessable"
    with pytest.raises(ApiError) as bad:
        client.inboxes.messages.send(a, to="not-an-address", text="x", request_options=NO_RETRY)
    assert bad.value.status_code == 400


def test_paused_inbox_refuses_to_send(harness: Harness) -> None:
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    client.inboxes.update(a, status="paused")
    with pytest.raises(ApiError) as refused:
        client.inboxes.messages.send(a, to=b, text="x", request_options=NO_RETRY)
    assert refused.value.status_code == 403
    assert _code(refused.value) == "message_rejected"


def test_unknown_inbox_and_message(harness: Harness) -> None:
    client = harness.client()
    a = new_inbox(client)
    with pytest.raises(ApiError) as missing_inbox:
        client.inboxes.messages.send(
            "nobody-" + secrets.token_hex(4) + "@agentmx.localhost", to=a, text="x", request_options=NO_RETRY
        )
    assert missing_inbox.value.status_code == 404
    with pytest.raises(ApiError) as missing_message:
        client.inboxes.messages.reply(a, "<nope@example.com>", text="x", request_options=NO_RETRY)
    assert missing_message.value.status_code == 404


def test_send_permission_required(harness: Harness) -> None:
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    key = client.inboxes.api_keys.create(
        a, request={"permissions": {"inbox_read": True, "message_read": True}}
    )
    reader = harness.client(api_key=key.api_key)
    with pytest.raises(ApiError) as denied:
        reader.inboxes.messages.send(a, to=b, text="x", request_options=NO_RETRY)
    assert denied.value.status_code == 403


def test_concurrent_mail_keeps_thread_totals(harness: Harness) -> None:
    """Messages stored into one thread at the same time (replies sent through the API, their local
    deliveries, deletions) all count in its totals: on PostgreSQL 30 concurrent replies counted 3."""
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    first = client.inboxes.messages.send(a, to=b, subject="Totals", text="start")
    received = _arrived(client, b, first.message_id)
    threads = ((a, first.thread_id), (b, received.thread_id))

    def reply(i: int) -> str:
        # From b: b's thread through the API, a's through local delivery; from a, the other way.
        inbox, message_id = (b, received.message_id) if i % 2 else (a, first.message_id)
        return harness.client().inboxes.messages.reply(inbox, message_id, text=f"reply {i}").message_id

    def settled(a_count: int, b_count: int) -> None:
        for (inbox, thread_id), count in zip(threads, (a_count, b_count), strict=True):
            wait_for(lambda: len(client.inboxes.threads.get(inbox, thread_id).messages) == count)  # noqa: B023
            thread = client.inboxes.threads.get(inbox, thread_id)
            assert thread.message_count == count
            assert thread.size == sum(m.size for m in thread.messages)
            newest = max(m.timestamp for m in thread.messages)
            assert thread.last_message_id in {
                m.message_id for m in thread.messages if m.timestamp == newest
            }, [(m.message_id[:6], m.timestamp) for m in thread.messages][-4:]

    with ThreadPoolExecutor(max_workers=12) as pool:
        sent = list(pool.map(reply, range(24)))
    settled(25, 25)

    def delete_or_reply(i: int) -> None:
        if i < 6:
            harness.client().inboxes.messages.delete(b, sent[2 * i + 1])  # one of b's own replies
        else:
            reply(i)

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(delete_or_reply, range(18)))  # 6 deletions in b among 12 more replies
    settled(37, 31)


def test_concurrent_retries_send_once(harness: Harness) -> None:
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    key = "race-" + secrets.token_hex(6)

    def attempt(_: int) -> tuple[str, str] | int:
        try:
            sent = harness.client().inboxes.messages.send(
                a, to=b, subject="race", text="once", idempotency_key=key, request_options=NO_RETRY
            )
        except ApiError as exc:
            return int(exc.status_code or 0)
        return sent.message_id, sent.thread_id

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(attempt, range(12)))
    ids = {r for r in results if isinstance(r, tuple)}
    assert len(ids) == 1, results
    assert all(r == 409 for r in results if not isinstance(r, tuple))
    message_id = next(iter(ids))[0]
    _arrived(client, b, message_id)
    assert len([m for m in client.inboxes.messages.list(a).messages if "sent" in m.labels]) == 1
    assert len(client.inboxes.messages.list(b).messages) == 1


def test_unknown_local_address_bounces(harness: Harness) -> None:
    client = harness.client()
    a = new_inbox(client)
    domain = a.split("@")[1]
    sent = client.inboxes.messages.send(a, to=f"nobody-{secrets.token_hex(4)}@{domain}", text="x")
    wait_for(lambda: "bounced" in _labels(client, a, sent.message_id))


def test_attachment_urls_on_private_addresses_are_refused(harness: Harness) -> None:
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    with pytest.raises(ApiError) as refused:
        client.inboxes.messages.send(
            a,
            to=b,
            text="x",
            attachments=[{"filename": "h.json", "url": harness.server.base_url + "/health"}],
            request_options=NO_RETRY,
        )
    assert refused.value.status_code == 403
    assert _code(refused.value) == "message_rejected"


def test_an_attachment_type_that_is_no_mime_type_is_refused(harness: Harness) -> None:
    # It was stored, and its download_url then answered 500 (no HTTP header can carry it).
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    for content_type in ("text/pl\u20acin", "text/plain; x=\x7f"):
        with pytest.raises(ApiError) as refused:
            client.inboxes.messages.send(
                a,
                to=b,
                text="x",
                attachments=[{"filename": "a.txt", "content_type": content_type, "content": "aGk="}],
                request_options=NO_RETRY,
            )
        assert refused.value.status_code == 400 and _code(refused.value) == "validation_error"


def test_draft_attachment_fields_wider_than_their_columns_are_refused(harness: Harness) -> None:
    # PostgreSQL refused the row: a 500 there, where SQLite stored it.
    client = harness.client()
    a = new_inbox(client)
    for field, value in (("content_type", "text/" + "x" * 300), ("content_id", "c" * 1200)):
        attachment = {"filename": "a.txt", "content": "aGk=", field: value}
        with pytest.raises(ApiError) as refused:
            client.inboxes.drafts.create(
                a, to=["bob@example.org"], attachments=[attachment], request_options=NO_RETRY
            )
        assert refused.value.status_code == 400 and _code(refused.value) == "validation_error", field


def test_an_attachment_with_a_huge_filename_still_downloads(harness: Harness) -> None:
    # The link carried the whole name: 100,000 characters made a URL no server reads (reset).
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    name = "n" * 100_000 + ".txt"
    sent = client.inboxes.messages.send(
        a, to=b, text="x", attachments=[{"filename": name, "content": "aGk="}], request_options=NO_RETRY
    )
    attachment = (client.inboxes.messages.get(a, sent.message_id).attachments or [])[0]
    assert attachment.filename == name
    link = client.inboxes.messages.get_attachment(a, sent.message_id, attachment.attachment_id)
    assert len(link.download_url) < 8192
    served = httpx.get(link.download_url, timeout=30)
    assert served.status_code == 200 and served.content == b"hi"
    assert served.headers["content-disposition"] == "attachment; filename*=UTF-8''" + "n" * 251 + ".txt"


def test_bad_extra_header_names_are_refused(harness: Harness) -> None:
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    for name in ("Bad Name", "X:Colon", ""):
        with pytest.raises(ApiError) as bad:
            client.inboxes.messages.send(a, to=b, text="x", headers={name: "v"}, request_options=NO_RETRY)
        assert bad.value.status_code == 400, name
    with pytest.raises(ApiError) as injected:
        client.inboxes.messages.send(
            a, to=b, text="x", headers={"X-A": "v\r\nBcc: x@y.z"}, request_options=NO_RETRY
        )
    assert injected.value.status_code == 400


def test_scoped_key_sends_only_from_its_inbox(harness: Harness) -> None:
    client = harness.client()
    mine, other = new_inbox(client), new_inbox(client)
    scoped = harness.client(api_key=client.inboxes.api_keys.create(mine, request={}).api_key)
    sent = scoped.inboxes.messages.send(mine, to=other, text="from my inbox")
    _arrived(client, other, sent.message_id)
    with pytest.raises(ApiError) as hidden:
        scoped.inboxes.messages.send(other, to=mine, text="not mine", request_options=NO_RETRY)
    assert hidden.value.status_code == 404
    with pytest.raises(ApiError) as hidden_reply:
        scoped.inboxes.messages.reply(other, sent.message_id, text="x", request_options=NO_RETRY)
    assert hidden_reply.value.status_code == 404


def test_forward_needs_read_permission_and_requests_cannot_claim_senders(harness: Harness) -> None:
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    first = client.inboxes.messages.send(
        a,
        to=b,
        subject="Secret",
        text="the combination is 1234",
        headers={
            "Sender": "ceo@bank.example",
            "Resent-From": "ceo@bank.example",
            "Received": "from nowhere",
            "Authentication-Results": "mx.bank.example; dmarc=pass",
            "X-Request-Id": "kept",
        },
    )
    arrived = client.inboxes.messages.get(b, _arrived(client, b, first.message_id).message_id)
    names = {name.lower() for name in arrived.headers or {}}
    assert "x-request-id" in names
    assert not names & {"sender", "resent-from", "authentication-results"}
    assert all("nowhere" not in value for value in (arrived.headers or {}).values())

    # A key that may send but not read cannot read a message by forwarding it to itself.
    send_only = client.inboxes.api_keys.create(b, request={"permissions": {"message_send": True}}).api_key
    sender = harness.client(api_key=send_only)
    with pytest.raises(ApiError) as refused:
        sender.inboxes.messages.forward(b, first.message_id, to=a, request_options=NO_RETRY)
    assert refused.value.status_code == 403 and _code(refused.value) == "missing_permission"
    both = {"message_send": True, "message_read": True}
    reader = harness.client(api_key=client.inboxes.api_keys.create(b, request={"permissions": both}).api_key)
    assert reader.inboxes.messages.forward(b, first.message_id, to=a).message_id


def test_a_line_break_at_the_end_of_a_subject_or_header_value_is_refused(harness: Harness) -> None:
    """A trailing line break is one line to ``str.splitlines``: it passed, and was rendered as is
    ("Subject: Status\\n\\r\\n"). On the wire that bare LF becomes a CRLF, so the header ended there and
    the fields after it (Date, Message-ID, MIME-Version) went out as body text."""
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    for fields in (
        {"subject": "Status\n"},
        {"subject": "Status\r"},
        {"subject": "Status\u2028"},
        {"headers": {"X-Ticket": "42\n"}},
        {"headers": {"X-Ticket": "42\r\n"}},
    ):
        with pytest.raises(ApiError) as refused:
            client.inboxes.messages.send(a, to=b, text="x", request_options=NO_RETRY, **fields)  # type: ignore[arg-type]
        assert refused.value.status_code == 400 and _code(refused.value) == "validation_error", fields
    assert not client.inboxes.messages.list(a).messages  # nothing was sent
