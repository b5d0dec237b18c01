"""The key cache's single lookup for concurrent misses (services/key_cache.py)."""

from __future__ import annotations

import asyncio
import time

from agentmx.errors import NotFound
from agentmx.services.caller import Caller
from agentmx.services.key_cache import CachedKey, KeyCache


def _entry() -> CachedKey:
    return CachedKey(caller=Caller.__new__(Caller), expires_at=None, used_at=None, fetched=time.monotonic())


class _SlowLookup:
    """A key lookup whose database answers once released; counts the lookups."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> CachedKey:
        self.calls += 1
        await self.release.wait()
        return _entry()


def test_concurrent_misses_share_one_lookup() -> None:
    cache = KeyCache()
    calls = 0

    async def load() -> CachedKey:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)  # a database round trip, during which more requests arrive
        return _entry()

    async def main() -> list[CachedKey]:
        return await asyncio.gather(*(cache.get_or_load("h", load) for _ in range(64)))

    entries = asyncio.run(main())
    assert calls == 1 and all(e is entries[0] for e in entries)
    assert cache.get("h") is entries[0]


def test_a_failed_lookup_fails_every_waiter_and_is_not_cached() -> None:
    cache = KeyCache()

    async def load() -> CachedKey:
        await asyncio.sleep(0.01)
        raise NotFound("Key not found")

    async def main() -> list[BaseException | CachedKey]:
        return await asyncio.gather(*(cache.get_or_load("h", load) for _ in range(5)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, NotFound) for o in outcomes)
    assert cache.get("h") is None


def test_a_lookup_begun_before_clear_does_not_fill_the_cache() -> None:
    cache = KeyCache()

    async def load() -> CachedKey:
        await asyncio.sleep(0.01)
        return _entry()

    async def main() -> CachedKey:
        task = asyncio.create_task(cache.get_or_load("h", load))
        await asyncio.sleep(0)
        cache.clear()  # e.g. the key was deleted while its lookup was in flight
        return await task

    assert asyncio.run(main()) is not None  # the caller that started it still gets its answer
    assert cache.get("h") is None


def test_an_expired_entry_is_looked_up_again() -> None:
    cache = KeyCache(ttl=0.0)
    calls = 0

    async def load() -> CachedKey:
        nonlocal calls
        calls += 1
        return _entry()

    async def main() -> None:
        await cache.get_or_load("h", load)
        await asyncio.sleep(0.001)
        await cache.get_or_load("h", load)

    asyncio.run(main())
    assert calls == 2


def _aged(cache: KeyCache, fraction: float) -> CachedKey:
    """An entry put ``fraction`` of the ttl ago."""
    entry = _entry()
    entry.fetched -= cache.ttl * fraction
    cache.put("h", entry)
    return entry


def test_an_entry_past_half_its_ttl_is_answered_while_one_reload_runs() -> None:
    cache = KeyCache(ttl=10.0)
    old = _aged(cache, 0.6)
    load = _SlowLookup()  # the database is slow: nobody may wait on it

    async def main() -> CachedKey | None:
        answers = await asyncio.wait_for(
            asyncio.gather(*(cache.get_or_load("h", load) for _ in range(20))), 1
        )
        assert all(a is old for a in answers)
        assert load.calls == 1  # one reload for the key, however many requests saw it ageing
        load.release.set()
        for _ in range(10):
            await asyncio.sleep(0)
        return cache.get("h")

    fresh = asyncio.run(main())
    assert load.calls == 1
    assert fresh is not None and fresh is not old


def test_a_reload_that_finds_the_key_gone_drops_the_entry() -> None:
    cache = KeyCache(ttl=10.0)
    old = _aged(cache, 0.6)

    async def revoked() -> CachedKey:
        raise NotFound("Key not found")

    async def main() -> None:
        assert await cache.get_or_load("h", revoked) is old  # answered; the reload runs behind it
        for _ in range(5):
            await asyncio.sleep(0)
        assert cache.get("h") is None
        try:
            await cache.get_or_load("h", revoked)
        except NotFound:
            return
        raise AssertionError("the next request was answered from the dropped entry")

    asyncio.run(main())


def test_a_reload_the_database_did_not_answer_keeps_the_entry_until_its_ttl() -> None:
    """A database blip during a reload: the key was not found gone, so its entry is still answered
    (no 503 for requests the cache could answer), and a later request reloads it again."""
    cache = KeyCache(ttl=10.0)
    old = _aged(cache, 0.6)
    calls = 0

    async def unreachable() -> CachedKey:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("the database restarted")

    async def main() -> None:
        assert await cache.get_or_load("h", unreachable) is old
        for _ in range(5):
            await asyncio.sleep(0)
        assert await cache.get_or_load("h", unreachable) is old  # still within its ttl
        for _ in range(5):
            await asyncio.sleep(0)
        assert calls == 2  # the reload was tried again, not given up on
        old.fetched -= cache.ttl  # past its ttl: never answered, whatever the database does
        try:
            await cache.get_or_load("h", unreachable)
        except ConnectionRefusedError:
            return
        raise AssertionError("an entry past its ttl was answered")

    asyncio.run(main())


def test_a_request_past_the_ttl_joins_the_reload_in_flight() -> None:
    cache = KeyCache(ttl=10.0)
    old = _aged(cache, 0.6)
    load = _SlowLookup()

    async def main() -> None:
        assert await cache.get_or_load("h", load) is old
        old.fetched -= cache.ttl  # now past its ttl: never answered again
        late = asyncio.create_task(cache.get_or_load("h", load))
        await asyncio.sleep(0.01)
        assert not late.done()
        load.release.set()
        assert await late is not old

    asyncio.run(main())
    assert load.calls == 1


def test_a_reload_begun_before_clear_does_not_fill_the_cache() -> None:
    cache = KeyCache(ttl=10.0)
    _aged(cache, 0.6)
    load = _SlowLookup()

    async def main() -> None:
        await cache.get_or_load("h", load)
        cache.clear()  # the key changed (NOTIFY) while its reload was in flight
        load.release.set()
        for _ in range(10):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert cache.get("h") is None


def test_a_reload_cancelled_before_it_ran_does_not_hold_up_the_key() -> None:
    cache = KeyCache(ttl=10.0)
    old = _aged(cache, 0.6)

    async def load() -> CachedKey:
        return _entry()

    async def answered_then_stopped() -> None:
        assert await cache.get_or_load("h", load) is old
        for task in asyncio.all_tasks():  # the process stops before the reload has run
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.sleep(0)

    async def later() -> CachedKey:
        old.fetched -= cache.ttl
        return await asyncio.wait_for(cache.get_or_load("h", load), 1)

    asyncio.run(answered_then_stopped())
    assert asyncio.run(later()) is not old


def test_a_request_after_clear_does_not_join_a_reload_begun_before_it() -> None:
    """A reload that read the key before it was deleted must not answer a request made after the
    deletion cleared the cache: that request looks the key up afresh."""
    cache = KeyCache(ttl=10.0)
    _aged(cache, 0.6)
    read_before_the_delete = _SlowLookup()

    async def revoked() -> CachedKey:
        raise NotFound("Key not found")

    async def main() -> None:
        await cache.get_or_load("h", read_before_the_delete)  # answered; its reload is in flight
        cache.clear()  # the key was deleted (this process, or another one's NOTIFY)
        late = asyncio.create_task(cache.get_or_load("h", revoked))
        await asyncio.sleep(0)
        read_before_the_delete.release.set()
        try:
            await asyncio.wait_for(late, 1)
        except NotFound:
            return
        raise AssertionError("a request after the deletion was answered by the reload begun before it")

    asyncio.run(main())


def test_a_request_cancelled_during_its_lookup_does_not_cancel_those_waiting_on_it() -> None:
    """The first request for a key runs the lookup the others wait on. Its client going away (an
    SMTP session dropped during AUTH, a timed-out request) must not fail theirs."""
    cache = KeyCache()
    looked_up = asyncio.Event()

    async def load() -> CachedKey:
        looked_up.set()
        await asyncio.sleep(0.05)
        return _entry()

    async def main() -> CachedKey:
        first = asyncio.create_task(cache.get_or_load("h", load))
        await looked_up.wait()
        waiting = asyncio.create_task(cache.get_or_load("h", load))
        await asyncio.sleep(0)
        first.cancel()
        return await asyncio.wait_for(waiting, 1)

    assert asyncio.run(main()) is not None
