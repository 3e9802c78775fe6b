"""Fault injection: rules that make the simulated exchange (or a proxy in front of it) misbehave.

A rule applies to one request path (or to all paths), fires with a probability drawn from a
seeded RNG, at most ``count`` times, within a time window of the clock. The first active rule
that fires decides the fault of a request. Kinds:

- ``error``: a JSON 5xx answer (``status``, default 500); the request is not processed.
- ``html``: an HTML error page as a proxy sends it (``status``, default 502; 504 too).
- ``malformed``: HTTP 200 with a truncated JSON body; the request is not processed.
- ``rate_limit``: HTTP 429 with ``Retry-After: retry_after_s``; not processed.
- ``drop``: the connection is dropped before the request reaches the exchange.
- ``stall``: the request is processed, then the answer is held ``stall_s`` seconds.
- ``slow_headers``: the request is processed, then the status line and headers trickle in a
  few bytes at a time over ``stall_s`` seconds, so no single read waits long (a per-read
  timeout never fires) but the whole answer takes ``stall_s``.
- ``accept_then_504``: the request is processed, then a 504 HTML page is returned, so the
  client cannot tell whether it happened.
- ``body``: HTTP 200 with the rule's ``body`` (any JSON value) instead of the real answer, for
  answers with missing fields or null prices; the request is not processed.
- ``foreign_signin``: prepare-signin answers a sign-in message for another wallet
  (FOREIGN_ADDRESS), which a client must refuse to sign.

``drop``, ``stall`` and ``slow_headers`` need the transport: the handler marks its answer with
the headers DROP_HEADER / STALL_HEADER / SLOW_HEADERS_HEADER, which the in-process adapter and
the HTTP server act on and strip. Faults of the exchange itself are switched on the Simulator:
token expiry and lifetime, clock skew, order visibility delay, position answers that lag fills,
compression on or off (expire_tokens, set_max_token_lifetime, set_clock_skew,
set_visibility_delay, set_position_lag, set_compress); partial fills are Exchange.fill_resting.
Faults of the WebSocket streams (drops, normal closes, silences, paused market data, garbage
frames, limits) are methods of the streams' hub, ``sim.streams`` (streams.py).
"""
from __future__ import annotations

import base64
import itertools
import json
import logging
import math
import random
from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .wire import Response, error_response, rate_limited_response

log = logging.getLogger(__name__)

STALL_HEADER = "X-Sim-Stall-Seconds"
SLOW_HEADERS_HEADER = "X-Sim-Slow-Headers-Seconds"
DROP_HEADER = "X-Sim-Drop-Connection"
KINDS = ("error", "html", "malformed", "rate_limit", "drop", "stall", "slow_headers", "accept_then_504", "body",
         "foreign_signin")
# The request reaches the exchange before the fault.
PROCESSED_KINDS = ("stall", "slow_headers", "accept_then_504", "foreign_signin")
FOREIGN_ADDRESS = "0x000000000000000000000000000000000000dEaD"
DEFAULT_STATUS = {"error": 500, "html": 502, "accept_then_504": 504}


@dataclass
class FaultRule:
    id: int
    kind: str
    path: str | None  # None = every path
    probability: float
    remaining: float  # firings left; math.inf = unlimited
    start: float  # clock seconds
    end: float
    status: int
    retry_after_s: int
    stall_s: float
    body: Any = None

    def matches(self, path: str, now: float) -> bool:
        return (self.path is None or self.path == path) and self.start <= now < self.end and self.remaining > 0


def html_page(status: int) -> Response:
    title = {502: "502 Bad Gateway", 503: "503 Service Temporarily Unavailable", 504: "504 Gateway Time-out"}.get(
        status, f"{status} Error")
    page = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
            f"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    return status, {"Content-Type": "text/html"}, page.encode()


class Faults:
    """The active fault rules; see the module docstring."""

    def __init__(self, clock: Clock, seed: int = 0) -> None:
        self._clock = clock
        self._rng = random.Random(seed)
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)

    def add(self, kind: str, *, path: str | None = None, probability: float = 1.0, count: int | None = None,
            after_s: float = 0.0, for_s: float | None = None, status: int | None = None,
            retry_after_s: int = 1, stall_s: float = 5.0, body: Any = None) -> int:
        """Add a rule active from now + after_s for for_s seconds (None = forever); returns its id."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        if status is not None and (kind not in ("error", "html") or not 500 <= status <= 599):
            raise ValueError("status is a 5xx and only for the error and html kinds")
        status = DEFAULT_STATUS.get(kind, 0) if status is None else status
        if retry_after_s < 0 or stall_s < 0:
            raise ValueError("retry_after_s and stall_s must be >= 0")
        start = self._clock.now() + after_s
        rule = FaultRule(next(self._ids), kind, path, probability, math.inf if count is None else count,
                         start, math.inf if for_s is None else start + for_s, status, retry_after_s, stall_s,
                         body)
        self._rules.append(rule)
        log.info("fault rule %d added: %s on %s", rule.id, kind, path or "every path")
        return rule.id

    def clear(self) -> None:
        self._rules.clear()

    def pick(self, path: str) -> FaultRule | None:
        """The rule that fires for this request, if any (its count is used up by one)."""
        now = self._clock.now()
        for rule in self._rules:
            if not rule.matches(path, now):
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            rule.remaining -= 1
            log.debug("fault %s fires on %s", rule.kind, path)
            return rule
        return None


def response_before_processing(rule: FaultRule) -> Response:
    """The answer of a fault that stops the request before the exchange sees it."""
    if rule.kind == "error":
        return error_response(rule.status, "internal server error" if rule.status == 500 else "service unavailable")
    if rule.kind == "html":
        return html_page(rule.status)
    if rule.kind == "malformed":
        return 200, {"Content-Type": "application/json"}, b'{"code":0,"message":"succ'
    if rule.kind == "rate_limit":
        return rate_limited_response(rule.retry_after_s)
    if rule.kind == "body":
        return 200, {"Content-Type": "application/json"}, json.dumps(rule.body).encode()
    return 502, {DROP_HEADER: "1"}, b""  # drop: a transport closes the connection instead


def response_after_processing(rule: FaultRule, response: Response) -> Response:
    """The answer of a fault that lets the request through first."""
    if rule.kind == "accept_then_504":
        return html_page(rule.status)
    if rule.kind == "foreign_signin":
        return _signin_for_another_wallet(response)
    marker = STALL_HEADER if rule.kind == "stall" else SLOW_HEADERS_HEADER
    status, headers, body = response
    return status, {**headers, marker: str(rule.stall_s)}, body


def _signin_for_another_wallet(response: Response) -> Response:
    """The same prepare-signin answer, its JWT payload rewritten for FOREIGN_ADDRESS."""
    status, headers, body = response
    answer = json.loads(body)
    if status != 200 or "signedData" not in answer:
        return response
    head, payload_b64, signature = answer["signedData"].split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    payload["message"] = payload["message"].replace(payload["address"], FOREIGN_ADDRESS)
    payload["address"] = FOREIGN_ADDRESS
    rewritten = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    answer["signedData"] = f"{head}.{rewritten}.{signature}"
    return status, headers, json.dumps(answer).encode()
