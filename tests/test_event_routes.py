"""Streams subscribed alike share one event test (events/routes.py), asked once per event by the hub."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from agentmx.events.hub import Hub, Item
from agentmx.events.routes import route_of
from agentmx.events.stream import Filter
from agentmx.services.caller import Caller
from events_support import event_row

RECEIVED = frozenset({"message.received"})


def test_alike_subscriptions_share_one_route_and_others_do_not() -> None:
    one = Filter(RECEIVED, frozenset({"a@example.com"}), frozenset())
    same = Filter(RECEIVED, frozenset({"a@example.com"}), frozenset())
    other = Filter(RECEIVED, frozenset({"b@example.com"}), frozenset())
    caller = Caller(organization_id="org")
    assert route_of(one, caller) is route_of(same, Caller(organization_id="org", api_key_id="key_2"))
    assert route_of(one, caller) is not route_of(other, caller)
    # The caller's scope is part of the route: an inbox-scoped key sees only its inbox.
    assert route_of(one, caller) is not route_of(one, Caller(organization_id="org", inbox_id="b@example.com"))


def test_the_hub_asks_a_shared_test_once_per_event_and_each_stream_gets_its_answer() -> None:
    async def main() -> None:
        hub = Hub(cast(Any, None))
        asked: list[int] = []

        def takes_inbox_a(item: Item) -> bool:
            asked.append(item.seq)
            return item.inbox_id == "a@example.com"

        subs = [hub.register("org") for _ in range(3)]
        for sub in subs:
            sub.accepts = takes_inbox_a
        hub.offer([event_row(1, "a@example.com")])
        hub.offer([event_row(2, "b@example.com")])
        assert asked == [1, 2]
        for sub in subs:
            assert cast(Item, sub.queue.get_nowait()).seq == 1
            assert sub.queue.empty()

    asyncio.run(main())
