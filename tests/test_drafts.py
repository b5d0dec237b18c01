"""Drafts through the official SDK on SQLite and PostgreSQL: CRUD, derivations, validation, send."""

from __future__ import annotations

import base64
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from agentmail.errors import ConflictError, NotFoundError, ValidationError
from agentmail.inboxes.types import CreateInboxRequest

from conftest import NO_RETRY, Harness
from drafts_support import inject, messages, new_inbox, wait_for


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_plain_draft_crud_and_update_semantics(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    draft = client.inboxes.drafts.create(
        inbox,
        to=["Bob <bob@example.com>"],
        cc=["carol@example.com"],
        bcc=["dave@example.com"],
        reply_to=["replies@example.com"],
        subject="Quarterly report",
        text="Hello Bob,\n  here is   the report.",
        html="<p>Hello Bob</p>",
        labels=["Work", "urgent"],
        attachments=[{"filename": "a.txt", "content_type": "text/plain", "content": _b64(b"alpha")}],
    )
    assert draft.inbox_id == inbox
    assert draft.draft_id
    assert draft.to == ["Bob <bob@example.com>"]
    assert draft.cc == ["carol@example.com"] and draft.bcc == ["dave@example.com"]
    assert draft.reply_to == ["replies@example.com"]
    assert draft.labels == ["urgent", "work"]
    assert draft.preview == "Hello Bob, here is the report."
    assert draft.send_status is None and draft.send_at is None
    assert draft.created_at and draft.updated_at
    assert draft.attachments and draft.attachments[0].size == 5
    att_id = draft.attachments[0].attachment_id

    got = client.inboxes.drafts.get(inbox, draft.draft_id)
    assert got.subject == "Quarterly report" and got.html == "<p>Hello Bob</p>"
    attachment = client.inboxes.drafts.get_attachment(inbox, draft.draft_id, att_id)
    assert attachment.size == 5 and attachment.expires_at
    assert httpx.get(attachment.download_url).content == b"alpha"
    assert httpx.get(attachment.download_url + "0").status_code == 404  # tampered signature

    updated = client.inboxes.drafts.update(
        inbox,
        draft.draft_id,
        subject="Q3 report",
        cc=None,
        bcc=[],
        add_labels=["Later"],
        remove_labels=["urgent"],
        add_attachments=[{"filename": "b.bin", "content": _b64(b"bravo!")}],
        remove_attachments=[att_id],
    )
    assert updated.subject == "Q3 report"
    assert updated.cc is None and updated.bcc is None
    assert updated.to == ["Bob <bob@example.com>"]  # omitted = unchanged
    assert updated.text == "Hello Bob,\n  here is   the report."
    assert updated.labels == ["later", "work"]
    assert [a.filename for a in updated.attachments or []] == ["b.bin"]
    assert updated.updated_at >= draft.updated_at

    cleared = client.inboxes.drafts.update(inbox, draft.draft_id, text=None, subject=None)
    assert cleared.text is None and cleared.subject is None
    assert cleared.html == "<p>Hello Bob</p>" and cleared.preview == "Hello Bob"  # the HTML's words now

    client.inboxes.drafts.delete(inbox, draft.draft_id)
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(inbox, draft.draft_id, request_options=NO_RETRY)
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.delete(inbox, draft.draft_id, request_options=NO_RETRY)


def test_list_at_inbox_pod_and_org_scope(harness: Harness) -> None:
    client = harness.client()
    pod = client.pods.create(name="drafts-" + secrets.token_hex(3))
    inbox = client.pods.inboxes.create(pod.pod_id, username="d" + secrets.token_hex(5)).inbox_id
    other = new_inbox(client)
    ids = [
        client.inboxes.drafts.create(inbox, subject=f"d{i}", labels=["batch"] if i % 2 else []).draft_id
        for i in range(3)
    ]
    foreign = client.inboxes.drafts.create(other, subject="elsewhere").draft_id

    listed = client.inboxes.drafts.list(inbox)
    assert [d.draft_id for d in listed.drafts] == ids[::-1]  # updated_at descending
    assert listed.count == 3
    assert [d.draft_id for d in client.inboxes.drafts.list(inbox, ascending=True).drafts] == ids
    assert [d.draft_id for d in client.inboxes.drafts.list(inbox, labels=["batch"]).drafts] == [ids[1]]

    first = client.inboxes.drafts.list(inbox, limit=2)
    assert first.count == 2 and first.next_page_token
    rest = client.inboxes.drafts.list(inbox, limit=2, page_token=first.next_page_token)
    assert [d.draft_id for d in rest.drafts] == [ids[0]] and rest.next_page_token is None

    pod_ids = {d.draft_id for d in client.pods.drafts.list(pod.pod_id).drafts}
    assert pod_ids == set(ids)
    assert client.pods.drafts.get(pod.pod_id, ids[0]).subject == "d0"
    with pytest.raises(NotFoundError):
        client.pods.drafts.get(pod.pod_id, foreign, request_options=NO_RETRY)

    org_ids = set()
    token = None
    while True:
        page = client.drafts.list(limit=100, page_token=token)
        org_ids |= {d.draft_id for d in page.drafts}
        token = page.next_page_token
        if not token:
            break
    assert set(ids) | {foreign} <= org_ids
    assert client.drafts.get(foreign).inbox_id == other

    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(other, ids[0], request_options=NO_RETRY)

    # An inbox-scoped key sees only its inbox's drafts, at every scope.
    scoped = harness.client(api_key=client.inboxes.api_keys.create(inbox, request={"name": "d"}).api_key)
    assert {d.draft_id for d in scoped.drafts.list().drafts} == set(ids)
    with pytest.raises(NotFoundError):
        scoped.drafts.get(foreign, request_options=NO_RETRY)
    with pytest.raises(NotFoundError):
        scoped.inboxes.drafts.list(other, request_options=NO_RETRY)


def test_validation_errors(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    mid = inject(harness.server, inbox)
    with pytest.raises(ValidationError):
        client.inboxes.drafts.create(inbox, in_reply_to=mid, forward_of=mid, request_options=NO_RETRY)
    with pytest.raises(ValidationError):
        client.inboxes.drafts.create(
            inbox, in_reply_to=mid, reply_all=True, to=["x@example.com"], request_options=NO_RETRY
        )
    with pytest.raises(ValidationError):
        client.inboxes.drafts.create(inbox, to=["not an address"], request_options=NO_RETRY)
    with pytest.raises(ValidationError):
        client.inboxes.drafts.create(inbox, labels=["scheduled"], request_options=NO_RETRY)
    # A system label would make the send fail later (a scheduled one silently): refused at once.
    with pytest.raises(ValidationError):
        client.inboxes.drafts.create(inbox, labels=["Received"], request_options=NO_RETRY)
    plain = client.inboxes.drafts.create(inbox, to=["x@example.com"], labels=["mine"])
    with pytest.raises(ValidationError):
        client.inboxes.drafts.update(inbox, plain.draft_id, add_labels=["bounced"], request_options=NO_RETRY)
    # So would a line break in the subject (it never reached the wire: the send failed).
    with pytest.raises(ValidationError):
        client.inboxes.drafts.create(inbox, subject="a\r\nBcc: x@example.com", request_options=NO_RETRY)
    with pytest.raises(ValidationError):
        client.inboxes.drafts.update(inbox, plain.draft_id, subject="a\u2028b", request_options=NO_RETRY)
    with pytest.raises(ValidationError):
        client.inboxes.drafts.create(
            inbox, attachments=[{"filename": "x", "content": "!!!"}], request_options=NO_RETRY
        )
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.create(inbox, in_reply_to="<nope@example.com>", request_options=NO_RETRY)
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.create("nobody@agentmx.localhost", subject="x", request_options=NO_RETRY)
    # Not a time, and times with no UTC equivalent (their conversion where stored was a 500).
    for send_at in ("tomorrow", "9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+05:00"):
        r = httpx.post(
            f"{harness.server.base_url}/v0/inboxes/{inbox}/drafts",
            json={"send_at": send_at},
            headers={"Authorization": f"Bearer {harness.api_key}"},
        )
        assert r.status_code == 400 and r.json()["code"] == "validation_error", send_at


def test_an_unknown_inbox_or_draft_is_404_before_a_bad_send_at(harness: Harness) -> None:
    """send_at was parsed before the lookup: 400 for an inbox or draft that does not exist."""
    inbox = new_inbox(harness.client())
    draft = harness.client().inboxes.drafts.create(inbox, subject="x").draft_id
    auth = {"Authorization": f"Bearer {harness.api_key}"}
    with httpx.Client(base_url=harness.server.base_url, headers=auth) as http:
        bad = {"send_at": "tomorrow"}
        assert http.post("/v0/inboxes/nobody@agentmx.localhost/drafts", json=bad).status_code == 404
        assert http.patch(f"/v0/inboxes/nobody@agentmx.localhost/drafts/{draft}", json=bad).status_code == 404
        assert http.patch(f"/v0/inboxes/{inbox}/drafts/drf_unknown", json=bad).status_code == 404
        refused = http.patch(f"/v0/inboxes/{inbox}/drafts/{draft}", json=bad)
        assert refused.status_code == 400 and refused.json()["errors"][0]["path"] == ["send_at"]


def test_a_refused_label_of_a_draft_send_names_add_labels(harness: Harness) -> None:
    """The send's labels are the draft's and ``add_labels``: a refusal names the field the client sent."""
    client = harness.client()
    inbox = new_inbox(client)
    draft = client.inboxes.drafts.create(inbox, to=["x@example.com"], labels=[f"l{i}" for i in range(100)])
    url = f"{harness.server.base_url}/v0/inboxes/{inbox}/drafts/{draft.draft_id}/send"
    auth = {"Authorization": f"Bearer {harness.api_key}"}
    for add_labels in (["bounced"], [" "], ["one-too-many"]):
        refused = httpx.post(url, json={"add_labels": add_labels}, headers=auth)
        assert refused.status_code == 400, refused.text
        assert refused.json()["errors"][0]["path"] == ["add_labels"], add_labels
    assert client.inboxes.drafts.get(inbox, draft.draft_id).draft_id == draft.draft_id  # kept


def test_a_draft_holds_no_more_recipients_than_a_send_takes(harness: Harness) -> None:
    """Past 50 the send is refused: a draft (a scheduled one above all) with more would never go."""
    client = harness.client()
    inbox = new_inbox(client)
    fifty = [f"r{i}@example.com" for i in range(50)]
    with pytest.raises(ValidationError):
        client.inboxes.drafts.create(
            inbox, to=fifty, cc=["one.more@example.com"], send_at=datetime.now(UTC), request_options=NO_RETRY
        )
    assert client.inboxes.drafts.list(inbox).count == 0
    # Repeats count once, as in a send.
    draft = client.inboxes.drafts.create(inbox, to=fifty, bcc=[fifty[0].upper()])
    with pytest.raises(ValidationError):
        client.inboxes.drafts.update(
            inbox, draft.draft_id, bcc=["one.more@example.com"], request_options=NO_RETRY
        )
    assert client.inboxes.drafts.get(inbox, draft.draft_id).bcc == [fifty[0].upper()]
    assert client.inboxes.drafts.update(inbox, draft.draft_id, to=fifty[1:], bcc=["x@example.com"]).bcc


def test_client_id_returns_the_same_draft(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    first = client.inboxes.drafts.create(inbox, subject="once", client_id="draft-cid-1")
    second = client.inboxes.drafts.create(inbox, subject="twice", client_id="draft-cid-1")
    assert second.draft_id == first.draft_id and second.subject == "once"
    assert second.client_id == "draft-cid-1"


def test_concurrent_creates_with_one_client_id_get_the_one_draft(harness: Harness) -> None:
    """On PostgreSQL the losers of the unique index were answered 409 instead of the draft."""
    inbox = new_inbox(harness.client())
    url = f"{harness.server.base_url}/v0/inboxes/{inbox}/drafts"
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    for _ in range(4):
        body = {"subject": "once", "client_id": "race-" + secrets.token_hex(4)}
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda b: httpx.post(url, json=b, headers=headers, timeout=30), [body] * 8)
            )
        assert [r.status_code for r in answers] == [200] * 8
        assert len({r.json()["draft_id"] for r in answers}) == 1


def test_reply_draft_derives_recipients_subject_and_threading(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    mid = inject(
        harness.server,
        inbox,
        subject="Project kickoff",
        sender="Alice <alice@example.com>",
        cc="carol@example.com",
    )
    reply = client.inboxes.drafts.create(inbox, in_reply_to=mid, text="Thanks!")
    assert reply.in_reply_to == mid
    assert reply.subject == "Re: Project kickoff"
    assert [a.split("<")[-1].rstrip(">") for a in reply.to or []] == ["alice@example.com"]
    assert reply.cc is None
    assert mid in (client.inboxes.drafts.get(inbox, reply.draft_id).model_dump().get("references") or [])

    everyone = client.inboxes.drafts.create(inbox, in_reply_to=mid, reply_all=True, text="All")
    assert [a.split("<")[-1].rstrip(">") for a in everyone.to or []] == ["alice@example.com"]
    assert everyone.cc == ["carol@example.com"]  # the inbox itself is never a recipient

    # Overrides keep the threading but use the given recipients.
    custom = client.inboxes.drafts.create(inbox, in_reply_to=mid, to=["zed@example.com"])
    assert custom.to == ["zed@example.com"] and custom.subject == "Re: Project kickoff"


def test_reply_and_forward_drafts_need_the_label_permission_of_their_source(harness: Harness) -> None:
    """A reply draft copies its source's subject and senders, a forward its body: blocked mail is as
    unreadable through them as through GET for a key without label_blocked_read."""
    client = harness.client()
    inbox = new_inbox(client)
    client.inboxes.lists.create(inbox, "receive", "block", entry="mallory@example.com")
    mid = inject(harness.server, inbox, subject="Blocked secret", sender="mallory@example.com")
    perms = {"message_read": True, "draft_create": True, "draft_read": True}
    key = client.inboxes.api_keys.create(inbox, request={"permissions": perms}).api_key
    scoped = harness.client(key)
    with pytest.raises(NotFoundError):
        scoped.inboxes.messages.get(inbox, mid)
    with pytest.raises(NotFoundError):
        scoped.inboxes.drafts.create(inbox, in_reply_to=mid, text="hi")
    with pytest.raises(NotFoundError):
        scoped.inboxes.drafts.create(inbox, forward_of=mid, to=["me@example.net"])

    allowed = {**perms, "label_blocked_read": True}
    reader = harness.client(client.inboxes.api_keys.create(inbox, request={"permissions": allowed}).api_key)
    assert reader.inboxes.drafts.create(inbox, in_reply_to=mid, text="hi").subject == "Re: Blocked secret"


def test_a_reply_draft_is_sent_as_it_shows(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    target = new_inbox(client)
    mid = inject(harness.server, inbox, subject="Status", reply_to=f"alice@example.com, {inbox.upper()}")
    draft = client.inboxes.drafts.create(inbox, in_reply_to=mid, text="Noted")
    assert draft.to == ["alice@example.com"]  # the inbox is not its own recipient, as with reply

    # Recipients and subject were derived when the draft was made; cleared ones stay cleared.
    cleared = client.inboxes.drafts.update(inbox, draft.draft_id, to=None)
    assert cleared.to is None and cleared.cc is None and cleared.bcc is None
    with pytest.raises(Exception) as info:
        client.inboxes.drafts.send(inbox, draft.draft_id, request_options=NO_RETRY)
    assert getattr(info.value, "status_code", None) == 422
    client.inboxes.drafts.update(inbox, draft.draft_id, bcc=[target], subject=None)
    sent = client.inboxes.drafts.send(inbox, draft.draft_id)
    message = client.inboxes.messages.get(inbox, sent.message_id)
    assert message.to == [] and message.bcc == [target] and message.subject is None
    assert (
        message.in_reply_to == mid and message.thread_id == client.inboxes.messages.get(inbox, mid).thread_id
    )


def test_forward_draft_merges_original_at_send(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    target = new_inbox(client)
    mid = inject(harness.server, inbox, subject="Invoice", text="Please pay 42 EUR.", attachment=b"PDFDATA")
    fwd = client.inboxes.drafts.create(inbox, forward_of=mid, text="FYI see below")
    assert fwd.forward_of == mid and fwd.subject == "Fwd: Invoice"
    assert fwd.to is None  # recipients optional until send
    client.inboxes.drafts.update(inbox, fwd.draft_id, to=[target])
    sent = client.inboxes.drafts.send(inbox, fwd.draft_id)
    message = client.inboxes.messages.get(inbox, sent.message_id)
    assert "FYI see below" in (message.text or "")
    assert "Please pay 42 EUR." in (message.text or "")
    assert message.subject == "Fwd: Invoice"
    assert "orig.bin" in [a.filename for a in message.attachments or []]
    assert message.thread_id == sent.thread_id


def test_send_draft_becomes_message_and_is_deleted(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    target = new_inbox(client)
    draft = client.inboxes.drafts.create(
        inbox,
        to=[target],
        subject="From a draft",
        text="Body of the draft",
        labels=["outreach"],
        attachments=[{"filename": "n.txt", "content": _b64(b"note")}],
    )
    key = "draft-send-" + secrets.token_hex(4)
    sent = client.inboxes.drafts.send(
        inbox, draft.draft_id, add_labels=["followup"], remove_labels="outreach", idempotency_key=key
    )
    assert sent.message_id.startswith("<") and sent.thread_id
    message = client.inboxes.messages.get(inbox, sent.message_id)
    assert "sent" in message.labels and "followup" in message.labels
    assert "outreach" not in message.labels
    assert message.subject == "From a draft" and message.text and "Body of the draft" in message.text
    assert [a.filename for a in message.attachments or []] == ["n.txt"]
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(inbox, draft.draft_id, request_options=NO_RETRY)

    # The same Idempotency-Key replays the original result and sends nothing more.
    again = client.inboxes.drafts.send(
        inbox, draft.draft_id, add_labels=["followup"], remove_labels="outreach", idempotency_key=key
    )
    assert (again.message_id, again.thread_id) == (sent.message_id, sent.thread_id)
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.send(inbox, draft.draft_id, request_options=NO_RETRY)
    assert len([m for m in messages(client, inbox, "sent") if m.subject == "From a draft"]) == 1


def test_send_reply_draft_joins_the_thread(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    mid = inject(harness.server, inbox, subject="Question")
    original = client.inboxes.messages.get(inbox, mid)
    draft = client.inboxes.drafts.create(inbox, in_reply_to=mid, text="Answer")
    sent = client.inboxes.drafts.send(inbox, draft.draft_id)
    assert sent.thread_id == original.thread_id
    message = client.inboxes.messages.get(inbox, sent.message_id)
    assert message.in_reply_to == mid and message.subject == "Re: Question"


def test_send_with_no_recipients_is_refused_and_keeps_the_draft(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    draft = client.inboxes.drafts.create(inbox, subject="nobody")
    with pytest.raises(Exception) as info:
        client.inboxes.drafts.send(inbox, draft.draft_id, request_options=NO_RETRY)
    assert getattr(info.value, "status_code", None) == 422
    assert client.inboxes.drafts.get(inbox, draft.draft_id).subject == "nobody"


def test_schedule_fields_unschedule_and_delete(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    when = datetime.now(UTC) + timedelta(hours=1)
    draft = client.inboxes.drafts.create(inbox, to=["x@example.com"], send_at=when, labels=["mine"])
    assert draft.send_status == "scheduled"
    assert draft.labels == ["mine", "scheduled"]
    assert draft.send_at and abs((draft.send_at - when).total_seconds()) < 0.01
    listed = client.inboxes.drafts.list(inbox, labels=["scheduled"]).drafts
    assert [d.draft_id for d in listed] == [draft.draft_id] and listed[0].send_status == "scheduled"

    later = when + timedelta(hours=1)
    moved = client.inboxes.drafts.update(inbox, draft.draft_id, send_at=later)
    assert moved.send_at and abs((moved.send_at - later).total_seconds()) < 0.01
    assert moved.send_status == "scheduled"

    plain = client.inboxes.drafts.update(inbox, draft.draft_id, send_at=None)
    assert plain.send_status is None and plain.send_at is None and plain.labels == ["mine"]
    again = client.inboxes.drafts.update(inbox, draft.draft_id, send_at=later)
    assert again.labels == ["mine", "scheduled"]
    client.inboxes.drafts.delete(inbox, draft.draft_id)


def test_draft_permissions(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create(request=CreateInboxRequest(username="d" + secrets.token_hex(5))).inbox_id
    draft = client.inboxes.drafts.create(inbox, subject="perm")
    reader = harness.client(
        api_key=client.api_keys.create(request={"name": "ro", "permissions": {"draft_read": True}}).api_key
    )
    assert reader.inboxes.drafts.get(inbox, draft.draft_id).subject == "perm"
    with pytest.raises(Exception) as info:
        reader.inboxes.drafts.update(inbox, draft.draft_id, subject="no", request_options=NO_RETRY)
    assert getattr(info.value, "status_code", None) == 403
    with pytest.raises(Exception) as info:
        reader.inboxes.drafts.send(inbox, draft.draft_id, request_options=NO_RETRY)
    assert getattr(info.value, "status_code", None) == 403


def test_scheduling_a_send_needs_the_draft_send_permission(harness: Harness) -> None:
    """send_at now or past sends at once: a key that may not send drafts must not send them that way."""
    client = harness.client()
    inbox, target = new_inbox(client), new_inbox(client)
    grants = {"draft_read": True, "draft_create": True, "draft_update": True}
    writer = harness.client(
        api_key=client.api_keys.create(request={"name": "writer", "permissions": grants}).api_key
    )
    past = datetime.now(UTC) - timedelta(minutes=1)
    with pytest.raises(Exception) as info:
        writer.inboxes.drafts.create(
            inbox, to=[target], subject="sneak", send_at=past, request_options=NO_RETRY
        )
    assert getattr(info.value, "status_code", None) == 403
    draft = writer.inboxes.drafts.create(inbox, to=[target], subject="sneak")
    with pytest.raises(Exception) as info:
        writer.inboxes.drafts.update(inbox, draft.draft_id, send_at=past, request_options=NO_RETRY)
    assert getattr(info.value, "status_code", None) == 403
    # Un-scheduling only stops a send: draft_update is enough.
    scheduled = client.inboxes.drafts.update(
        inbox, draft.draft_id, send_at=datetime.now(UTC) + timedelta(hours=1)
    )
    assert scheduled.send_status == "scheduled"
    with pytest.raises(Exception) as info:  # re-addressing a scheduled draft would send to the new address
        writer.inboxes.drafts.update(
            inbox, draft.draft_id, to=["elsewhere@example.com"], request_options=NO_RETRY
        )
    assert getattr(info.value, "status_code", None) == 403
    assert writer.inboxes.drafts.update(inbox, draft.draft_id, send_at=None).send_status is None
    assert writer.inboxes.drafts.update(inbox, draft.draft_id, subject="edited").subject == "edited"
    assert not messages(client, target, "received")
    assert client.inboxes.drafts.get(inbox, draft.draft_id).send_status is None


def test_edit_while_sending_is_a_conflict(harness: Harness) -> None:
    """A draft in send_status "sending" (set directly: the window is milliseconds) refuses edits."""
    client = harness.client()
    inbox = new_inbox(client)
    draft = client.inboxes.drafts.create(inbox, subject="busy", to=["x@example.com"])
    _set_status(harness, draft.draft_id, "sending")
    assert client.inboxes.drafts.get(inbox, draft.draft_id).send_status == "sending"
    with pytest.raises(ConflictError):
        client.inboxes.drafts.update(inbox, draft.draft_id, subject="edit", request_options=NO_RETRY)
    with pytest.raises(ConflictError):
        client.inboxes.drafts.send(inbox, draft.draft_id, request_options=NO_RETRY)
    client.inboxes.drafts.delete(inbox, draft.draft_id)  # deleting still cancels


def _set_status(harness: Harness, draft_id: str, status: str | None) -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from agentmx.settings import normalize_database_url

    url = harness.server.database_url or f"sqlite:///{harness.server.data_dir / 'agentmx.db'}"

    async def run() -> None:
        engine = create_async_engine(normalize_database_url(url))
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE drafts SET send_status = :s WHERE id = :i"), {"s": status, "i": draft_id}
            )
        await engine.dispose()

    asyncio.run(run())


def test_past_send_at_sends_at_once(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    target = new_inbox(client)
    subject = "past-" + secrets.token_hex(3)
    draft = client.inboxes.drafts.create(
        inbox, to=[target], subject=subject, text="late", send_at=datetime.now(UTC) - timedelta(minutes=5)
    )
    assert draft.send_status == "scheduled"
    sent = wait_for(lambda: [m for m in messages(client, inbox, "sent") if m.subject == subject])
    assert len(sent) == 1
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(inbox, draft.draft_id, request_options=NO_RETRY)
