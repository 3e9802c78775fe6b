"""A virtual clock for backtests and tests: time moves only when someone sleeps or jumps it."""
from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """What the simulator needs of a clock; standx_auth.RealClock and VirtualClock both fit."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class VirtualClock:
    """Same interface as standx_auth.RealClock (now, sleep), but sleeping never blocks."""

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
