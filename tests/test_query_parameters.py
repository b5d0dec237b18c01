"""A query parameter that takes one value, given twice, is a 400 naming it (it was last-wins, while a
proxy in front may read the first); lists may still be repeated keys, and the SDK's requests pass."""

from __future__ import annotations

import httpx
from agentmail import AgentMail

from conftest import Harness


def _refused(resp: httpx.Response, name: str) -> None:
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["name"] == "ValidationError" and body["code"] == "validation_error", body
    assert body["errors"] == [{"path": [name], "message": "repeated query parameter"}], body


def test_a_single_value_parameter_given_twice_is_a_400_naming_it(http: httpx.Client, inbox: str) -> None:
    _refused(http.get("/v0/inboxes?limit=1&limit=2"), "limit")
    _refused(http.get("/v0/inboxes?page_token=a&page_token=b"), "page_token")
    _refused(http.get("/v0/inboxes?li%6Dit=1&limit=2"), "limit")  # one key, however it is spelt
    _refused(http.get(f"/v0/inboxes/{inbox}/messages/search?q=a&q=b"), "q")
    _refused(http.get(f"/v0/inboxes/{inbox}/messages?include_spam=true&include_spam=false"), "include_spam")
    # The hot reads (GET one thread) refuse it too.
    sent = http.post(f"/v0/inboxes/{inbox}/messages/send", json={"to": inbox, "text": "hi"}).json()
    thread = f"/v0/inboxes/{inbox}/threads/{sent['thread_id']}"
    _refused(http.get(f"{thread}?limit=1&limit=2"), "limit")
    assert http.get(f"{thread}?limit=1").status_code == 200


def test_lists_may_be_repeated_keys(http: httpx.Client, inbox: str) -> None:
    listed = http.get(f"/v0/inboxes/{inbox}/messages?labels=a&labels=b&to=x&to=y&limit=5")
    assert listed.status_code == 200, listed.text
    assert listed.json()["messages"] == []


def test_the_sdk_never_repeats_a_parameter(client: AgentMail, harness: Harness, inbox: str) -> None:
    client.inboxes.messages.send(inbox, to=inbox, subject="Hello", text="hi")
    page = client.inboxes.messages.list(
        inbox,
        limit=5,
        labels=["sent"],
        to=[inbox],
        from_=[inbox],
        subject=["Hello"],
        ascending=True,
    )
    assert page.count == 1
    threads = client.threads.list(limit=5, senders=[inbox], recipients=[inbox], labels=["sent"])
    assert threads.count == 1
    events = client.metrics.query_events(event_types=["message.sent", "message.received"])
    assert events is not None


def test_an_unauthenticated_caller_gets_the_401_first(
    harness: Harness, http: httpx.Client, inbox: str
) -> None:
    """The repeat was refused before authentication: a caller without a key learnt the parameter rules."""
    sent = http.post(f"/v0/inboxes/{inbox}/messages/send", json={"to": inbox, "text": "hi"}).json()
    paths = [
        "/v0/inboxes?limit=1&limit=2",
        f"/v0/inboxes/{inbox}/messages?limit=1&limit=2",  # the hot reads authenticate on their own
        f"/v0/inboxes/{inbox}/threads/{sent['thread_id']}?limit=1&limit=2",
    ]
    for headers in ({}, {"Authorization": "Basic eDp5"}, {"Authorization": "Bearer am_not_a_key"}):
        for path in paths:
            answer = httpx.get(harness.server.base_url + path, headers=headers)
            assert answer.status_code == 401, (path, headers, answer.text)
    _refused(http.get(paths[0]), "limit")  # an authenticated caller still gets the 400
    # The polling read (by its token, not an API key): 401 without one, 400 with one.
    polling = harness.server.base_url + "/v0/webhooks/polling/events?limit=1&limit=2"
    assert httpx.get(polling).status_code == 401
    body = {"client_id": "repeat-" + harness.new_username(), "event_types": ["message.received"]}
    made = http.post("/v0/webhooks/polling", json=body)
    assert made.status_code == 200, made.text
    _refused(httpx.get(polling, headers={"Authorization": f"Bearer {made.json()['token']}"}), "limit")
