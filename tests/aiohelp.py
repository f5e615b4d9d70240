"""Small helpers shared by the tests that run real sockets under asyncio (tests only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

STEP = 10.0
"""Timeout of one await that should complete (tests that assert promptness pass less)."""
TEST_TIMEOUT = 25.0
"""Timeout of a whole test body, seconds."""


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    """Run one test body in a fresh event loop, failing it if it takes too long."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def step(aw: Awaitable[T], timeout: float = STEP) -> T:
    """Await ``aw``, failing the test (TimeoutError) if it takes over ``timeout``."""
    return await asyncio.wait_for(aw, timeout)


async def wait_until(pred: Callable[[], bool], timeout: float = STEP, what: str = "",
                     poll: float = 0.002) -> None:
    """Poll ``pred`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or pred}")
        await asyncio.sleep(poll)
