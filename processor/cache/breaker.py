"""The account cache's circuit breaker: Redis failures absorbed, counted, logged sparingly.

Redis is an accelerator, never a dependency: every failure of a call (refused, timed out,
cluster down, the operation deadline passed) makes the call give its fallback (a miss for a
read, nothing for a write), counts in ``errors_total`` and is logged at most once per
``error_log_interval_seconds``. After ``errors_max`` failures in a row the breaker opens:
for ``cooldown_seconds`` calls are not tried at all (counted in ``skipped_total``); then the
next call is tried, and one success closes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from redis.exceptions import RedisClusterException, RedisError

log = logging.getLogger("processor.cache.accounts")

ERRORS_MAX: Final = 5
COOLDOWN_SECONDS: Final = 5.0
ERROR_LOG_INTERVAL_SECONDS: Final = 30.0

# What a failing Redis raises through redis-py: its own errors (connection, timeout,
# cluster down, server replies), cluster discovery failures, socket errors, our deadline.
REDIS_FAILURES: Final[tuple[type[BaseException], ...]] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)

_T = TypeVar("_T")


class CircuitBreaker:
    """Runs calls to Redis under a deadline; see the module docstring."""

    def __init__(
        self,
        *,
        operation_timeout_seconds: float,
        errors_max: int = ERRORS_MAX,
        cooldown_seconds: float = COOLDOWN_SECONDS,
        error_log_interval_seconds: float = ERROR_LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if operation_timeout_seconds <= 0 or cooldown_seconds < 0:
            raise ValueError("timeouts must be positive and the cool-down not negative")
        if errors_max < 1:
            raise ValueError(f"circuit_errors_max must be >= 1, got {errors_max}")
        self.operation_timeout_seconds = operation_timeout_seconds
        self._errors_max = errors_max
        self._cooldown_seconds = cooldown_seconds
        self._error_log_interval_seconds = error_log_interval_seconds
        self._clock = clock
        self._errors_in_row = 0
        self._open_until = 0.0
        self._last_error_log = -float("inf")
        self._errors_unlogged = 0
        # Counters for metrics: read them, never reset them.
        self.errors_total = 0
        self.skipped_total = 0

    @property
    def open(self) -> bool:
        """True while Redis is being skipped after repeated errors."""
        return self._clock() < self._open_until

    async def call(self, operation: str, call: Callable[[], Awaitable[_T]], fallback: _T) -> _T:
        """Run ``call`` against Redis unless the circuit is open; failures give ``fallback``."""
        if self.open:
            self.skipped_total += 1
            return fallback
        try:
            async with asyncio.timeout(self.operation_timeout_seconds):
                result = await call()
        except REDIS_FAILURES as error:
            self.record_error(operation, error)
            return fallback
        self.record_success()
        return result

    def record_error(self, operation: str, error: BaseException) -> None:
        now = self._clock()
        self.errors_total += 1
        self._errors_in_row += 1
        self._errors_unlogged += 1
        if self._errors_in_row >= self._errors_max:
            # Also re-opens at once when the first call after a cool-down fails.
            if self._open_until == 0.0:
                log.warning(
                    "redis cache: %d errors in a row, skipping Redis for %.1fs",
                    self._errors_in_row,
                    self._cooldown_seconds,
                )
            self._open_until = now + self._cooldown_seconds
        if now - self._last_error_log >= self._error_log_interval_seconds:
            log.warning(
                "redis cache %s failed (%d errors since the last report), serving from "
                "PostgreSQL: %s: %s",
                operation,
                self._errors_unlogged,
                type(error).__name__,
                error,
            )
            self._last_error_log = now
            self._errors_unlogged = 0

    def record_success(self) -> None:
        if self._open_until != 0.0:
            log.warning("redis cache: Redis answers again, circuit closed")
        self._errors_in_row = 0
        self._open_until = 0.0
