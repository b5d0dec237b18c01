"""Threads as the spec describes them: ``updated_at`` is when the thread last changed, and its
labels are its messages' union, so a label change on one of its messages changes it."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from agentmail import AgentMail
from agentmail.inboxes.types import CreateInboxRequest

from conftest import Harness
from mail_support import deliver, make_message, smtp_send
from send_support import wait_for


def _new_thread(client: AgentMail, harness: Harness) -> tuple[str, str, str]:
    inbox = client.inboxes.create(request=CreateInboxRequest(username=harness.new_username())).inbox_id
    to = client.inboxes.create(request=CreateInboxRequest(username=harness.new_username())).inbox_id
    sent = client.inboxes.messages.send(inbox, to=[to], subject="Updated", text="first")
    # Local delivery labels the sent message 'delivered', which touches its thread; wait for it
    # so the test's own changes are the only ones left.
    wait_for(lambda: "delivered" in client.inboxes.messages.get(inbox, sent.message_id).labels or None)
    return inbox, sent.thread_id, sent.message_id


def test_a_message_label_change_updates_its_thread(client: AgentMail, harness: Harness) -> None:
    inbox, thread_id, message_id = _new_thread(client, harness)
    before = client.inboxes.threads.get(inbox, thread_id).updated_at
    time.sleep(0.01)

    client.inboxes.messages.update(inbox, message_id, add_labels=["reviewed"])
    after_one = client.inboxes.threads.get(inbox, thread_id)
    assert "reviewed" in after_one.labels
    assert after_one.updated_at > before
    time.sleep(0.01)

    client.inboxes.messages.batch_update(inbox, message_ids=[message_id], add_labels=["filed"])
    after_batch = client.inboxes.threads.get(inbox, thread_id)
    assert after_batch.updated_at > after_one.updated_at
    time.sleep(0.01)

    # Nothing changed, so the thread is as it was.
    client.inboxes.messages.update(inbox, message_id, add_labels=["filed"])
    client.inboxes.messages.batch_update(inbox, message_ids=[message_id], remove_labels=["absent"])
    assert client.inboxes.threads.get(inbox, thread_id).updated_at == after_batch.updated_at


def test_messages_stored_together_keep_their_order(harness: Harness, http: httpx.Client) -> None:
    """Mail arriving at once is stored in one batch; each message still gets its own time, so a
    thread lists its messages in the order they joined and its last message is the last listed."""
    inbox = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
    mail = []
    for i in range(20):
        original = make_message(inbox, subject=f"Batch {i}", text=f"original {i}")
        reply = make_message(
            inbox, subject=f"Re: Batch {i}", text=f"reply {i}", in_reply_to=original["Message-ID"]
        )
        mail += [original, reply]
    with ThreadPoolExecutor(len(mail)) as pool:
        list(pool.map(lambda m: deliver(harness.server, inbox, m), mail))

    listed = http.get(f"/v0/inboxes/{inbox}/messages", params={"limit": 100}).json()["messages"]
    assert len(listed) == len(mail)
    times = [m["timestamp"] for m in listed]
    assert len(set(times)) == len(times), "messages stored together share a timestamp"
    for item in http.get(f"/v0/inboxes/{inbox}/threads", params={"limit": 100}).json()["threads"]:
        thread = http.get(f"/v0/inboxes/{inbox}/threads/{item['thread_id']}").json()
        assert thread["last_message_id"] == thread["messages"][-1]["message_id"]
        assert thread["preview"] == thread["messages"][-1]["preview"]


def test_thread_search_highlights_the_message_that_matched(client: AgentMail, harness: Harness) -> None:
    """A hit in an older message's body is highlighted as text, though the preview is the reply's."""
    inbox = client.inboxes.create(request=CreateInboxRequest(username=harness.new_username())).inbox_id
    bob = f"bob.{secrets.token_hex(4)}@example.com"
    first = make_message(inbox, subject="Terms", text="see the kumquat clause")
    smtp_send(harness.server, [inbox], first.as_bytes())
    reply = make_message(
        inbox,
        subject="Re: Terms",
        text="agreed",
        sender=f"Bob <{bob}>",
        in_reply_to=first["Message-ID"],
    )
    smtp_send(harness.server, [inbox], reply.as_bytes())

    found = client.inboxes.threads.search(inbox, q="kumquat").threads
    assert len(found) == 1 and found[0].preview == "agreed"
    assert found[0].highlights is not None
    assert found[0].highlights.text == ["see the **kumquat** clause"]
    assert found[0].highlights.from_ is None and found[0].highlights.subject is None

    by_sender = client.threads.search(q=bob).threads
    assert [t.thread_id for t in by_sender] == [found[0].thread_id]
    assert by_sender[0].highlights is not None and by_sender[0].highlights.from_ == [f"Bob <**{bob}**>"]


def test_search_matches_the_bcc_of_sent_mail(client: AgentMail, harness: Harness) -> None:
    """The sender knows its own Bcc recipients, and the list filters (`to`, `recipients`) match them:
    message and thread search find a sent message by its Bcc address too."""
    inbox, to, hidden = (
        client.inboxes.create(request=CreateInboxRequest(username=harness.new_username())).inbox_id
        for _ in range(3)
    )
    sent = client.inboxes.messages.send(inbox, to=[to], bcc=[hidden], subject="Quarterly", text="numbers")
    # The copies reach `to` and `hidden` by local delivery, later (the 'delivered' label comes after
    # both): wait for them, so the searches below see every copy there will be, and the last assertion
    # looks at a copy that has arrived.
    wait_for(lambda: "delivered" in client.inboxes.messages.get(inbox, sent.message_id).labels or None)

    messages = client.inboxes.messages.search(inbox, q=hidden).messages
    assert [m.message_id for m in messages] == [sent.message_id]
    assert messages[0].highlights is not None and messages[0].highlights.recipients == [f"**{hidden}**"]
    for threads in (client.inboxes.threads.search(inbox, q=hidden), client.threads.search(q=hidden)):
        assert [t.thread_id for t in threads.threads] == [sent.thread_id]
        highlights = threads.threads[0].highlights
        assert highlights is not None and highlights.recipients == [f"**{hidden}**"]
    # The list filters agree.
    assert [m.message_id for m in client.inboxes.messages.list(inbox, to=[hidden]).messages] == [
        sent.message_id
    ]
    # Whoever got the copy sees no Bcc, so finds nothing by it (it was not addressed there).
    assert client.inboxes.messages.search(to, q=hidden).messages == []
