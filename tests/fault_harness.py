"""Runs the real daemon against the simulator in virtual time and records what it did, for the
fault suite: every request (time, path, status, body), every secret the client held or sent,
the loops whose reads failed and the loops that made a quoting decision, and the logs."""
from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable

import base58
import requests

import market_maker as mm
import standx_auth
from standx_auth import StandXAuth
from standx_sim import Simulator, SyntheticMarket, VirtualClock
from standx_sim.exchange import PENDING, RESTING
from standx_sim.simulate import throwaway_key
from standx_sim.streams import VirtualFeed
from standx_ws import FeedStreams
from standx_sim.transport import InProcessAdapter
from standx_sim.wire import decompress

BASE_URL = "http://standx.sim"
START_TS = 1_767_657_600.0
LATENCY_S = 0.05
FEED_LATENCY_S = 0.05
QTY = Decimal("0.005")
# A quote on the side that grows a position is a fault only once the daemon could have seen
# that position: a loop, the round trips, and any lag the position answers are given.
SEE_POSITION_S = 0.5 + 4 * LATENCY_S + 0.2
DECISION_READS = ("_read_position", "_read_market", "_read_open_orders")

Action = Callable[["Run"], None]


@dataclass
class Request:
    t: float
    path: str
    status: int
    body: dict[str, Any]


@dataclass
class Run:
    sim: Simulator
    maker: mm.MarketMaker
    key: str
    requests: list[Request] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    failed_read_loops: set[int] = field(default_factory=set)
    decision_loops: set[int] = field(default_factory=set)
    sides_before_stop: list[str] = field(default_factory=list)
    max_abs_position: Decimal = Decimal(0)
    # Quotes sent on the side a position had grown for longer than the daemon needs to see it.
    growing_quotes: list[Request] = field(default_factory=list)
    position_lag_s: float = 0.0
    position_side: tuple[int, float] = (0, START_TS)  # the position's sign, and since when
    stop_requested_at: float | None = None
    code: int | None = None
    ended_at: float = 0.0
    logs: str = ""

    @property
    def clock(self) -> VirtualClock:
        return self.sim.clock

    @property
    def address(self) -> str:
        return self.maker.auth.address.lower()

    def t(self, seconds: float) -> float:
        """Virtual time `seconds` after the start."""
        return START_TS + seconds

    def metrics(self) -> dict[str, Any]:
        return self.sim.exchange.metrics(self.address)

    def sent(self, path: str, since: float = 0.0, until: float = float("inf")) -> list[Request]:
        return [r for r in self.requests if r.path == path and since <= r.t < until]

    def our_resting(self) -> list:
        return self.sim.exchange.open_orders(self.address)

    def our_working_sides(self) -> list[str]:
        """The sides of our orders resting or accepted and about to rest (mid-requote)."""
        orders = self.sim.exchange.account(self.address).orders.values()
        return sorted({o.side for o in orders if o.status in (*RESTING, PENDING) and o.order_type == "limit"})

    def our_resting_buy(self):
        return next(o for o in self.our_resting() if o.side == "buy")


def flat_market() -> SyntheticMarket:
    return SyntheticMarket(start_ts=START_TS, start_price=Decimal("95000"), volatility_bps_per_sqrt_s=0,
                           spread_usd=(Decimal("0.2"), Decimal("0.2")))


def moving_market() -> SyntheticMarket:
    return SyntheticMarket(seed=7, start_ts=START_TS, start_price=Decimal("95000"), volatility_bps_per_sqrt_s=0.5)


def run_daemon(seconds: float, *, setup: Callable[[Run], None] | None = None,
               actions: list[tuple[float, Action]] = (), env: dict[str, str] | None = None,
               market: SyntheticMarket | None = None, monkeypatch=None, mark: str = "standx",
               feed: str = "rest") -> Run:
    """Run the daemon for `seconds` of virtual time (then its clean stop), applying each action
    once the clock passes its time, and return the record. The simulator has its realistic
    defaults; a test that needs a price move to reach the mark at once (to time a requote to the
    moment) passes mark="mid". feed="ws": the daemon also listens to the simulator's streams
    (in virtual time, FEED_LATENCY_S late)."""
    clock = VirtualClock(START_TS)
    sim = Simulator(clock, market or moving_market(), meter_qty=QTY, seed=3, mark=mark)
    key = throwaway_key()
    config = mm.load_config({"WALLET_PRIVATE_KEY": key, "STANDX_AUTH_BASE_URL": BASE_URL,
                             "STANDX_PERPS_BASE_URL": BASE_URL, **(env or {})})
    run = Run(sim, None, key)  # type: ignore[arg-type]
    run.secrets |= {key, key[2:], key[2:].upper(), str(int(key, 16))}
    session = requests.Session()
    session.trust_env = False
    session.mount(BASE_URL, InProcessAdapter(_recording(run), clock, LATENCY_S))
    auth = StandXAuth(config.private_key, auth_base_url=BASE_URL, perps_base_url=BASE_URL,
                      clock=clock, session=session)
    streams = FeedStreams(VirtualFeed(sim, clock, FEED_LATENCY_S), auth, config.symbol, clock) if feed == "ws" else None
    run.maker = mm.MarketMaker(config, auth, clock=clock, streams=streams)
    if monkeypatch is not None:
        _record_signing_keys(run, monkeypatch)
    _instrument(run, sorted(actions, key=lambda a: a[0]))
    if setup:
        setup(run)
    with _captured_logs() as logs:
        run.code = run.maker.run(duration_s=seconds)
        run.ended_at = clock.now()
    run.logs = logs.getvalue()
    return run


