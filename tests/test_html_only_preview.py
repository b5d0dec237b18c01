"""Mail with an HTML body and no text part (newsletters, receipts, many agents' sends) still has a
preview: the text a reader sees in its HTML, on the message, in lists and on its thread."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage

from conftest import Harness
from mail_support import smtp_send
from send_support import new_inbox, wait_for

HTML = (
    "<html><head><title>Receipt</title><style>p { color: red }</style>"
    "<script>var tracking = 1;</script></head>"
    "<body><h1>Order&nbsp;#42</h1><p>Thanks for your <b>order</b> &amp; welcome!</p>"
    "<!-- hidden note --><table><tr><td>Total</td><td>9&#8364;</td></tr></table></body></html>"
)
SEEN = "Order #42 Thanks for your order & welcome! Total 9€"


def test_inbound_html_only_mail_has_a_preview(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = "shop@example.com"
    msg["To"] = inbox
    msg["Subject"] = "Your receipt"
    msg["Message-ID"] = "<receipt-42@example.com>"
    msg.set_content(HTML, subtype="html")
    smtp_send(harness.server, [inbox], msg.as_bytes())

    item = wait_for(lambda: next(iter(client.inboxes.messages.list(inbox).messages), None))
    assert item.preview == SEEN
    full = client.inboxes.messages.get(inbox, item.message_id)
    assert full.preview == SEEN and full.text is None  # the text part it did not have is not made up
    assert client.inboxes.threads.get(inbox, item.thread_id).preview == SEEN
    assert client.inboxes.threads.list(inbox).threads[0].preview == SEEN


def test_an_html_only_send_and_draft_have_a_preview(harness: Harness) -> None:
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    sent = client.inboxes.messages.send(a, to=b, subject="Receipt", html=HTML)
    assert client.inboxes.messages.get(a, sent.message_id).preview == SEEN
    assert client.inboxes.threads.get(a, sent.thread_id).preview == SEEN

    draft = client.inboxes.drafts.create(a, to=[b], subject="Receipt", html=HTML)
    assert draft.preview == SEEN
    updated = client.inboxes.drafts.update(a, draft.draft_id, html="<p>Changed <i>it</i></p>")
    assert updated.preview == "Changed it"
    # A text body, when there is one, is still what the preview shows.
    both = client.inboxes.drafts.update(a, draft.draft_id, text="Plain words")
    assert both.preview == "Plain words"


def test_a_preview_of_html_full_of_unclosed_inline_tags_is_made(harness: Harness) -> None:
    # "<b " again and again with no ">": each inline-tag match scanned to the end of the body (a
    # megabyte held a worker for minutes). The preview is made as for any cut-off tag: none of it.
    client = harness.client()
    a, b = new_inbox(client), new_inbox(client)
    html = "<p>Hello</p>" + "<b " * 350_000
    draft = client.inboxes.drafts.create(a, to=[b], subject="Tags", html=html)
    assert draft.preview == "Hello"
