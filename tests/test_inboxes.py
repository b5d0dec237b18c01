"""Inboxes and metadata through the official SDK, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from agentmail.core.api_error import ApiError
from agentmail.errors import NotFoundError, ValidationError
from agentmail.inboxes.types import CreateInboxRequest

from conftest import NO_RETRY, Harness


def test_create_get_list_delete(harness: Harness) -> None:
    client = harness.client()
    name = harness.new_username()
    inbox = client.inboxes.create(
        request=CreateInboxRequest(
            username=name, display_name="Agent One", metadata={"team": "sales", "tier": 2}
        )
    )
    assert inbox.inbox_id == f"{name}@agentmx.localhost"
    assert inbox.email == inbox.inbox_id
    assert inbox.metadata == {"team": "sales", "tier": 2}
    assert inbox.display_name == "Agent One"
    assert inbox.pod_id

    got = client.inboxes.get(inbox.inbox_id)
    assert got.metadata == {"team": "sales", "tier": 2}
    listed = client.inboxes.list(limit=100)
    assert any(
        i.inbox_id == inbox.inbox_id and i.metadata == {"team": "sales", "tier": 2} for i in listed.inboxes
    )

    client.inboxes.delete(inbox.inbox_id)
    with pytest.raises(NotFoundError):
        client.inboxes.get(inbox.inbox_id, request_options=NO_RETRY)


def test_create_without_body_gets_random_username(harness: Harness) -> None:
    inbox = harness.client().inboxes.create()
    assert inbox.inbox_id.endswith("@agentmx.localhost")
    assert inbox.metadata in ({}, None)


def test_client_id_is_idempotent(harness: Harness) -> None:
    client = harness.client()
    cid = "cid-" + harness.new_username()
    first = client.inboxes.create(request=CreateInboxRequest(client_id=cid))
    second = client.inboxes.create(request=CreateInboxRequest(client_id=cid))
    assert first.inbox_id == second.inbox_id


def test_metadata_merge_rules(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create(request=CreateInboxRequest(metadata={"a": "1", "b": True, "c": 3.5}))
    updated = client.inboxes.update(inbox.inbox_id, metadata={"a": "x", "b": None, "d": 7})
    assert updated.metadata == {"a": "x", "c": 3.5, "d": 7}
    assert client.inboxes.get(inbox.inbox_id).metadata == {"a": "x", "c": 3.5, "d": 7}
    renamed = client.inboxes.update(inbox.inbox_id, display_name="Renamed")
    assert renamed.metadata == {"a": "x", "c": 3.5, "d": 7} and renamed.display_name == "Renamed"
    cleared = client.inboxes.update(inbox.inbox_id, metadata=None)
    assert cleared.metadata in ({}, None)
    with pytest.raises(ValidationError):
        client.inboxes.update(inbox.inbox_id, metadata={}, request_options=NO_RETRY)


def test_retries_racing_a_create_get_its_row(harness: Harness) -> None:
    """Creates with one client_id at the same time (a retry after a timeout while the first request
    still runs) all answer with one row: before, the constraint's refusal was a 500 (pods) or a
    403 naming a random address (inboxes)."""
    inbox_cid, pod_cid = "ibx-" + harness.new_username(), "pod-" + harness.new_username()

    def create(i: int) -> str:
        client = harness.client()
        if i % 2:
            return client.inboxes.create(
                request=CreateInboxRequest(client_id=inbox_cid), request_options=NO_RETRY
            ).inbox_id
        return client.pods.create(client_id=pod_cid, request_options=NO_RETRY).pod_id

    with ThreadPoolExecutor(max_workers=12) as pool:
        made = list(pool.map(create, range(24)))
    assert len(set(made[1::2])) == 1 and len(set(made[0::2])) == 1


def test_concurrent_metadata_merges_all_land(harness: Harness) -> None:
    """Agents updating their own keys at once: every key lands (on PostgreSQL each merge read the
    old map and the last write dropped the others' keys)."""
    inbox = harness.client().inboxes.create(request=CreateInboxRequest(metadata={"start": 0}))

    def merge(i: int) -> None:
        harness.client().inboxes.update(inbox.inbox_id, metadata={f"k{i}": i})

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(merge, range(20)))
    assert harness.client().inboxes.get(inbox.inbox_id).metadata == {
        "start": 0,
        **{f"k{i}": i for i in range(20)},
    }


