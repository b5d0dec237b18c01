"""A live stream's event test, one object for all the streams subscribed alike.

The hub asks every stream of an organization whether it takes an event (``Subscriber.accepts``).
A thousand streams with the same subscription asked the same question a thousand times per event;
interned here they share one test, and the hub asks it once per event (``Hub._fan_out`` keeps each
test's answers while it fans a batch of events out).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from agentmx.services.caller import Caller
from agentmx.services.webhooks import RoutedEvent

if TYPE_CHECKING:
    from agentmx.events.stream import Filter


class Route:
    """``filter.matches(caller, item)`` as a callable, hashed by identity (one per distinct route)."""

    __slots__ = ("__weakref__", "caller", "filter")

    def __init__(self, event_filter: Filter, caller: Caller) -> None:
        self.filter = event_filter
        # Of the caller, matches reads only the scope in the interning key: any of the streams' callers will do.
        self.caller = caller

    def __call__(self, item: RoutedEvent) -> bool:
        return self.filter.matches(self.caller, item)


# Weak: a route lives as long as a stream holds it.
_routes: weakref.WeakValueDictionary[tuple[Filter, str, str | None, str | None], Route] = (
    weakref.WeakValueDictionary()
)


def route_of(event_filter: Filter, caller: Caller) -> Route:
    key = (event_filter, caller.organization_id, caller.pod_id, caller.inbox_id)
    route = _routes.get(key)
    if route is None:
        route = _routes[key] = Route(event_filter, caller)
    return route
