"""Metrics through the official SDK (and the legacy HTTP form): shapes, scopes, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from agentmail.core.api_error import ApiError

from conftest import NO_RETRY, Harness


def test_usage_counts_inboxes_and_pods(harness: Harness) -> None:
    client = harness.client()
    pod = client.pods.create(name="metrics-" + harness.new_username())
    before = datetime.now(UTC) - timedelta(minutes=5)
    client.pods.inboxes.create(pod.pod_id, username=harness.new_username())
    client.pods.inboxes.create(pod.pod_id, username=harness.new_username())

    usage = client.pods.metrics.query_usage(pod.pod_id, start=before, period=60)
    assert set(usage) == {"storage_bytes", "message_count", "thread_count", "inbox_count", "domain_count"}
    points = usage["inbox_count"]
    assert points[-1].value == 2 and points[0].value == 0
    assert [p.timestamp for p in points] == sorted(p.timestamp for p in points)
    assert usage["message_count"][-1].value == 0

    org = client.metrics.query_usage(usage_types=["pod_count", "inbox_count"])
    assert set(org) == {"pod_count", "inbox_count"} and org["pod_count"][-1].value >= 1

    desc = client.pods.metrics.query_usage(
        pod.pod_id, usage_types=["inbox_count"], start=before, period=60, descending=True, limit=2
    )
    assert (
        len(desc["inbox_count"]) == 2 and desc["inbox_count"][0].timestamp > desc["inbox_count"][1].timestamp
    )


def test_events_and_rates_shapes(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create(request={"username": harness.new_username()})
    events = client.inboxes.metrics.query_events(
        inbox.inbox_id, event_types=["message.sent", "message.received"], period=3600
    )
    assert set(events) == {"message.sent", "message.received"}
    assert events["message.sent"] == []

    everything = client.metrics.query_events()
    assert "message.delivered" in everything and "domain.verified" in everything

    rates = client.inboxes.metrics.query_rates(inbox.inbox_id)
    assert set(rates) == {"bounce", "complaint"}
    assert len(rates["bounce"]) == 24
    assert all(p.rate is None and p.sent == 0 for p in rates["bounce"])


def test_validation(harness: Harness) -> None:
    client = harness.client()
    now = datetime.now(UTC)
    with pytest.raises(ApiError) as too_old:
        client.metrics.query_events(start=now - timedelta(days=91), request_options=NO_RETRY)
    assert too_old.value.status_code == 400
    with pytest.raises(ApiError) as wide:
        client.metrics.query_events(start=now - timedelta(days=2), period=60, request_options=NO_RETRY)
    assert wide.value.status_code == 422 and wide.value.body["code"] == "query_range_too_wide"
    with pytest.raises(ApiError) as bad_period:
        client.metrics.query_usage(period=0, request_options=NO_RETRY)
    assert bad_period.value.status_code == 400
    with pytest.raises(ApiError) as bad_window:
        client.metrics.query_rates(period=3600, window=5000, request_options=NO_RETRY)
    assert bad_window.value.status_code == 400
    with pytest.raises(ApiError) as bad_type:
        client.metrics.query_events(event_types=["message.teleported"], request_options=NO_RETRY)
    assert bad_type.value.status_code == 400
    # A future end is clamped to now.
    assert "message.sent" in client.metrics.query_events(end=now + timedelta(days=3), period=3600)


def test_scopes_and_permission(harness: Harness) -> None:
    client = harness.client()
    inbox = client.inboxes.create(request={"username": harness.new_username()})
    scoped = harness.client(api_key=client.inboxes.api_keys.create(inbox.inbox_id, request={}).api_key)
    assert set(scoped.inboxes.metrics.query_usage(inbox.inbox_id)) == {
        "storage_bytes",
        "message_count",
        "thread_count",
    }
    with pytest.raises(ApiError) as org:
        scoped.metrics.query_events(request_options=NO_RETRY)
    assert org.value.status_code == 403
    no_metrics = client.inboxes.api_keys.create(inbox.inbox_id, request={"permissions": {"inbox_read": True}})
    with pytest.raises(ApiError) as denied:
        harness.client(api_key=no_metrics.api_key).inboxes.metrics.query_usage(
            inbox.inbox_id, request_options=NO_RETRY
        )
    assert denied.value.status_code == 403 and "metrics_read" in denied.value.body["fix"]


def test_legacy_form(harness: Harness) -> None:
    headers = {"Authorization": f"Bearer {harness.api_key}"}
    now = datetime.now(UTC)
    params = {"start_timestamp": (now - timedelta(hours=1)).isoformat(), "end_timestamp": now.isoformat()}
    response = httpx.get(f"{harness.server.base_url}/v0/metrics", params=params, headers=headers)
    assert response.status_code == 200
    assert set(response.json()["message"]) == {
        "sent",
        "delivered",
        "bounced",
        "delayed",
        "rejected",
        "complained",
        "received",
    }
    missing = httpx.get(f"{harness.server.base_url}/v0/metrics", headers=headers)
    assert missing.status_code == 400


def test_an_end_before_the_retention_is_400_and_usage_without_period_is_one_point(harness: Harness) -> None:
    client = harness.client()
    ancient = datetime(1, 1, 1, tzinfo=UTC)  # its default start (a day earlier) does not exist: was a 500
    for query in (client.metrics.query_events, client.metrics.query_usage, client.metrics.query_rates):
        with pytest.raises(ApiError) as old:
            query(end=ancient, request_options=NO_RETRY)
        assert old.value.status_code == 400
    # A range with a fraction of a second still gives the one point at its end.
    start = datetime.now(UTC) - timedelta(seconds=90.5)
    usage = client.metrics.query_usage(usage_types=["pod_count"], start=start)
    assert len(usage["pod_count"]) == 1
