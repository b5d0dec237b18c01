"""Lists acting on real mail: blocked inbound, refused sends, reply lists, label permissions, metrics.

Senders use fresh domains so organization-level entries never touch other tests' mail; every
organization-level entry is removed again.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import idna
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.errors import NotFoundError

from conftest import NO_RETRY, Harness
from mail_support import make_message, smtp_send

T = TypeVar("T")


def _wait(fn: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def _inbox(client: AgentMail, harness: Harness, pod_id: str | None = None) -> str:
    if pod_id:
        return client.pods.inboxes.create(pod_id, username=harness.new_username()).inbox_id
    return client.inboxes.create(request={"username": harness.new_username()}).inbox_id


def _deliver(harness: Harness, to: str, sender: str, **kw: Any) -> str:
    msg = make_message(to, sender=sender, **kw)
    smtp_send(harness.server, [to], msg.as_bytes(), mail_from=sender)
    return str(msg["Message-ID"])


def _code(exc: ApiError) -> str | None:
    body = exc.body
    return body.get("code") if isinstance(body, dict) else getattr(body, "code", None)


def _labels(client: AgentMail, inbox_id: str, message_id: str) -> set[str]:
    return set(client.inboxes.messages.get(inbox_id, message_id).labels or [])


def test_receive_block_labels_mail_and_most_specific_scope_decides(harness: Harness) -> None:
    client = harness.client()
    inbox = _inbox(client, harness)
    domain = f"spam{secrets.token_hex(4)}.example"
    client.lists.create("receive", "block", entry=domain, reason="test")
    try:
        blocked = _deliver(harness, inbox, f"bad@{domain}")
        assert "blocked" in _labels(client, inbox, blocked)
        # Hidden from lists unless asked for (with the permission the organization key has).
        assert blocked not in [m.message_id for m in client.inboxes.messages.list(inbox).messages]
        assert blocked in [
            m.message_id for m in client.inboxes.messages.list(inbox, include_blocked=True).messages
        ]

        # An inbox allow entry is more specific than the organization block.
        client.inboxes.lists.create(inbox, "receive", "allow", entry=f"friend@{domain}")
        allowed = _deliver(harness, inbox, f"friend@{domain}")
        assert "blocked" not in _labels(client, inbox, allowed)
        # ... and an active inbox allow list now blocks everyone else not on it.
        other = _deliver(harness, inbox, f"someone@other{secrets.token_hex(3)}.example")
        assert "blocked" in _labels(client, inbox, other)
    finally:
        client.lists.delete("receive", "block", domain)


def test_label_read_permission_hides_blocked_mail(harness: Harness) -> None:
    client = harness.client()
    inbox = _inbox(client, harness)
    sender = f"x@blk{secrets.token_hex(4)}.example"
    client.inboxes.lists.create(inbox, "receive", "block", entry=sender)
    blocked = _deliver(harness, inbox, sender)

    without = client.inboxes.api_keys.create(inbox, request={"permissions": {"message_read": True}})
    narrow = harness.client(api_key=without.api_key)
    assert blocked not in [
        m.message_id for m in narrow.inboxes.messages.list(inbox, include_blocked=True).messages
    ]
    with pytest.raises(NotFoundError):
        narrow.inboxes.messages.get(inbox, blocked, request_options=NO_RETRY)
    thread_id = client.inboxes.messages.get(inbox, blocked).thread_id
    assert thread_id not in [
        t.thread_id for t in narrow.inboxes.threads.list(inbox, include_blocked=True).threads
    ]

    with_perm = client.inboxes.api_keys.create(
        inbox, request={"permissions": {"message_read": True, "label_blocked_read": True}}
    )
    wide = harness.client(api_key=with_perm.api_key)
    assert blocked in [m.message_id for m in wide.inboxes.messages.list(inbox, include_blocked=True).messages]
    assert wide.inboxes.messages.get(inbox, blocked).message_id == blocked
    assert thread_id in [t.thread_id for t in wide.inboxes.threads.list(inbox, include_blocked=True).threads]


def test_send_block_and_allow_lists(harness: Harness) -> None:
    client = harness.client()
    pod = client.pods.create(name="send-lists-" + harness.new_username())
    sender = _inbox(client, harness, pod.pod_id)
    friend = _inbox(client, harness)
    stranger = _inbox(client, harness)

    client.inboxes.lists.create(sender, "send", "block", entry=stranger)
    with pytest.raises(ApiError) as blocked:
        client.inboxes.messages.send(sender, to=stranger, subject="hi", text="hi", request_options=NO_RETRY)
    assert blocked.value.status_code == 403 and _code(blocked.value) == "message_rejected"
    client.inboxes.lists.delete(sender, "send", "block", stranger)

    # An active pod allow list restricts recipients to its entries.
    client.pods.lists.create(pod.pod_id, "send", "allow", entry=friend)
    assert client.inboxes.messages.send(sender, to=friend, subject="hi", text="hi").message_id
    with pytest.raises(ApiError) as restricted:
        client.inboxes.messages.send(sender, to=stranger, subject="hi", text="hi", request_options=NO_RETRY)
    assert restricted.value.status_code == 403 and _code(restricted.value) == "message_rejected"
    # Other pods are not affected by this pod's allow list.
    outsider = _inbox(client, harness)
    assert client.inboxes.messages.send(outsider, to=stranger, subject="hi", text="hi").message_id


def test_reply_lists_apply_to_replies_only(harness: Harness) -> None:
    client = harness.client()
    inbox = _inbox(client, harness)
    partner = f"partner@p{secrets.token_hex(4)}.example"
    client.inboxes.lists.create(inbox, "reply", "block", entry=partner)

    fresh = _deliver(harness, inbox, partner)
    assert "blocked" not in _labels(client, inbox, fresh)  # not a reply: receive lists (empty) decide

    sent = client.inboxes.messages.send(inbox, to=partner, subject="question", text="?")
    reply = _deliver(harness, inbox, partner, in_reply_to=sent.message_id, subject="Re: question")
    assert "blocked" in _labels(client, inbox, reply)


def test_metrics_count_sent_and_received_mail(harness: Harness) -> None:
    client = harness.client()
    start = datetime.now(UTC) - timedelta(minutes=1)
    sender, receiver = _inbox(client, harness), _inbox(client, harness)
    for i in range(3):
        client.inboxes.messages.send(sender, to=receiver, subject=f"count {i}", text="x")
    _deliver(harness, receiver, f"someone@m{secrets.token_hex(3)}.example")

    def counts() -> tuple[int, int] | None:
        sent = client.inboxes.metrics.query_events(sender, event_types=["message.sent"], start=start)
        got = client.inboxes.metrics.query_events(receiver, event_types=["message.received"], start=start)
        n_sent = sum(b.count for b in sent["message.sent"])
        n_got = sum(b.count for b in got["message.received"])
        return (n_sent, n_got) if n_sent == 3 and n_got == 4 else None

    assert _wait(counts) == (3, 4)
    one_bucket = client.inboxes.metrics.query_events(
        sender, event_types=["message.sent"], start=start, period=3600
    )
    assert [(b.timestamp.replace(microsecond=0), b.count) for b in one_bucket["message.sent"]] == [
        (start.replace(microsecond=0), 3)
    ]
    usage = client.inboxes.metrics.query_usage(receiver, start=start, period=60)
    assert usage["message_count"][-1].value == 4 and usage["thread_count"][-1].value >= 1
    assert usage["storage_bytes"][-1].value > 0
    rates = client.inboxes.metrics.query_rates(sender, period=60, window=600, start=start)
    assert rates["bounce"][-1].sent == 3 and rates["bounce"][-1].rate == 0


def test_inbox_key_sees_only_its_threads(harness: Harness) -> None:
    client = harness.client()
    mine, other = _inbox(client, harness), _inbox(client, harness)
    _deliver(harness, mine, "a@example.com", subject="mine")
    theirs = _deliver(harness, other, "a@example.com", subject="theirs")
    key = client.inboxes.api_keys.create(mine, request={}).api_key
    scoped = harness.client(api_key=key)

    threads = scoped.inboxes.threads.list(mine).threads
    assert [t.subject for t in threads] == ["mine"]
    try:
        everywhere = scoped.threads.list(limit=100).threads
        assert {t.inbox_id for t in everywhere} == {mine}
    except ApiError as exc:  # organization thread listing refused to an inbox key is fine too
        assert exc.status_code == 403
    with pytest.raises(NotFoundError):
        scoped.inboxes.messages.get(other, theirs, request_options=NO_RETRY)
    with pytest.raises(ApiError) as org:
        scoped.organizations.get(request_options=NO_RETRY)
    assert org.value.status_code == 403


def test_list_changes_apply_to_the_next_message(harness: Harness) -> None:
    """Which scopes have lists is cached briefly for inbound mail; a new or deleted entry must not wait."""
    client = harness.client()
    inbox = _inbox(client, harness)
    sender = f"someone@{secrets.token_hex(4)}.example"
    assert "blocked" not in _labels(client, inbox, _deliver(harness, inbox, sender))  # caches "no lists"
    client.inboxes.lists.create(inbox, "receive", "block", entry=sender)
    assert "blocked" in _labels(client, inbox, _deliver(harness, inbox, sender))
    client.inboxes.lists.delete(inbox, "receive", "block", sender)
    assert "blocked" not in _labels(client, inbox, _deliver(harness, inbox, sender))


def test_header_from_with_a_display_name_meets_the_lists(harness: Harness) -> None:
    """Mail from a mailing service: the envelope sender is the service's, the From field names the
    person with a display name. Both block and allow entries must see the address in it."""
    client = harness.client()
    inbox = _inbox(client, harness)
    domain = f"people{secrets.token_hex(4)}.example"
    client.inboxes.lists.create(inbox, "receive", "block", entry=f"pest@{domain}")
    client.inboxes.lists.create(inbox, "receive", "allow", entry=f"friend@{domain}")

    def deliver(sender: str) -> str:
        msg = make_message(inbox, sender=sender)
        smtp_send(
            harness.server, [inbox], msg.as_bytes(), mail_from=f"bounce-{secrets.token_hex(3)}@esp.example"
        )
        return str(msg["Message-ID"])

    assert "blocked" in _labels(client, inbox, deliver(f'"A Pest" <Pest@{domain}>'))
    assert "blocked" not in _labels(client, inbox, deliver(f"Good Friend <friend@{domain}>"))


def test_internationalized_domains_are_one_entry_in_either_form(harness: Harness) -> None:
    client = harness.client()
    inbox = _inbox(client, harness)
    label = secrets.token_hex(3)
    unicode_domain, ascii_domain = f"bücher{label}.example", f"bücher{label}.example".encode("idna").decode()
    entry = client.inboxes.lists.create(inbox, "send", "block", entry=unicode_domain)
    assert entry.entry == ascii_domain and entry.entry_type == "domain"
    for recipient in (f"anna@{unicode_domain}", f"anna@{ascii_domain}"):
        with pytest.raises(ApiError) as refused:
            client.inboxes.messages.send(
                inbox, to=recipient, subject="hi", text="hi", request_options=NO_RETRY
            )
        assert refused.value.status_code == 403 and _code(refused.value) == "message_rejected"
    assert client.inboxes.lists.get(inbox, "send", "block", unicode_domain).entry == ascii_domain
    client.inboxes.lists.delete(inbox, "send", "block", unicode_domain)
    assert client.inboxes.lists.list(inbox, "send", "block").count == 0


def test_block_entries_stored_under_idna_2003_still_block_their_domain(harness: Harness) -> None:
    """Builds between the lists' IDNA keys and the IDNA 2008 codec stored "faß" as IDNA 2003's "fass": such a
    block entry let mail from faß through (and stops fass). The spelling is lossy, so the row is not
    rewritten; a block entry matches a domain's IDNA 2003 spelling too. Allow entries do not (fail closed)."""
    client = harness.client()
    inbox, allowing = _inbox(client, harness), _inbox(client, harness)
    label = secrets.token_hex(3)
    unicode_domain = f"faß{label}.example"
    old_form, new_form = unicode_domain.encode("idna").decode(), idna.encode(unicode_domain).decode()
    assert old_form == f"fass{label}.example"

    def store_as_before(inbox_id: str, direction: str, list_type: str, entry: str) -> None:
        made = client.inboxes.lists.create(
            inbox_id, direction, list_type, entry=entry.replace(old_form, new_form)
        )
        assert made.entry == entry.replace(old_form, new_form)
        harness.execute(
            "UPDATE list_entries SET entry = :old WHERE scope_id = :scope AND entry = :new",
            old=entry,
            scope=inbox_id,
            new=made.entry,
        )

    store_as_before(inbox, "receive", "block", old_form)
    store_as_before(inbox, "send", "block", f"anna@{old_form}")
    for sender in (f"x@{new_form}", f"x@sub.{new_form}", f"x@{old_form}"):
        assert "blocked" in _labels(client, inbox, _deliver(harness, inbox, sender)), sender
    for recipient in (f"anna@{unicode_domain}", f"anna@{new_form}"):
        with pytest.raises(ApiError) as refused:
            client.inboxes.messages.send(
                inbox, to=recipient, subject="hi", text="hi", request_options=NO_RETRY
            )
        assert refused.value.status_code == 403 and _code(refused.value) == "message_rejected"

    # A suppression is left as it was recorded: those builds sent RCPT TO the "fass" address.
    suppressed = f"bob@{old_form}"
    client.lists.create("send", "block", entry=suppressed.replace(old_form, new_form))
    harness.execute(
        "UPDATE list_entries SET entry = :old, read_only = :yes WHERE entry = :new",
        old=suppressed,
        yes=True,
        new=suppressed.replace(old_form, new_form),
    )
    try:
        sent = client.inboxes.messages.send(inbox, to=f"bob@{unicode_domain}", subject="hi", text="hi")
        assert sent.message_id
        with pytest.raises(ApiError) as refused:
            client.inboxes.messages.send(
                inbox, to=suppressed, subject="hi", text="hi", request_options=NO_RETRY
            )
        assert refused.value.status_code == 403
    finally:
        harness.execute("DELETE FROM list_entries WHERE entry = :old", old=suppressed)

    store_as_before(allowing, "receive", "allow", old_form)
    assert "blocked" not in _labels(client, allowing, _deliver(harness, allowing, f"x@{old_form}"))
    assert "blocked" in _labels(client, allowing, _deliver(harness, allowing, f"x@{new_form}"))
