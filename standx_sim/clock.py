"""A virtual clock for backtests and tests: time moves only when someone sleeps or jumps it."""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from standx_auth import Clock

T = TypeVar("T")

__all__ = ["Clock", "VirtualClock"]


class VirtualClock:
    """Same interface as standx_auth.RealClock (now, sleep, gather), but sleeping never blocks."""

    def __init__(self, start: float) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds

    def advance_to(self, t: float) -> None:
        """Jump forward to unix time t; time never runs backwards, so an earlier t is refused."""
        if t < self._now:
            raise ValueError(f"cannot move a clock back from {self._now} to {t}")
        self._now = float(t)

    def gather(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Calls that overlap in time: each starts at the same moment, and the clock ends at the
        latest finish. They run one after the other here, so with the in-process transport each
        single request reaches the exchange at the same virtual time as it would concurrently."""
        start = self._now
        finish = start
        results = []
        try:
            for call in calls:
                self._now = start
                results.append(call())
                finish = max(finish, self._now)
        finally:
            self._now = max(finish, self._now)
        return results
