"""Clocks for the simulator: a virtual one for backtests and tests, where time moves only when
someone sleeps or jumps it, and the host's wall clock for serving in real time.

The simulator itself reads `now()` (the true time of the simulated world). A VirtualClock also
offers what the daemon's clock offers (`monotonic`, `wall`, `sleep`, `gather`, `spawn`), so
the daemon can run on it in a backtest; its `wall()` can be stepped away from the true time,
as NTP or an operator steps a host's system clock.
"""
from __future__ import annotations

import time
from typing import Callable, Protocol, Sequence, TypeVar

T = TypeVar("T")

__all__ = ["Clock", "VirtualClock", "WallClock"]


class Clock(Protocol):
    """What the simulator needs of time: now (Unix seconds) and sleep."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class WallClock:
    """The host's time, for a simulator serving real clients in real time."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """Time that moves only when slept or jumped; sleeping never blocks."""

    def __init__(self, start: float) -> None:
        self._now = float(start)
        self._wall_error_s = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        """The host's system clock as the daemon reads it: true time plus any step."""
        return self._now + self._wall_error_s

    def step_wall(self, seconds: float) -> None:
        """Fault: the host's system clock steps by `seconds` (negative = back); monotonic time
        and the simulated world's time do not move."""
        self._wall_error_s += seconds

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

    def spawn(self, call: Callable[[], None]) -> None:
        """A background task runs at once here: virtual time has no other thread to run it."""
        call()
