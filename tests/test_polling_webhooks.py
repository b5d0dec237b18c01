"""Polling webhooks through the official SDK (CRUD at three scopes, client_id re-issue, limits,
permissions, scoping) and the agentmx read of their events with the token (cursor, long wait)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError

from agentmx.testing.server import ServerProcess
from conftest import NO_RETRY, Harness
from events_support import Receiver, new_inbox, send_mail, verify, wait_for

EVENTS = "/v0/webhooks/polling/events"


def _code(exc: ApiError) -> str | None:
    body = exc.body
    return body.get("code") if isinstance(body, dict) else getattr(body, "code", None)


def _status(call: Any) -> int:
    with pytest.raises(ApiError) as err:
        call()
    return err.value.status_code or 0


def read(harness: Harness, token: str, **params: Any) -> httpx.Response:
    """One read of the polling endpoint (not part of the SDK)."""
    return httpx.get(
        harness.server.base_url + EVENTS,
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def read_all(harness: Harness, token: str, **params: Any) -> tuple[list[dict[str, Any]], str]:
    """Every event available now, following next_cursor; returns them and the last cursor."""
    events: list[dict[str, Any]] = []
    while True:
        answer = read(harness, token, **params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert page["count"] == len(page["events"])
        events += page["events"]
        params = {k: v for k, v in params.items() if k not in ("after", "cursor")}
        params["cursor"] = page["next_cursor"]
        if not page["has_more"]:
            return events, page["next_cursor"]


def test_crud_at_three_scopes(harness: Harness) -> None:
    client = harness.client()
    pod = client.pods.create(name="poll-" + harness.new_username())
    inbox = new_inbox(client, pod.pod_id)
    made = client.webhooks.polling.create(
        client_id="org-" + harness.new_username(), event_types=["message.received"], inbox_ids=[inbox]
    )
    assert made.webhook_id.startswith("pw_") and made.token.startswith("amp_")
    assert made.event_types == ["message.received"] and made.inbox_ids == [inbox]
    assert made.pod_id is None and made.inbox_id is None and made.pod_ids is None
    got = client.webhooks.polling.get(made.webhook_id)
    assert got.client_id == made.client_id and got.created_at == made.created_at
    raw = httpx.get(
        f"{harness.server.base_url}/v0/webhooks/polling/{made.webhook_id}",
        headers={"Authorization": f"Bearer {harness.api_key}"},
    ).json()
    assert "token" not in raw and raw["webhook_id"] == made.webhook_id
    assert made.webhook_id in [w.webhook_id for w in client.webhooks.polling.list(limit=100).polling_webhooks]

    pod_hook = client.pods.webhooks.polling.create(
        pod.pod_id, client_id="pod", event_types=["message.sent"], inbox_ids=[inbox]
    )
    assert pod_hook.pod_id == pod.pod_id and pod_hook.inbox_id is None and pod_hook.inbox_ids == [inbox]
    inbox_hook = client.inboxes.webhooks.polling.create(
        inbox, client_id="inbox", event_types=["message.sent"]
    )
    assert inbox_hook.inbox_id == inbox and inbox_hook.pod_id == pod.pod_id and inbox_hook.inbox_ids is None
    # Each route lists what was created through it.
    assert [w.webhook_id for w in client.pods.webhooks.polling.list(pod.pod_id).polling_webhooks] == [
        pod_hook.webhook_id
    ]
    assert [w.webhook_id for w in client.inboxes.webhooks.polling.list(inbox).polling_webhooks] == [
        inbox_hook.webhook_id
    ]
    org_list = {w.webhook_id for w in client.webhooks.polling.list(limit=100).polling_webhooks}
    assert not {pod_hook.webhook_id, inbox_hook.webhook_id} & org_list
    assert client.inboxes.webhooks.polling.get(inbox, inbox_hook.webhook_id).event_types == ["message.sent"]
    # As for webhooks: an organization key reaches any through the organization route, and a pod
    # route reaches only the pod's own.
    assert client.webhooks.polling.get(pod_hook.webhook_id).pod_id == pod.pod_id
    assert _status(lambda: client.pods.webhooks.polling.get(pod.pod_id, inbox_hook.webhook_id)) == 404
    # Push webhook routes know nothing of it, and polling routes nothing of push webhooks.
    assert _status(lambda: client.webhooks.get(made.webhook_id)) == 404

    client.inboxes.webhooks.polling.delete(inbox, inbox_hook.webhook_id)
    client.pods.webhooks.polling.delete(pod.pod_id, pod_hook.webhook_id)
    client.webhooks.polling.delete(made.webhook_id)
    for call in (
        lambda: client.webhooks.polling.get(made.webhook_id),
        lambda: client.webhooks.polling.delete(made.webhook_id),
        lambda: client.pods.webhooks.polling.get(pod.pod_id, pod_hook.webhook_id),
        lambda: client.inboxes.webhooks.polling.delete(inbox, inbox_hook.webhook_id),
        lambda: client.webhooks.polling.get("pw_unknown"),
    ):
        assert _status(call) == 404


def test_same_client_id_reissues_the_token(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    first = client.inboxes.webhooks.polling.create(
        inbox, client_id="agent-1", event_types=["message.received"]
    )
    assert read(harness, first.token).status_code == 200
    again = client.inboxes.webhooks.polling.create(inbox, client_id="agent-1", event_types=["message.sent"])
    assert again.webhook_id == first.webhook_id and again.token != first.token
    assert again.event_types == ["message.received"]  # the existing subscription, unchanged
    assert again.created_at == first.created_at and again.updated_at >= first.updated_at
    assert read(harness, first.token).status_code == 401  # the previous token stops working
    assert read(harness, again.token).status_code == 200
    assert len(client.inboxes.webhooks.polling.list(inbox).polling_webhooks) == 1
    # client_id is per route: the same one elsewhere is another subscription.
    other = client.webhooks.polling.create(client_id="agent-1", event_types=["message.received"])
    assert other.webhook_id != first.webhook_id
    client.webhooks.polling.delete(other.webhook_id)


def test_concurrent_creates_with_one_client_id_make_one_subscription(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)

    def create(_: int) -> str:
        made = harness.client().inboxes.webhooks.polling.create(
            inbox, client_id="racer", event_types=["message.sent"], request_options=NO_RETRY
        )
        return made.webhook_id

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert len(set(pool.map(create, range(6)))) == 1
    assert len(client.inboxes.webhooks.polling.list(inbox).polling_webhooks) == 1


def test_validation_and_limits(harness: Harness) -> None:
    client = harness.client()
    pod = client.pods.create(name="limits-" + harness.new_username())
    inbox = new_inbox(client, pod.pod_id)
    polling = client.pods.webhooks.polling

    def refused(**kw: Any) -> ApiError:
        with pytest.raises(ApiError) as err:
            polling.create(pod.pod_id, **kw, request_options=NO_RETRY)
        return err.value

    assert refused(client_id="x", event_types=["message.nope"]).status_code == 400
    assert refused(client_id="x", event_types=[]).status_code == 400
    assert refused(client_id="a@b", event_types=["message.sent"]).status_code == 400
    assert (
        refused(client_id="x", event_types=["message.sent"], inbox_ids=["nobody@nowhere.test"]).status_code
        == 400
    )
    eleven = [f"x{i}@example.com" for i in range(11)]
    assert refused(client_id="x", event_types=["message.sent"], inbox_ids=eleven).status_code == 400
    # Channels count pods and inboxes together (at most 10).
    with pytest.raises(ApiError) as err:
        client.webhooks.polling.create(
            client_id="x",
            event_types=["message.sent"],
            pod_ids=[pod.pod_id] + [f"p{i}" for i in range(5)],
            inbox_ids=[f"x{i}@example.com" for i in range(6)],
            request_options=NO_RETRY,
        )
    assert err.value.status_code == 400
    # Required fields, and a body that is not an object: 400 in the API's shape.
    url = f"{harness.server.base_url}/v0/pods/{pod.pod_id}/webhooks/polling"
    auth = {"Authorization": f"Bearer {harness.api_key}"}
    for body in (
        {"event_types": ["message.sent"]},
        {"client_id": "x"},
        [],
        {"client_id": 5, "event_types": []},
    ):
        answer = httpx.post(url, json=body, headers=auth)
        assert answer.status_code == 400 and answer.json()["name"] == "ValidationError", answer.text
    assert httpx.post(url, content=b"{", headers=auth).status_code == 400

    made = [polling.create(pod.pod_id, client_id=f"c{i}", event_types=["message.sent"]) for i in range(10)]
    err11 = refused(client_id="c10", event_types=["message.sent"])
    assert err11.status_code == 403 and _code(err11) == "limit_exceeded"
    # A repeat create re-issues instead of counting against the limit.
    assert (
        polling.create(pod.pod_id, client_id="c3", event_types=["message.sent"]).webhook_id
        == made[3].webhook_id
    )
    # The limit is per owner: the pod's inbox still has room.
    in_inbox = client.inboxes.webhooks.polling.create(inbox, client_id="c10", event_types=["message.sent"])
    # A pod with polling webhooks of its own is not deleted from under them.
    with pytest.raises(ApiError) as err:
        client.pods.delete(pod.pod_id, request_options=NO_RETRY)
    assert err.value.status_code == 409
    for hook in made:
        polling.delete(pod.pod_id, hook.webhook_id)
    client.inboxes.delete(inbox)  # takes its polling webhooks along
    assert read(harness, in_inbox.token).status_code == 401
    client.pods.delete(pod.pod_id)


def test_permissions(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    # message_read: a subscription hands its events over (test_scoped_keys); label_spam_read lacks.
    perms = {"webhook_create": True, "webhook_read": True, "message_read": True}
    limited = client.api_keys.create(request={"name": "no-spam", "permissions": perms}).api_key
    limited_client = harness.client(api_key=limited)
    with pytest.raises(ApiError) as err:
        limited_client.webhooks.polling.create(
            client_id="spam", event_types=["message.received.spam"], request_options=NO_RETRY
        )
    assert err.value.status_code == 403
    assert err.value.body["message"] == "label_spam_read is forbidden"
    # Nor may it take over a spam subscription by re-issuing its token.
    spam = client.webhooks.polling.create(
        client_id="spam-" + harness.new_username(), event_types=["message.received.spam"]
    )
    with pytest.raises(ApiError) as err:
        limited_client.webhooks.polling.create(
            client_id=spam.client_id, event_types=["message.sent"], request_options=NO_RETRY
        )
    assert err.value.status_code == 403
    assert read(harness, spam.token).status_code == 200  # still the first token
    ok = limited_client.inboxes.webhooks.polling.create(inbox, client_id="ok", event_types=["message.sent"])
    assert _status(lambda: limited_client.inboxes.webhooks.polling.delete(inbox, ok.webhook_id)) == 403
    reader = harness.client(
        api_key=client.api_keys.create(request={"name": "r", "permissions": {"webhook_read": True}}).api_key
    )
    assert reader.inboxes.webhooks.polling.get(inbox, ok.webhook_id).webhook_id == ok.webhook_id
    assert (
        _status(lambda: reader.webhooks.polling.create(client_id="no", event_types=["message.sent"])) == 403
    )
    nothing = harness.client(api_key=client.api_keys.create(request={"name": "n", "permissions": {}}).api_key)
    assert _status(lambda: nothing.webhooks.polling.list()) == 403
    client.inboxes.webhooks.polling.delete(inbox, ok.webhook_id)
    client.webhooks.polling.delete(spam.webhook_id)


def test_list_pagination(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    polling = client.inboxes.webhooks.polling
    made = [
        polling.create(inbox, client_id=f"p{i}", event_types=["message.sent"]).webhook_id for i in range(5)
    ]
    seen: list[str] = []
    token = None
    while True:
        page = polling.list(inbox, limit=2, page_token=token)
        assert page.count == len(page.polling_webhooks) <= 2 and page.limit == 2
        seen += [w.webhook_id for w in page.polling_webhooks]
        token = page.next_page_token
        if token is None:
            break
    assert seen == list(reversed(made))  # newest first
    assert [w.webhook_id for w in polling.list(inbox, ascending=True).polling_webhooks] == made
    # A page token of another list is refused (a second inbox: the inbox list has a next page even
    # when this test runs first on a fresh server).
    other = new_inbox(client)
    foreign = client.inboxes.list(limit=1).next_page_token
    assert foreign
    assert _status(lambda: polling.list(inbox, page_token=foreign)) == 400
    assert _status(lambda: polling.list(inbox, limit=0)) == 400
    client.inboxes.delete(inbox)
    client.inboxes.delete(other)


def test_scoped_keys_see_their_own_only(harness: Harness) -> None:
    client = harness.client()
    pod_a = client.pods.create(name="a-" + harness.new_username())
    pod_b = client.pods.create(name="b-" + harness.new_username())
    inbox_a, inbox_b = new_inbox(client, pod_a.pod_id), new_inbox(client, pod_b.pod_id)
    hook_b = client.pods.webhooks.polling.create(pod_b.pod_id, client_id="b", event_types=["message.sent"])
    key_a = harness.client(api_key=client.pods.api_keys.create(pod_a.pod_id, request={"name": "a"}).api_key)
    assert _status(lambda: key_a.pods.webhooks.polling.get(pod_b.pod_id, hook_b.webhook_id)) == 404
    assert _status(lambda: key_a.pods.webhooks.polling.list(pod_b.pod_id)) == 404
    assert _status(lambda: key_a.pods.webhooks.polling.delete(pod_b.pod_id, hook_b.webhook_id)) == 404
    assert (
        _status(
            lambda: key_a.inboxes.webhooks.polling.create(
                inbox_b, client_id="x", event_types=["message.sent"]
            )
        )
        == 404
    )
    # Channels outside the key's pod are refused; on the org route a pod key creates in its pod.
    with pytest.raises(ApiError) as err:
        key_a.webhooks.polling.create(
            client_id="x", event_types=["message.sent"], inbox_ids=[inbox_b], request_options=NO_RETRY
        )
    assert err.value.status_code == 400
    own = key_a.webhooks.polling.create(client_id="own", event_types=["message.sent"])
    assert own.pod_id == pod_a.pod_id
    assert [w.webhook_id for w in key_a.webhooks.polling.list().polling_webhooks] == [own.webhook_id]
    inbox_key = harness.client(api_key=client.inboxes.api_keys.create(inbox_a, request={"name": "i"}).api_key)
    assert _status(lambda: inbox_key.pods.webhooks.polling.list(pod_a.pod_id)) == 403
    assert inbox_key.webhooks.polling.list().polling_webhooks == []
    client.pods.webhooks.polling.delete(pod_b.pod_id, hook_b.webhook_id)
    client.pods.webhooks.polling.delete(pod_a.pod_id, own.webhook_id)


def _send(client: AgentMail, sender: str, to: str, subject: str) -> str:
    return client.inboxes.messages.send(sender, to=to, subject=subject, text="Body of " + subject).message_id


def test_read_events_between_two_local_inboxes(harness: Harness) -> None:
    client = harness.client()
    pod = client.pods.create(name="events-" + harness.new_username())
    other_pod = client.pods.create(name="other-" + harness.new_username())
    a, b = new_inbox(client, pod.pod_id), new_inbox(client, pod.pod_id)
    elsewhere = new_inbox(client, other_pod.pod_id)
    _send(client, a, b, "before the subscription")
    wait_for(lambda: client.inboxes.messages.list(b).messages)  # its events are all written
    received = client.inboxes.webhooks.polling.create(b, client_id="rx", event_types=["message.received"])
    sent = client.pods.webhooks.polling.create(
        pod.pod_id, client_id="tx", event_types=["message.sent"], inbox_ids=[a]
    )
    whole_pod = client.pods.webhooks.polling.create(pod.pod_id, client_id="all", event_types=["message.sent"])
    receiver = Receiver()
    try:
        push = client.inboxes.webhooks.create(b, url=receiver.url, event_types=["message.received"])
        message_id = _send(client, a, b, "polled")
        _send(client, elsewhere, b, "from another pod")  # sent outside the pod: not for `sent`
        deliveries = receiver.wait(2)
    finally:
        receiver.close()
    got, _ = read_all(harness, received.token)
    assert [e["event_type"] for e in got] == ["message.received", "message.received"]
    assert {e["message"]["subject"] for e in got} == {"polled", "from another pod"}
    first = next(e for e in got if e["message"]["subject"] == "polled")
    assert first["type"] == "event" and first["message"]["message_id"] == message_id
    assert first["message"]["inbox_id"] == b and first["thread"]["thread_id"] == first["message"]["thread_id"]
    # The very body the push webhook was sent.
    pushed = {body["event_id"]: body for body in (verify(push.secret, d) for d in deliveries)}
    assert pushed[first["event_id"]] == first
    outgoing, _ = read_all(harness, sent.token)
    assert [(e["event_type"], e["send"]["message_id"]) for e in outgoing] == [("message.sent", message_id)]
    assert [e["send"]["inbox_id"] for e in read_all(harness, whole_pod.token)[0]] == [a]
    client.inboxes.webhooks.delete(b, push.webhook_id)


def test_cursor_misses_nothing_while_mail_arrives(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    hook = client.inboxes.webhooks.polling.create(inbox, client_id="c", event_types=["message.received"])
    subjects = [f"cursor {i}" for i in range(24)]
    collected: list[dict[str, Any]] = []
    done = threading.Event()

    def poller() -> None:
        cursor = None
        while True:
            finished = done.is_set()  # read once more after the last send
            params: dict[str, Any] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = read(harness, hook.token, **params).json()
            collected.extend(page["events"])
            cursor = page["next_cursor"]
            if finished and not page["has_more"]:
                return

    thread = threading.Thread(target=poller)
    thread.start()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda s: send_mail(harness.server, inbox, subject=s), subjects))
    wait_for(lambda: len(client.inboxes.messages.list(inbox).messages) == len(subjects))
    done.set()
    thread.join(60)
    got = [e["message"]["subject"] for e in collected]
    assert sorted(got) == sorted(subjects), got  # each once, none missed
    ids = [e["event_id"] for e in collected]
    # Passing back the last event id seen gives what follows it, in the same order.
    cut = 10
    after, _ = read_all(harness, hook.token, after=ids[cut - 1])
    assert [e["event_id"] for e in after] == ids[cut:]
    last = read(harness, hook.token, after=ids[-1]).json()
    assert last["count"] == 0 and last["events"] == [] and last["has_more"] is False


def test_read_errors(harness: Harness) -> None:
    client = harness.client()
    hook = client.webhooks.polling.create(
        client_id="errors-" + harness.new_username(), event_types=["message.sent"]
    )
    url = harness.server.base_url + EVENTS
    assert httpx.get(url).status_code == 401
    answer = read(harness, harness.api_key)
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_token_type"
    assert read(harness, "amp_not-a-token").status_code == 401
    other = client.webhooks.polling.create(
        client_id="other-" + harness.new_username(), event_types=["message.sent"]
    )
    other_cursor = read(harness, other.token).json()["next_cursor"]
    for params in (
        {"cursor": "bogus"},
        {"cursor": client.inboxes.list(limit=1).next_page_token or "x"},
        {"after": "evt_unknown"},
        {"cursor": read(harness, hook.token).json()["next_cursor"], "after": "evt_x"},
        {"limit": 0},
        {"limit": 501},
        {"limit": "many"},
        {"wait": 31},
        {"wait": -1},
        {"cursor": _token({"k": "polling_events", "v": [hook.webhook_id, 1e400]})},  # was a 500
        {"cursor": other_cursor},  # another subscription's: it would skip this one's events
    ):
        answer = read(harness, hook.token, **params)
        assert answer.status_code == 400, (params, answer.text)
        assert answer.json()["name"] == "ValidationError"
    client.webhooks.polling.delete(hook.webhook_id)
    answer = read(harness, hook.token)
    assert answer.status_code == 401 and answer.json()["name"] == "UnauthorizedError"


def test_a_bad_token_gets_its_401_before_any_parameter_check(harness: Harness) -> None:
    """The token was checked after limit, wait and repeated parameters: a caller without a valid one
    got a 400 teaching it the parameter rules, where every route answers 401 first."""
    url = harness.server.base_url + EVENTS
    for token in ("amp_not-a-token", harness.api_key):
        for query in ("limit=0", "limit=many", "wait=31", "wait=-1", "limit=1&limit=2", "cursor=a&after=b"):
            answer = httpx.get(f"{url}?{query}", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 401, (token, query, answer.text)
            assert answer.json()["name"] == "UnauthorizedError"


def _token(data: dict[str, Any]) -> str:
    raw = json.dumps(data).replace("1e+400", "1e400").encode()  # json cannot write an overflowing float
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_waiting_read_does_not_hold_up_a_stop(fresh_server: Callable[..., ServerProcess]) -> None:
    """SIGTERM hands unfinished job claims back once the HTTP server has finished; a read waiting
    for events (up to 30 s) held that up, long enough for a supervisor to SIGKILL the process."""
    server = fresh_server("sqlite").start()
    harness = Harness(server, "sqlite")
    hook = harness.client().webhooks.polling.create(client_id="stop", event_types=["message.sent"])
    answers: list[httpx.Response] = []
    reader = threading.Thread(target=lambda: answers.append(read(harness, hook.token, wait=25)))
    reader.start()
    time.sleep(1.0)
    stopped_at = time.monotonic()
    server.stop()
    assert time.monotonic() - stopped_at < 8
    reader.join(10)
    assert answers and answers[0].status_code == 200 and answers[0].json()["events"] == []


def test_a_read_may_wait_for_the_next_event(harness: Harness) -> None:
    client = harness.client()
    inbox = new_inbox(client)
    hook = client.inboxes.webhooks.polling.create(inbox, client_id="w", event_types=["message.received"])
    cursor = read(harness, hook.token).json()["next_cursor"]
    result: dict[str, Any] = {}

    def wait_read() -> None:
        start = time.monotonic()
        result["page"] = read(harness, hook.token, cursor=cursor, wait=30).json()
        result["took"] = time.monotonic() - start

    thread = threading.Thread(target=wait_read)
    thread.start()
    time.sleep(1.0)
    send_mail(harness.server, inbox, subject="worth the wait")
    thread.join(45)
    assert [e["message"]["subject"] for e in result["page"]["events"]] == ["worth the wait"]
    assert result["took"] < 20  # woken by the event, not back at the end of its 30 s wait
    # Nothing new: a short wait comes back empty, with the same place in the log.
    start = time.monotonic()
    empty = read(harness, hook.token, cursor=result["page"]["next_cursor"], wait=1).json()
    assert empty["count"] == 0 and empty["has_more"] is False and 0.9 <= time.monotonic() - start < 5


def test_deleting_what_a_subscription_follows_never_widens_it(harness: Harness) -> None:
    """Empty lists mean "the whole organization": a subscription whose last listed inbox or pod is
    deleted is deleted with it (its token then gets 401), one that follows more is only unlisted."""
    client = harness.client()
    pod = client.pods.create(name="poll-unlist-" + harness.new_username())
    inbox, other = new_inbox(client), new_inbox(client)
    only = client.webhooks.polling.create(
        client_id="only-" + harness.new_username(), event_types=["message.received"], inbox_ids=[inbox]
    )
    both = client.webhooks.polling.create(
        client_id="both-" + harness.new_username(), event_types=["message.received"], inbox_ids=[inbox, other]
    )
    by_pod = client.webhooks.polling.create(
        client_id="pod-" + harness.new_username(), event_types=["message.received"], pod_ids=[pod.pod_id]
    )
    client.inboxes.delete(inbox)
    assert _status(lambda: client.webhooks.polling.get(only.webhook_id)) == 404
    assert read(harness, only.token).status_code == 401
    assert client.webhooks.polling.get(both.webhook_id).inbox_ids == [other]
    assert read(harness, both.token).status_code == 200
    client.pods.delete(pod.pod_id)
    assert _status(lambda: client.webhooks.polling.get(by_pod.webhook_id)) == 404
    assert read(harness, by_pod.token).status_code == 401


def test_a_cursor_holds_after_retention_pruned_the_whole_log(
    fresh_server: Callable[..., ServerProcess],
) -> None:
    """SQLite gives a new row the largest rowid plus one: had retention removed every event, the next
    would have taken a position a saved cursor had already passed, and that reader missed it."""
    server = fresh_server("sqlite", env={"AGENTMX_EVENT_RETENTION_DAYS": "0.00002"}).start()  # ~1.7 s
    harness = Harness(server, "sqlite")
    client = harness.client()
    inbox = new_inbox(client)
    sub = client.webhooks.polling.create(
        client_id="retention", event_types=["message.received"], inbox_ids=[inbox]
    )
    send_mail(server, inbox, subject="soon pruned")
    events, cursor = read_all(harness, sub.token)
    assert [e["message"]["subject"] for e in events] == ["soon pruned"]
    server.stop()
    time.sleep(2.0)
    server.start()  # prunes at start
    send_mail(server, inbox, subject="after the prune")
    events, _ = read_all(harness, sub.token, cursor=cursor)
    assert [e["message"]["subject"] for e in events] == ["after the prune"]
