"""Waiting in tests for what arrives when it arrives (a notification, a background loop's
turn): a limit on a failure, never a timing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

WAIT_SECONDS = 20.0
"""How long a notification or a loop's turn may take on a loaded machine, at most."""


async def eventually(
    condition: Callable[[], bool], what: str, seconds: float = WAIT_SECONDS
) -> None:
    """Wait until ``condition`` holds; AssertionError naming ``what`` after ``seconds``."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    while not condition():
        if loop.time() > give_up:
            raise AssertionError(f"{what}: not within {seconds} s")
        await asyncio.sleep(0.01)
