"""StandX's request rate limits (standx_api.md section 5, D-RATE), as the gateway in front of the
exchange applies them before a request reaches the engine.

Per account (user address): a token bucket holding ``burst_credits`` (900) credits, refilled at
``refill_credits_per_s`` (1,000/s); each request costs ``credits_per_request`` (45). So 20
requests at once pass and about 22/s can go on for ever.

Per client IP, across accounts, "50 requests/s" is modelled as a token bucket too: each request
costs 1, the bucket holds ``ip_burst_requests`` (50) and refills at ``ip_requests_per_s`` (50/s).
A fixed one-second window would let 100 requests through around a window's edge; the bucket
never lets more than 50 + 50/s * t through in any t seconds, and it behaves like the account's.

A request counts on its IP's bucket always, and on its account's bucket when it has one (the
caller decides which account that is). It passes only if both buckets have credit. A refused
request takes nothing from either: StandX's page does not say, and this is what common gateways
do (nginx's limit_req does not charge a rejected request); it is also the gentler model: a
client that keeps trying through its 429s is let in again as soon as credit refills.

Retry-After: the seconds until both buckets have credit for one more request, rounded up to
whole seconds, since HTTP's delay-seconds is an integer (RFC 9110, 10.2.3). A refused request
takes nothing, so the exact wait is at most one request's cost over the refill rate (45 ms on
an account, 20 ms on an IP with the defaults): in practice the header says 1.

Pure: every time is passed in by the caller (the engine's clock), never read here. Times are
counted in whole microseconds, so that float timestamps near 1.7e9 s (which have a resolution
of ~0.2 microseconds) refill exact credit amounts: 45 ms refills exactly 45 credits.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger(__name__)

MICROS_PER_S = 1_000_000
# The client address of a caller that has none (in-process): the loopback interface.
LOCAL_CLIENT = "127.0.0.1"
IP_REQUEST_COST = 1


@dataclass(frozen=True)
class RateLimitParams:
    """The limits; the defaults are StandX's documented ones (module docstring)."""

    credits_per_request: float = 45.0
    refill_credits_per_s: float = 1000.0
    burst_credits: float = 900.0
    ip_requests_per_s: float = 50.0
    ip_burst_requests: float = 50.0

    def __post_init__(self) -> None:
        if min(self.credits_per_request, self.refill_credits_per_s, self.ip_requests_per_s) <= 0:
            raise ValueError("request costs and refill rates must be > 0")
        # A bucket smaller than one request would refuse everything for ever.
        if self.burst_credits < self.credits_per_request or self.ip_burst_requests < IP_REQUEST_COST:
            raise ValueError("a burst must hold at least one request")


DEFAULT_RATE_LIMITS = RateLimitParams()


class TokenBucket:
    """Credit up to `capacity`, refilled continuously at `refill_per_s`; starts full at t_us."""

    def __init__(self, capacity: float, refill_per_s: float, t_us: int) -> None:
        self._capacity = capacity
        self._refill_per_s = refill_per_s
        self._credit = capacity
        self._t_us = t_us

    def wait_s(self, t_us: int, cost: float) -> float:
        """Seconds from t_us until `cost` credits are there (0: now)."""
        self._refill(t_us)
        return max(0.0, (cost - self._credit) / self._refill_per_s)

    def take(self, cost: float) -> None:
        self._credit -= cost

    def _refill(self, t_us: int) -> None:
        # A request stamped before the last one refills nothing: in virtual time the calls of a
        # gather start at the same moment one after the other, and a wall clock can step back.
        if t_us <= self._t_us:
            return
        # Multiplying before dividing keeps whole-credit refills exact.
        self._credit = min(self._capacity, self._credit + (t_us - self._t_us) * self._refill_per_s / MICROS_PER_S)
        self._t_us = t_us


class RateLimits:
    """The buckets of every account and client IP seen so far; see the module docstring."""

    def __init__(self, params: RateLimitParams = DEFAULT_RATE_LIMITS) -> None:
        self.params = params
        self._accounts: dict[str, TokenBucket] = {}
        self._ips: dict[str, TokenBucket] = {}

    def admit(self, t: float, address: str | None, ip: str) -> float | None:
        """A request at time t (Unix seconds) from `ip`, on `address`'s account (None: no
        account). None if it passes (its credits are taken), else the seconds until it would
        pass (nothing is taken)."""
        t_us = round(t * MICROS_PER_S)
        charges = [(self._ip_bucket(ip, t_us), IP_REQUEST_COST)]
        if address is not None:
            charges.append((self._account_bucket(address, t_us), self.params.credits_per_request))
        wait_s = max(bucket.wait_s(t_us, cost) for bucket, cost in charges)
        if wait_s > 0:
            log.debug("rate limited: %s from %s for %.3f s", address or "a request", ip, wait_s)
            return wait_s
        for bucket, cost in charges:
            bucket.take(cost)
        return None

    def _ip_bucket(self, ip: str, t_us: int) -> TokenBucket:
        return _bucket_of(self._ips, ip, self.params.ip_burst_requests, self.params.ip_requests_per_s, t_us)

    def _account_bucket(self, address: str, t_us: int) -> TokenBucket:
        return _bucket_of(self._accounts, address, self.params.burst_credits, self.params.refill_credits_per_s, t_us)


def _bucket_of(buckets: dict[str, TokenBucket], key: str, capacity: float, refill_per_s: float,
               t_us: int) -> TokenBucket:
    """key's bucket; a key seen for the first time starts with a full one."""
    if key not in buckets:
        buckets[key] = TokenBucket(capacity, refill_per_s, t_us)
    return buckets[key]


def retry_after_s(wait_s: float) -> int:
    """The Retry-After header's whole seconds for an exact wait: rounded up, at least 1."""
    return max(1, math.ceil(wait_s))
