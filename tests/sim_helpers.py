"""Helpers for the simulator tests: a quiet simulator and a small StandX signing client.

The client does what the contract asks of a real one (EIP-191 login, Ed25519 body signatures,
decimal strings), so tests talk to the simulator the way the daemon will.
"""
from __future__ import annotations

import base64
import json
import uuid
from decimal import Decimal

import base58
import requests
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.signing import SigningKey

from standx_sim import SimServer, Simulator, SyntheticMarket, VirtualClock
from standx_sim.clock import WallClock

BASE_URL = "http://standx.sim"
START_TS = 1_767_657_600.0  # 2026-01-06 00:00 UTC
# A flat book 94999.9 / 95000.1: mark 95000.0; 10 bps of the mark is 95.0.
FLAT_BID, FLAT_ASK, FLAT_MARK = Decimal("94999.9"), Decimal("95000.1"), Decimal("95000.0")


# What tests of one mechanic fix, so that another cannot blur it: every order and cancel takes
# 0.2 s, any touch fills a whole order, the mark is the rounded mid at once, no rate limits.
FIXED_MECHANICS = {"visibility_delay_s": 0.2, "queue": False, "mark": "mid", "rate_limits": None}


def flat_market() -> SyntheticMarket:
    """A market that never moves unless a test moves it: 94999.9 / 95000.1."""
    return SyntheticMarket(start_ts=START_TS, start_price=FLAT_MARK, volatility_bps_per_sqrt_s=0,
                           spread_usd=(Decimal("0.2"), Decimal("0.2")))


def flat_sim(**kwargs) -> Simulator:
    """A simulator on a virtual clock over a flat market, for tests of one mechanic: the simple
    timing, fills and mark of FIXED_MECHANICS unless a test asks otherwise."""
    return Simulator(VirtualClock(START_TS), flat_market(), **{**FIXED_MECHANICS, **kwargs})


def realistic_flat_sim(**kwargs) -> Simulator:
    """A simulator on a virtual clock over a flat market with the simulator's realistic defaults
    (random visibility delays with their tail, queue position, StandX's lagging mark, rate
    limits): what the daemon's end-to-end tests run against."""
    return Simulator(VirtualClock(START_TS), flat_market(), **kwargs)


def served_quiet_sim() -> tuple[Simulator, SimServer, str]:
    """A simulator served in real time on a free loopback port (its streams on the same port):
    a flat market that moves only when a test moves it, orders visible after 50 ms, the mark the
    mid at once, no rate limits. The simulator, its server (stop it) and its URL."""
    clock = WallClock()
    market = SyntheticMarket(start_ts=clock.now(), volatility_bps_per_sqrt_s=0,
                             spread_usd=(Decimal("0.2"), Decimal("0.2")))
    sim = Simulator(clock, market, visibility_delay_s=0.05, queue=False, mark="mid", rate_limits=None)
    server = SimServer(sim)
    return sim, server, server.start()


