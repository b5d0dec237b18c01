"""Which event loop a process runs on: asyncio's own, or uvloop (a dependency, via uvicorn[standard])."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal, get_args

Choice = Literal["auto", "asyncio", "uvloop"]
CHOICES: tuple[str, ...] = get_args(Choice)


def factory(choice: Choice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A loop factory for ``asyncio.Runner``; None means asyncio's own.

    "auto" is uvloop when it can be imported; "uvloop" raises ImportError when it cannot.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 (optional)
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop
