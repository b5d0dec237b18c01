"""Threads as the spec describes them: ``updated_at`` is when the thread last changed, and its
labels are its messages' union, so a label change on one of its messages changes it."""

from __future__ import annotations

import time

from agentmail import AgentMail
from agentmail.inboxes.types import CreateInboxRequest

from conftest import Harness


def _new_thread(client: AgentMail, harness: Harness) -> tuple[str, str, str]:
    inbox = client.inboxes.create(request=CreateInboxRequest(username=harness.new_username())).inbox_id
    to = client.inboxes.create(request=CreateInboxRequest(username=harness.new_username())).inbox_id
    sent = client.inboxes.messages.send(inbox, to=[to], subject="Updated", text="first")
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