@pytest.mark.parametrize(
    "metadata",
    [
        {"k" * 257: "v"},
        {"k": "v" * 257},
        {f"k{i}": i for i in range(257)},
    ],
)
def test_oversized_metadata_is_400(harness: Harness, metadata: dict) -> None:
    with pytest.raises(ValidationError):
        harness.client().inboxes.create(
            request=CreateInboxRequest(metadata=metadata), request_options=NO_RETRY
        )


@pytest.mark.parametrize("metadata", [{"nested": {"a": 1}}, {"list": [1, 2]}, {"null": None}, ["a"], "text"])
def test_wrong_metadata_types_are_400(harness: Harness, metadata: object) -> None:
    # The SDK refuses these client-side, so they go over plain HTTP.
    r = httpx.post(
        f"{harness.server.base_url}/v0/inboxes",
        json={"metadata": metadata},
        headers={"Authorization": f"Bearer {harness.api_key}"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["name"] == "ValidationError" and r.json()["errors"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_metadata_numbers_are_400(harness: Harness, number: str) -> None:
    # Python's json reads these; JSON has no such numbers, and they could not be stored as given.
    r = httpx.post(
        f"{harness.server.base_url}/v0/inboxes",
        content=f'{{"metadata": {{"x": {number}}}}}',
        headers={"Authorization": f"Bearer {harness.api_key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["name"] == "ValidationError"


def test_metadata_integers_past_64_bits_read_back_exactly(harness: Harness) -> None:
    # Over plain HTTP: the SDK reads metadata numbers as floats.
    meta = {"big": 2**70 + 1, "small": -(2**64) - 3, "max": 2**63 - 1}
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    created = httpx.post(f"{harness.server.base_url}/v0/inboxes", json={"metadata": meta}, headers=headers)
    assert created.status_code == 200, created.text
    inbox_id = created.json()["inbox_id"]
    got = httpx.get(f"{harness.server.base_url}/v0/inboxes/{inbox_id}", headers=headers)
    assert got.json()["metadata"] == meta


def test_metadata_limits_accept_the_maximum(harness: Harness) -> None:
    meta = {f"{i:0>256}": "v" * 256 for i in range(256)}
    inbox = harness.client().inboxes.create(request=CreateInboxRequest(metadata=meta))
    assert len(inbox.metadata or {}) == 256


def test_patch_needs_a_field_and_pause(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create()
    r = httpx.patch(
        f"{harness.server.base_url}/v0/inboxes/{inbox.inbox_id}",
        json={},
        headers={"Authorization": f"Bearer {harness.api_key}"},
    )
    assert r.status_code == 400 and r.json()["name"] == "ValidationError" and "errors" in r.json()
    paused = client.inboxes.update(inbox.inbox_id, status="paused")
    assert paused.status == "paused"
    assert client.inboxes.update(inbox.inbox_id, status="active").status in (None, "active")


def test_pagination_and_ascending(harness: Harness) -> None:
    client = harness.client()
    pod = client.pods.create(name="paging")
    created = [client.pods.inboxes.create(pod.pod_id).inbox_id for _ in range(5)]
    seen: list[str] = []
    token = None
    while True:
        page = client.pods.inboxes.list(pod.pod_id, limit=2, page_token=token)
        seen += [i.inbox_id for i in page.inboxes]
        assert page.count == len(page.inboxes)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(created))
    asc = client.pods.inboxes.list(pod.pod_id, limit=10, ascending=True)
    assert [i.inbox_id for i in asc.inboxes] == created
    assert asc.next_page_token is None


def test_search(harness: Harness) -> None:
    client = harness.client()
    name = harness.new_username()
    inbox = client.inboxes.create(request=CreateInboxRequest(username=name, display_name="Billing Robot"))
    assert inbox.inbox_id in [i.inbox_id for i in client.inboxes.search(q=name).inboxes]
    assert inbox.inbox_id in [i.inbox_id for i in client.inboxes.search(q="billing rob").inboxes]
    assert client.inboxes.search(q=inbox.inbox_id).inboxes[0].inbox_id == inbox.inbox_id
    zurich = client.inboxes.create(request=CreateInboxRequest(display_name="Büro ZÜRICH")).inbox_id
    assert zurich in [i.inbox_id for i in client.inboxes.search(q="büro zürich").inboxes]
    room = client.inboxes.create(request=CreateInboxRequest(display_name=f"会议室 Ⅻ {name}")).inbox_id
    assert room in [i.inbox_id for i in client.inboxes.search(q=f"会议 {name}").inboxes]
    assert room in [i.inbox_id for i in client.inboxes.search(q=f"ⅻ {name}").inboxes]
    assert room not in [i.inbox_id for i in client.inboxes.search(q=f"会議 {name}").inboxes]
    with pytest.raises(ValidationError):
        client.inboxes.search(q="x", request_options=NO_RETRY)


@pytest.mark.parametrize("scheme", ["bearer ", "BEARER ", "Bearer  "])
def test_the_authorization_scheme_is_case_insensitive_and_spaces_may_repeat(
    harness: Harness, scheme: str
) -> None:
    """RFC 9110 11.1 and 11.4: a case-insensitive scheme, then 1*SP (curl scripts and some HTTP
    libraries send "bearer"). They were 401 missing_authorization."""
    headers = {"Authorization": scheme + harness.api_key}
    r = httpx.get(f"{harness.server.base_url}/v0/inboxes", headers=headers)
    assert r.status_code == 200, r.text


def test_unknown_ids_bad_tokens_and_malformed_json(harness: Harness) -> None:
    base = harness.server.base_url
    auth = {"Authorization": f"Bearer {harness.api_key}"}
    with pytest.raises(NotFoundError):
        harness.client().inboxes.get("nobody@agentmx.localhost", request_options=NO_RETRY)
    r = httpx.get(f"{base}/v0/inboxes")
    assert r.status_code == 401 and r.json()["code"] == "missing_authorization"
    r = httpx.get(f"{base}/v0/inboxes", headers={"Authorization": "Bearer am_wrong"})
    assert r.status_code == 401 and r.json()["code"] == "unknown_api_key"
    r = httpx.get(f"{base}/v0/inboxes", headers={"Authorization": f"Basic {harness.api_key}"})
    assert r.status_code == 401
    r = httpx.post(
        f"{base}/v0/inboxes", content=b"{not json", headers={**auth, "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["code"] == "validation_error"
    r = httpx.post(f"{base}/v0/inboxes", json={"display_name": 5}, headers=auth)
    assert r.status_code == 400
    r = httpx.get(f"{base}/v0/inboxes", params={"page_token": "garbage"}, headers=auth)
    assert r.status_code == 400
    r = httpx.get(f"{base}/v0/inboxes", params={"limit": "abc"}, headers=auth)
    assert r.status_code == 400
    with pytest.raises(ApiError) as err:
        harness.client(api_key="am_nope").inboxes.list(request_options=NO_RETRY)
    assert err.value.status_code == 401


def test_path_ids_keep_plus_signs(harness: Harness) -> None:
    client = harness.client()
    name = harness.new_username() + "+tag"
    inbox = client.inboxes.create(request=CreateInboxRequest(username=name))
    assert client.inboxes.get(inbox.inbox_id).inbox_id == f"{name}@agentmx.localhost"


def test_display_name_with_a_line_break_is_refused(harness: Harness) -> None:
    """It becomes the From header's phrase: accepted, it made every later send from the inbox a 400."""
    client = harness.client()
    with pytest.raises(ApiError) as created:
        client.inboxes.create(request=CreateInboxRequest(display_name="Agent\r\nBcc: spy@example.com"))
    assert created.value.status_code == 400
    inbox = client.inboxes.create(request=CreateInboxRequest(display_name="Agent"))
    with pytest.raises(ApiError) as updated:
        client.inboxes.update(inbox.inbox_id, display_name="Agent\nTwo")
    assert updated.value.status_code == 400
    assert client.inboxes.get(inbox.inbox_id).display_name == "Agent"


def test_return_path_usernames_are_reserved(harness: Harness) -> None:
    """Mail to bounces+…@ is taken for a delivery report: such an inbox got a 250 for mail it never stored."""
    client = harness.client()
    with pytest.raises(ValidationError):
        client.inboxes.create(
            request=CreateInboxRequest(username="bounces+" + harness.new_username()), request_options=NO_RETRY
        )