def jwt_payload(token: str) -> dict:
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def compact(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"))


class SimClient:
    """A StandX client over any requests Session (in-process adapter or real HTTP)."""

    def __init__(self, http: requests.Session, clock, base_url: str, wallet=None) -> None:
        self.http = http
        self.clock = clock
        self.base = base_url
        self.wallet = wallet or Account.create()
        self.key = SigningKey.generate()
        self.request_id = base58.b58encode(bytes(self.key.verify_key)).decode()
        self.token: str | None = None

    @property
    def address(self) -> str:
        return self.wallet.address

    # ---- login ------------------------------------------------------------------------

    def prepare(self) -> requests.Response:
        return self.http.post(f"{self.base}/v1/offchain/prepare-signin", params={"chain": "bsc"},
                              data=compact({"address": self.address, "requestId": self.request_id}))

    def sign_message(self, signed_data: str, wallet=None) -> str:
        message = jwt_payload(signed_data)["message"]
        signature = (wallet or self.wallet).sign_message(encode_defunct(text=message)).signature.hex()
        return signature if signature.startswith("0x") else "0x" + signature

    def send_login(self, signature: str, signed_data: str, **extra) -> requests.Response:
        return self.http.post(f"{self.base}/v1/offchain/login", params={"chain": "bsc"},
                              data=compact({"signature": signature, "signedData": signed_data, **extra}))

    def login(self) -> str:
        signed_data = self.prepare().json()["signedData"]
        response = self.send_login(self.sign_message(signed_data), signed_data)
        assert response.status_code == 200, response.text
        self.token = response.json()["token"]
        return self.token

    # ---- requests ---------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params) -> requests.Response:
        return self.http.get(f"{self.base}{path}", params=params, headers=self.auth_headers())

    def signature_headers(self, body: str, *, key: SigningKey | None = None, ts_ms: int | None = None) -> dict:
        request_id = str(uuid.uuid4())
        ts = str(ts_ms if ts_ms is not None else int(self.clock.now() * 1000))
        signature = (key or self.key).sign(f"v1,{request_id},{ts},{body}".encode()).signature
        return {"x-request-sign-version": "v1", "x-request-id": request_id, "x-request-timestamp": ts,
                "x-request-signature": base64.b64encode(signature).decode(), "Content-Type": "application/json"}

    def post_signed(self, path: str, payload: dict | str, *, sent_body: str | None = None,
                    key: SigningKey | None = None, ts_ms: int | None = None, timeout=None) -> requests.Response:
        """POST a signed body; sent_body lets a test send something other than what was signed."""
        body = payload if isinstance(payload, str) else compact(payload)
        headers = {**self.auth_headers(), **self.signature_headers(body, key=key, ts_ms=ts_ms)}
        return self.http.post(f"{self.base}{path}", data=sent_body if sent_body is not None else body,
                              headers=headers, timeout=timeout)

    # ---- orders -----------------------------------------------------------------------

    def order_payload(self, **fields) -> dict:
        payload = {"symbol": "BTC-USD", "side": "buy", "order_type": "limit", "qty": "0.0010",
                   "price": "94990.0", "time_in_force": "alo", "reduce_only": False,
                   "cl_ord_id": f"t-{uuid.uuid4().hex[:12]}"}
        payload.update(fields)
        return {k: v for k, v in payload.items() if v is not None}  # None drops a default field

    def new_order(self, **fields) -> requests.Response:
        return self.post_signed("/api/new_order", self.order_payload(**fields))

    def market_order(self, side: str, qty: str, **fields) -> requests.Response:
        return self.new_order(side=side, qty=qty, order_type="market", time_in_force="ioc", price=None, **fields)

    def open_orders(self) -> list[dict]:
        response = self.get("/api/query_open_orders", symbol="BTC-USD")
        assert response.status_code == 200, response.text
        return response.json()["result"]

    def order(self, cl_ord_id: str) -> requests.Response:
        return self.get("/api/query_order", cl_ord_id=cl_ord_id)

    def position_qty(self) -> Decimal:
        rows = self.get("/api/query_positions", symbol="BTC-USD").json()
        return Decimal(rows[0]["qty"]) if rows else Decimal(0)

    def balance(self) -> Decimal:
        return Decimal(self.get("/api/query_balance").json()["balance"])


def in_process_client(sim: Simulator, latency_s: float = 0.0, login: bool = True) -> SimClient:
    session = requests.Session()
    session.mount(BASE_URL, sim.adapter(latency_s))
    client = SimClient(session, sim.clock, BASE_URL)
    if login:
        client.login()
    return client


def trade_through(sim: Simulator, order, qty: Decimal) -> None:
    """A taker sweeps through a resting order of ours: a print one tick beyond its price, so the
    whole level traded and the queue ahead of the order cannot hold it back (a print AT its price
    fills it only once the volume ahead has traded; see the fill model in exchange.py)."""
    tick = sim.exchange.spec.tick
    if order.side == "buy":
        sim.exchange.add_trade(order.price - tick, qty, "sell")
    else:
        sim.exchange.add_trade(order.price + tick, qty, "buy")
