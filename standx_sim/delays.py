"""How long StandX takes to act on an accepted order or cancel, and how often matching rejects an
accepted order.

StandX answers new_order and cancel_order at once and acts later: most orders show up within a
few hundred ms, some take over a second, rarely over 3 s; a few accepted orders are then
rejected in matching. The model (StandXTiming), one draw per order or cancel, in request order,
from its own seeded stream:

- Order visibility (ORDER_DELAYS): with probability 4.5 % a tail delay of 1 s plus an exponential
  excess of mean 0.9 s, else a log-normal body of median 0.2 s and log sd 0.6 (its own share
  over 1 s is 0.4 %); at most 6 s. Together: median about 0.21 s, about 5 % over 1 s, about
  0.5 % over 3 s, 0.02 % at the 6 s cap.
- Cancels (CANCEL_DELAYS), shorter (a cancel needs no margin or matching): with probability 1 %
  0.5 s plus an exponential excess of mean 0.5 s, else a log-normal body of median 0.1 s and log
  sd 0.5; at most 3 s. About 1 % over 0.5 s, 0.14 % over 1.5 s.
- Rejection in matching (REJECT_IN_MATCHING_PROBABILITY): 0.2 % of accepted orders are rejected
  when they would have activated, whatever they are.

FixedTiming is the simulator's behaviour before this model: every order and cancel takes the
same delay and matching never rejects, for tests of other mechanics.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import NamedTuple, Protocol

log = logging.getLogger(__name__)

REJECT_IN_MATCHING_PROBABILITY = 0.002


@dataclass(frozen=True)
class DelayDistribution:
    """A log-normal body with a heavy tail, capped: with probability tail_probability the delay is
    tail_start_s + Exp(mean tail_mean_excess_s), else median_s * exp(N(0, log_sd)); at most cap_s."""

    median_s: float
    log_sd: float
    tail_probability: float
    tail_start_s: float
    tail_mean_excess_s: float
    cap_s: float

    def __post_init__(self) -> None:
        if min(self.median_s, self.tail_mean_excess_s, self.cap_s) <= 0 or min(self.log_sd, self.tail_start_s) < 0:
            raise ValueError("delays must be > 0 (the tail start and log sd >= 0)")
        if not 0 <= self.tail_probability <= 1:
            raise ValueError("tail_probability must be between 0 and 1")

    def draw(self, rng: random.Random) -> float:
        if rng.random() < self.tail_probability:
            delay = self.tail_start_s + rng.expovariate(1 / self.tail_mean_excess_s)
        else:
            delay = self.median_s * math.exp(rng.gauss(0.0, self.log_sd))
        return min(delay, self.cap_s)


ORDER_DELAYS = DelayDistribution(median_s=0.2, log_sd=0.6, tail_probability=0.045, tail_start_s=1.0,
                                 tail_mean_excess_s=0.9, cap_s=6.0)
CANCEL_DELAYS = DelayDistribution(median_s=0.1, log_sd=0.5, tail_probability=0.01, tail_start_s=0.5,
                                  tail_mean_excess_s=0.5, cap_s=3.0)


class OrderTiming(NamedTuple):
    delay_s: float  # from acceptance to activation (or to the rejection)
    rejected: bool  # rejected in matching instead of activating


class Timing(Protocol):
    """What the exchange asks for each accepted order and each cancel request."""

    def order(self) -> OrderTiming: ...

    def cancel(self) -> float: ...


class StandXTiming:
    """StandX-like delays and rejections (module docstring), seeded: the same seed and the same
    sequence of requests give the same draws. The stream is derived from the seed, so it does
    not repeat the draws of the synthetic market or the faults seeded alike."""

    def __init__(self, seed: int = 0, orders: DelayDistribution = ORDER_DELAYS,
                 cancels: DelayDistribution = CANCEL_DELAYS,
                 reject_probability: float = REJECT_IN_MATCHING_PROBABILITY) -> None:
        if not 0 <= reject_probability <= 1:
            raise ValueError("reject_probability must be between 0 and 1")
        self._rng = random.Random(f"standx_sim.delays {seed}")
        self._orders = orders
        self._cancels = cancels
        self._reject_probability = reject_probability

    def order(self) -> OrderTiming:
        delay = self._orders.draw(self._rng)
        return OrderTiming(delay, self._rng.random() < self._reject_probability)

    def cancel(self) -> float:
        return self._cancels.draw(self._rng)


class FixedTiming:
    """Every order and cancel takes delay_s; matching rejects nothing for timing's sake."""

    def __init__(self, delay_s: float) -> None:
        if delay_s < 0:
            raise ValueError("the delay must be >= 0 seconds")
        self._delay_s = delay_s

    def order(self) -> OrderTiming:
        return OrderTiming(self._delay_s, False)

    def cancel(self) -> float:
        return self._delay_s