def _recording(run: Run):
    """The simulator's handler, recording each request and the secrets it carries."""
    def handle(method, path, query, headers, body, client):
        # One daemon at the adapter's default address, which sim.handle defaults to as well: the
        # tests that wrap sim.handle do so with its five-argument call, so `client` stays here.
        _watch_position(run, path, _json(body))
        status, out_headers, out_body = run.sim.handle(method, path, query, headers, body)
        lowered = {k.lower(): v for k, v in headers.items()}
        if lowered.get("authorization"):
            run.secrets.add(lowered["authorization"].split(" ", 1)[-1])
        if lowered.get("x-request-signature"):
            run.secrets.add(lowered["x-request-signature"])
        payload = _json(body)
        if path == "/v1/offchain/login" and isinstance(payload, dict):
            run.secrets.add(str(payload.get("signature")))
        answer = _json(decompress(out_body, out_headers.get("Content-Encoding")))
        if path == "/v1/offchain/login" and isinstance(answer, dict) and answer.get("token"):
            run.secrets.add(answer["token"])
        run.requests.append(Request(run.clock.now(), path, status, payload if isinstance(payload, dict) else {}))
        return status, out_headers, out_body
    return handle


def _watch_position(run: Run, path: str, order: Any) -> None:
    """Before each request: the largest position so far, and whether a quote goes out on the
    side that grows a position the daemon has had time to see."""
    position = run.sim.exchange.position(run.maker.auth.address)
    qty = position.qty if position is not None else Decimal(0)
    run.max_abs_position = max(run.max_abs_position, abs(qty))
    sign = (qty > 0) - (qty < 0)
    if sign != run.position_side[0]:
        run.position_side = (sign, run.clock.now())
    if path == "/api/new_order" and isinstance(order, dict) and order.get("order_type") == "limit":
        grows = (sign > 0 and order.get("side") == "buy") or (sign < 0 and order.get("side") == "sell")
        if grows and run.clock.now() - run.position_side[1] > SEE_POSITION_S + run.position_lag_s:
            run.growing_quotes.append(Request(run.clock.now(), path, 0, order))


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return None


def _record_signing_keys(run: Run, monkeypatch) -> None:
    generate = standx_auth.SigningKey.generate

    def recording_generate():
        key = generate()
        seed = bytes(key)
        run.secrets |= {seed.hex(), base58.b58encode(seed).decode(), base64.b64encode(seed).decode()}
        return key
    monkeypatch.setattr(standx_auth.SigningKey, "generate", staticmethod(recording_generate))


def _instrument(run: Run, actions: list[tuple[float, Action]]) -> None:
    """Wrap the daemon's loop: actions at their times, failed reads and decisions per loop."""
    maker = run.maker
    pending = list(actions)
    run_once, requote, shutdown, request_stop = maker.run_once, maker.requote, maker.shutdown, maker.request_stop

    def instrumented_run_once(regular=True):
        while pending and maker.clock.now() >= run.t(pending[0][0]):
            pending.pop(0)[1](run)
        run_once(regular)

    def recording_requote(market):
        run.decision_loops.add(maker.iteration)
        requote(market)

    def snapshot_then_shutdown():
        run.sides_before_stop = run.our_working_sides()
        return shutdown()

    def timed_request_stop(reason="stop requested"):
        if run.stop_requested_at is None:
            run.stop_requested_at = maker.clock.now()
        request_stop(reason)

    for name in DECISION_READS:
        read = getattr(maker, name)

        def recording_read(read=read):
            value = read()
            if value is None:
                run.failed_read_loops.add(maker.iteration)
            return value
        setattr(maker, name, recording_read)
    maker.run_once = instrumented_run_once
    maker.requote = recording_requote
    maker.shutdown = snapshot_then_shutdown
    maker.request_stop = timed_request_stop


class _captured_logs:
    """Every log record of the run, at DEBUG, as text."""

    def __enter__(self) -> io.StringIO:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.root = logging.getLogger()
        self.level = self.root.level
        self.root.addHandler(self.handler)
        self.root.setLevel(logging.DEBUG)
        return self.stream

    def __exit__(self, *exc_info: Any) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.level)


def assert_nothing_lost(run: Run, code: int = mm.EXIT_OK, double_s: float = 1.0) -> None:
    """What every fault must leave true: the expected exit, no order of ours left, no position,
    no duplicate on a side, no order sent twice, no decision on a failed read, no secret shown."""
    metrics = run.metrics()
    assert run.code == code, run.logs[-3000:]
    assert run.our_resting() == []
    assert metrics["position_qty"] == 0
    assert max(metrics["max_double_s"].values()) <= double_s, metrics["max_double_s"]
    sent_ids = [r.body.get("cl_ord_id") for r in run.requests if r.path == "/api/new_order"]
    assert len(sent_ids) == len(set(sent_ids)), "an order was sent twice"
    assert max(metrics["max_live_orders"].values()) <= 2, metrics["max_live_orders"]
    assert run.max_abs_position <= QTY, f"position reached {run.max_abs_position}"
    assert run.growing_quotes == [], "a quote went out on the side that grows the position"
    assert not run.decision_loops & run.failed_read_loops, "a decision was made on a failed read"
    assert_no_secret(run)


def assert_no_secret(run: Run) -> None:
    shown = "\n".join([run.logs, repr(run.maker.auth), repr(run.maker.config), repr(run.maker)])
    leaked = [s for s in run.secrets if s and s != "None" and s in shown]
    assert not leaked, "a secret appears in the output"
    assert "Traceback" not in run.logs


def assert_nothing_arrives_late(run: Run) -> None:
    """No order of ours was still on its way when the daemon said it stopped clean: ten
    seconds later the exchange still shows none. Run last: it moves the clock on."""
    run.clock.sleep(10)
    assert run.our_resting() == [], "an order of ours appeared after the stop"
