"""Deleting an inbox or a pod while rows belonging to it are being created (raced over the API)."""

from __future__ import annotations

import asyncio
import random
import smtplib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from agentmx.testing import postgres
from agentmx.testing.server import ServerProcess
from conftest import Harness

ROUNDS = 6
HOOK_URL = "http://127.0.0.1:9/hook"  # never called: no mail flows in these tests


def _http(harness: Harness, api_key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key or harness.api_key}"}
    limits = httpx.Limits(max_connections=32)
    return httpx.Client(base_url=harness.server.base_url, headers=headers, timeout=30, limits=limits)


def _race(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run the calls at once (each after a random jitter, so the delete lands at different points)."""

    def jittered(call: Callable[[], httpx.Response]) -> httpx.Response:
        time.sleep(random.uniform(0, 0.01))
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(jittered, calls))


def _codes(responses: list[httpx.Response]) -> list[tuple[int, str]]:
    return [(r.status_code, r.text[:200]) for r in responses]


def test_rows_created_while_an_inbox_is_deleted_do_not_pass_to_the_next_inbox(harness: Harness) -> None:
    """Keys, block entries and webhooks created during the delete go with the inbox (or are refused):
    none of them applies to an inbox made again at the same address."""
    with _http(harness) as http:
        for _ in range(ROUNDS):
            address = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
            base = f"/v0/inboxes/{address}"

            creates = [partial(http.post, f"{base}/api-keys", json={"name": f"k{i}"}) for i in range(3)]
            creates += [
                partial(http.post, f"{base}/lists/receive/block", json={"entry": f"a{i}@spam.test"})
                for i in range(3)
            ]
            creates += [partial(http.post, f"{base}/webhooks", json={"url": HOOK_URL})] * 2
            listing = {"url": HOOK_URL, "inbox_ids": [address]}
            creates += [partial(http.post, "/v0/webhooks", json=listing)] * 2
            deleted, *made = _race([partial(http.delete, base), *creates])
            assert deleted.status_code == 204, deleted.text
            # Refused creates are a 404 (or a 400 naming the missing inbox in inbox_ids), never a 500.
            assert all(r.status_code in (200, 400, 404) for r in made), _codes(made)

            again = http.post("/v0/inboxes", json={"username": address.split("@")[0]})
            assert again.status_code == 200 and again.json()["inbox_id"] == address, again.text
            for r in made[:3]:
                if r.status_code == 200:
                    with _http(harness, r.json()["api_key"]) as old_key:
                        assert old_key.get(base).status_code in (401, 403, 404)
            assert http.get(f"{base}/lists/receive/block").json()["entries"] == []
            assert http.get(f"{base}/webhooks").json()["webhooks"] == []
            for r in made[8:]:
                if r.status_code == 200:
                    hook = http.get(f"/v0/webhooks/{r.json()['webhook_id']}").json()
                    assert address not in hook.get("inbox_ids", [])


def test_inbox_added_to_a_webhook_while_deleted_is_unlisted(harness: Harness) -> None:
    """Adding an inbox to a webhook races its deletion: the webhook never keeps the old address."""
    with _http(harness) as http:
        hooks = [http.post("/v0/webhooks", json={"url": HOOK_URL}).json()["webhook_id"] for _ in range(3)]
        for _ in range(ROUNDS):
            address = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]

            add = {"add_inbox_ids": [address]}
            adds = [partial(http.patch, f"/v0/webhooks/{hook_id}", json=add) for hook_id in hooks]
            deleted, *added = _race([partial(http.delete, f"/v0/inboxes/{address}"), *adds])
            assert deleted.status_code == 204, deleted.text
            assert all(r.status_code in (200, 400) for r in added), _codes(added)
            for hook_id in hooks:
                assert address not in http.get(f"/v0/webhooks/{hook_id}").json().get("inbox_ids", [])


def test_pod_delete_racing_creates_in_the_pod_is_409_or_404(harness: Harness) -> None:
    """A pod deleted while inboxes, webhooks, keys and list entries are created in it: the delete is
    a 204 or a 409, a create a 200 or a 404, and nothing is left on a deleted pod."""
    with _http(harness) as http:
        for _ in range(ROUNDS):
            pod = http.post("/v0/pods", json={}).json()["pod_id"]
            base = f"/v0/pods/{pod}"
            creates = [
                partial(http.post, f"{base}/inboxes", json={}),
                partial(http.post, f"{base}/inboxes", json={}),
                partial(http.post, f"{base}/webhooks", json={"url": HOOK_URL}),
                partial(http.post, f"{base}/webhooks", json={"url": HOOK_URL}),
                partial(http.post, f"{base}/api-keys", json={"name": "k"}),
                partial(http.post, f"{base}/lists/receive/block", json={"entry": "spam.test"}),
            ]
            deleted, *made = _race([partial(http.delete, base), *creates])
            assert deleted.status_code in (204, 409), deleted.text
            assert all(r.status_code in (200, 404) for r in made), _codes(made)
            if deleted.status_code == 204:
                assert all(r.status_code == 404 for r in made[:4]), _codes(made)
            else:  # what kept the pod: an inbox or a webhook made before the delete counted
                assert any(r.status_code == 200 for r in made[:4]), _codes(made)


def test_pod_delete_racing_its_keys_entries_and_webhook_listings_leaves_none(harness: Harness) -> None:
    """A pod deleted while keys and list entries are added to it and webhooks start to follow it:
    whatever was made first goes with the pod (a key stops working), the rest is a 404 or a 400."""
    with _http(harness) as http:
        # Webhooks following another pod, which stays: the deleted pod is added to them during the race.
        kept = http.post("/v0/pods", json={}).json()["pod_id"]
        following = {"url": HOOK_URL, "pod_ids": [kept]}
        hooks = [http.post("/v0/webhooks", json=following).json()["webhook_id"] for _ in range(2)]
        for _ in range(ROUNDS):
            pod = http.post("/v0/pods", json={}).json()["pod_id"]
            base = f"/v0/pods/{pod}"
            creates = [partial(http.post, f"{base}/api-keys", json={"name": f"k{i}"}) for i in range(3)]
            creates += [
                partial(http.post, f"{base}/lists/receive/block", json={"entry": f"s{i}.test"})
                for i in range(3)
            ]
            creates += [partial(http.post, "/v0/webhooks", json={"url": HOOK_URL, "pod_ids": [pod]})] * 2
            creates += [partial(http.patch, f"/v0/webhooks/{h}", json={"add_pod_ids": [pod]}) for h in hooks]
            deleted, *made = _race([partial(http.delete, base), *creates])
            assert deleted.status_code == 204, deleted.text
            assert all(r.status_code in (200, 400, 404) for r in made), _codes(made)
            for r in made[:3]:
                if r.status_code == 200:
                    with _http(harness, r.json()["api_key"]) as old_key:
                        assert old_key.get("/v0/api-keys").status_code == 401
            assert harness.count_rows("SELECT count(*) FROM list_entries WHERE pod_id = :pod", pod=pod) == 0
            made_hooks = [r.json()["webhook_id"] for r in made[6:8] if r.status_code == 200]
            for hook_id in hooks + made_hooks:
                assert pod not in http.get(f"/v0/webhooks/{hook_id}").json().get("pod_ids", [])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_inboxes_made_at_once_without_a_default_pod_share_one_new_one(
    backend: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    """The default pod was deleted: inboxes made at once without a pod all land in one new default
    pod (before, each PostgreSQL transaction saw none and made its own)."""
    server = fresh_server(backend).start()
    headers = {"Authorization": f"Bearer {server.create_key()}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
        for _ in range(ROUNDS):
            default = http.post("/v0/inboxes", json={}).json()["pod_id"]
            for inbox in http.get("/v0/inboxes", params={"limit": 100}).json()["inboxes"]:
                http.delete(f"/v0/inboxes/{inbox['inbox_id']}").raise_for_status()
            http.delete(f"/v0/pods/{default}").raise_for_status()
            made = _race([partial(http.post, "/v0/inboxes", json={})] * 8)
            assert all(r.status_code == 200 for r in made), _codes(made)
            assert len({r.json()["pod_id"] for r in made}) == 1, _codes(made)
            assert len(http.get("/v0/pods", params={"limit": 100}).json()["pods"]) == 1


def test_inboxes_with_webhooks_deleted_at_once(harness: Harness) -> None:
    """Each deletion locks the organization's webhooks: in one order, or two of them deadlock (500)."""
    with _http(harness) as http:
        for _ in range(ROUNDS):
            addresses = [
                http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
                for _ in range(4)
            ]
            for address in addresses:
                http.post(f"/v0/inboxes/{address}/webhooks", json={"url": HOOK_URL}).raise_for_status()
            deleted = _race([partial(http.delete, f"/v0/inboxes/{address}") for address in addresses])
            assert all(r.status_code == 204 for r in deleted), _codes(deleted)


def _data_replies(
    harness: Harness,
    address: str,
    sessions: int,
    meanwhile: Callable[[httpx.Client], None],
    also: tuple[str, ...] = (),
) -> list[int]:
    """SMTP sessions to ``address`` (and ``also``) past RCPT; their DATA sent all at once while
    ``meanwhile`` runs (deleting the inbox). Returns each DATA's reply code."""
    clients = []
    for i in range(sessions):
        smtp = smtplib.SMTP("127.0.0.1", harness.server.smtp_port, timeout=30)
        smtp.ehlo()
        smtp.mail("sender@example.test")
        for rcpt in (address, *also):
            code, _ = smtp.rcpt(rcpt)
            assert code == 250
        clients.append((i, smtp))

    def data(item: tuple[int, smtplib.SMTP]) -> int:
        i, smtp = item
        time.sleep(random.uniform(0, 0.02))
        body = f"From: sender@example.test\r\nTo: {address}\r\nSubject: m{i}\r\n\r\nhi\r\n"
        code, _ = smtp.data(body.encode())
        smtp.close()
        return code

    def after_the_data_began(http: httpx.Client) -> None:
        time.sleep(0.01)
        meanwhile(http)

    with _http(harness) as http, ThreadPoolExecutor(sessions + 1) as pool:
        codes = pool.map(data, clients)
        pool.submit(after_the_data_began, http).result()
        return list(codes)


def _delete(address: str) -> Callable[[httpx.Client], None]:
    def run(http: httpx.Client) -> None:
        assert http.delete(f"/v0/inboxes/{address}").status_code == 204

    return run


def test_mail_for_an_inbox_deleted_before_its_store_is_refused_not_deferred(harness: Harness) -> None:
    """Mail whose recipient passed RCPT and whose inbox is deleted before the message is stored: a 250
    (stored, then deleted with the inbox) or a 550 5.1.1 (no such inbox), never a 451 that has the
    sender retry mail nobody can receive (the insert failed on its foreign key, with a traceback)."""
    codes: list[int] = []
    for _ in range(3):
        with _http(harness) as http:
            address = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
        codes += _data_replies(harness, address, sessions=16, meanwhile=_delete(address))
    assert set(codes) <= {250, 550}, sorted(codes)


def test_the_other_recipients_of_mail_for_a_deleted_inbox_get_it_once(harness: Harness) -> None:
    """Mail to two inboxes, one deleted before the message is stored: the DATA is a 250 (the other
    inbox has it) and the other inbox has each message exactly once, whichever way its copy went
    (refused inbox left out and the rest stored again, a batch re-run one by one, or stored first)."""
    with _http(harness) as http:
        kept = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
        for round_ in range(3):
            address = http.post("/v0/inboxes", json={"username": harness.new_username()}).json()["inbox_id"]
            codes = _data_replies(harness, address, sessions=16, meanwhile=_delete(address), also=(kept,))
            assert set(codes) == {250}, sorted(codes)
            messages = http.get(f"/v0/inboxes/{kept}/messages", params={"limit": 100}).json()["messages"]
            subjects = sorted(m["subject"] for m in messages)
            assert subjects == sorted([f"m{i}" for i in range(16)] * (round_ + 1)), subjects


def test_mail_for_a_deleted_inbox_does_not_land_in_the_one_made_again_in_another_pod(
    harness: Harness,
) -> None:
    """An inbox deleted and made again at its address, in another pod, while mail for the first one is
    being stored: that mail was stored in the new inbox under the old pod (and organization), so the
    old pod listed, and its keys read, the new inbox's threads, and the new pod did not."""
    with _http(harness) as http:
        old_pod, new_pod = (http.post("/v0/pods", json={"name": f"p{i}"}).json()["pod_id"] for i in range(2))
        for _ in range(3):
            username = harness.new_username()
            address = http.post(f"/v0/pods/{old_pod}/inboxes", json={"username": username}).json()["inbox_id"]
            again = partial(_made_again, address=address, username=username, pod=new_pod)
            codes = _data_replies(harness, address, sessions=16, meanwhile=again)
            assert set(codes) <= {250, 550}, sorted(codes)
            in_inbox = http.get(f"/v0/inboxes/{address}/threads", params={"limit": 100}).json()["count"]
            listed = [_threads_listed(http, pod, address) for pod in (old_pod, new_pod)]
            assert listed == [0, in_inbox]


def _made_again(http: httpx.Client, *, address: str, username: str, pod: str) -> None:
    _delete(address)(http)
    made = http.post(f"/v0/pods/{pod}/inboxes", json={"username": username})
    assert made.status_code == 200, made.text


def _threads_listed(http: httpx.Client, pod: str, address: str) -> int:
    threads = http.get(f"/v0/pods/{pod}/threads", params={"limit": 100}).json()["threads"]
    return sum(1 for t in threads if t["inbox_id"] == address)


def test_a_reply_while_its_inbox_is_deleted_does_not_deadlock(tmp_path: Path) -> None:
    """Deleting an inbox locks it, then its messages and threads; a reply locks its thread, then
    inserts a message (whose foreign key waits for the inbox). The reply pins the inbox before its
    thread, so the two wait for each other in one order: before, PostgreSQL found a deadlock and the
    reply was a 500. A third connection holds the inbox's messages to keep the deletion inside its
    cleanups (as a big inbox would) while the reply starts."""
    if not postgres.available():
        pytest.skip("PostgreSQL not reachable")
    url = postgres.create_database()
    server = ServerProcess(tmp_path / "srv", database_url=url).start()
    try:
        http = httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {server.create_key()}"}
        )
        a = http.post("/v0/inboxes", json={"username": "deleted"}).json()["inbox_id"]
        b = http.post("/v0/inboxes", json={"username": "other"}).json()["inbox_id"]
        first = http.post(
            f"/v0/inboxes/{a}/messages/send", json={"to": [b], "subject": "x", "text": "t"}
        ).json()
        # Its local delivery labels it 'delivered' later, locking its thread and itself: wait for it,
        # so the deletion and the reply are the only requests that take those locks.
        _wait(
            lambda: (
                "delivered" in http.get(f"/v0/inboxes/{a}/messages/{first['message_id']}").json()["labels"]
            )
        )

        async def hold_messages_while(requests: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
            holder = await asyncpg.connect(url)
            try:
                async with holder.transaction():
                    await holder.fetch("SELECT id FROM messages WHERE inbox_id = $1 FOR UPDATE", a)
                    pending = []
                    for request in requests:
                        pending.append(asyncio.get_running_loop().run_in_executor(None, request))
                        await asyncio.sleep(0.5)  # the deletion is waiting inside its cleanups by now
                return list(await asyncio.gather(*pending))
            finally:
                await holder.close()

        deleted, reply = asyncio.run(
            hold_messages_while(
                [
                    lambda: http.delete(f"/v0/inboxes/{a}"),
                    lambda: http.post(
                        f"/v0/inboxes/{a}/messages/{first['message_id']}/reply", json={"text": "r"}
                    ),
                ]
            )
        )
        assert deleted.status_code == 204, deleted.text
        assert reply.status_code in (200, 404), reply.text  # sent before the deletion, or after it: not a 500
    finally:
        server.stop()
        postgres.drop_database(url)


# (what deletes, what changes labels, which of the thread's two messages the third connection holds)
LABELS_VS_DELETES = {
    "thread_patch_vs_message_delete": ("DELETE message 2", "PATCH thread", 0),
    "thread_patch_vs_thread_delete": ("DELETE thread", "PATCH thread", 1),
    "message_patch_vs_thread_delete": ("DELETE thread", "PATCH message 1", 1),
    "message_patch_vs_inbox_delete": ("DELETE inbox", "PATCH message 1", 1),
}


@pytest.mark.parametrize("case", list(LABELS_VS_DELETES))
def test_a_label_change_while_its_thread_loses_messages_does_not_deadlock(
    case: str, fresh_server: Callable[..., ServerProcess]
) -> None:
    """A label change locks the thread, then its messages; a deletion took the messages, then the
    thread: each waited for the other and PostgreSQL ended one (a 503). A third connection holds one
    message so that each request stops between its two locks. Either may go first: the deletion is a
    204, the change a 200, or a 404 once its thread or message is gone (not a 200 for a deleted thread)."""
    server = fresh_server("postgres").start()
    url = server.database_url
    assert url is not None
    http = httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {server.create_key()}"}, timeout=60
    )
    a = http.post("/v0/inboxes", json={"username": "labels"}).json()["inbox_id"]
    b = http.post("/v0/inboxes", json={"username": "peer"}).json()["inbox_id"]
    first = http.post(f"/v0/inboxes/{a}/messages/send", json={"to": [b], "subject": "x", "text": "t"}).json()
    thread = first["thread_id"]
    received = _wait(lambda: http.get(f"/v0/inboxes/{b}/messages").json()["messages"])
    http.post(
        f"/v0/inboxes/{b}/messages/{received[0]['message_id']}/reply", json={"text": "r"}
    ).raise_for_status()
    _wait(lambda: http.get(f"/v0/inboxes/{a}/threads/{thread}").json()["message_count"] == 2)
    # The first message's 'delivered' label comes from its delivery job, which locks the thread and the
    # message as a label change does: wait for it, so only the two requests below take those locks.
    _wait(lambda: "delivered" in http.get(f"/v0/inboxes/{a}/messages/{first['message_id']}").json()["labels"])

    async def rows() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(
                "SELECT id, message_id FROM messages WHERE thread_id = $1 ORDER BY id", thread
            )
        finally:
            await conn.close()

    messages = asyncio.run(rows())
    deleting, labelling, held = LABELS_VS_DELETES[case]
    paths = {
        "DELETE message 2": f"/v0/inboxes/{a}/messages/{messages[1]['message_id']}",
        "DELETE thread": f"/v0/inboxes/{a}/threads/{thread}",
        "DELETE inbox": f"/v0/inboxes/{a}",
        "PATCH thread": f"/v0/inboxes/{a}/threads/{thread}",
        "PATCH message 1": f"/v0/inboxes/{a}/messages/{messages[0]['message_id']}",
    }
    calls = {
        deleting: partial(http.delete, paths[deleting]),
        labelling: partial(http.patch, paths[labelling], json={"add_labels": ["seen-by-agent"]}),
    }
    # The request that takes the held message's lock second goes second.
    order = [labelling, deleting] if held == 0 else [deleting, labelling]

    async def holding(message_pk: str) -> list[httpx.Response]:
        holder = await asyncpg.connect(url)
        try:
            async with holder.transaction():
                await holder.fetch("SELECT id FROM messages WHERE id = $1 FOR UPDATE", message_pk)
                pending = []
                for name in order:
                    pending.append(asyncio.get_running_loop().run_in_executor(None, calls[name]))
                    await asyncio.sleep(0.5)  # waiting for the held message (or the thread) by now
            return list(await asyncio.gather(*pending))
        finally:
            await holder.close()

    responses = dict(zip(order, asyncio.run(holding(messages[held]["id"])), strict=True))
    assert responses[deleting].status_code == 204, responses[deleting].text
    # The first to take the thread goes first: the label change finds no thread or message left.
    assert responses[labelling].status_code == (200 if held == 0 else 404), responses[labelling].text


def _wait(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")
