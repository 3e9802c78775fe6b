"""Fault injection through the in-process adapter (timeouts, slow headers, compression), and the
exchange's own faults: token expiry and lifetime, clock skew, visibility delay, position lag."""
from __future__ import annotations

import email.utils
import gzip
import json
import zlib
from decimal import Decimal

import pytest
import requests
from urllib3.util import Timeout

from standx_sim import wire
from standx_sim.exchange import POSITION_HISTORY_S
from tests.sim_helpers import BASE_URL, START_TS, flat_sim, in_process_client, jwt_payload


def faulty(kind: str, path: str | None = "/api/query_positions", **rule):
    sim = flat_sim()
    client = in_process_client(sim)
    sim.faults.add(kind, path=path, **rule)
    return sim, client


def test_error_fault_answers_a_json_5xx():
    _, client = faulty("error", status=503)
    response = client.get("/api/query_positions")
    assert response.status_code == 503
    assert response.json()["code"] == 503


def test_html_fault_answers_a_proxy_error_page():
    _, client = faulty("html", status=502)
    response = client.get("/api/query_positions")
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<html>" in response.text


def test_malformed_fault_answers_200_with_a_body_that_is_not_json():
    _, client = faulty("malformed")
    response = client.get("/api/query_positions")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)


def test_rate_limit_fault_answers_429_with_retry_after():
    _, client = faulty("rate_limit", retry_after_s=3)
    response = client.get("/api/query_positions")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"


def test_stall_longer_than_the_read_timeout_raises_read_timeout_after_the_timeout():
    sim, client = faulty("stall", stall_s=30)
    before = sim.clock.now()
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.http.get(f"{BASE_URL}/api/query_positions", headers=client.auth_headers(), timeout=(3, 5))
    assert sim.clock.now() - before == 5


def test_stall_shorter_than_the_read_timeout_delays_the_answer():
    sim, client = faulty("stall", stall_s=2)
    before = sim.clock.now()
    response = client.http.get(f"{BASE_URL}/api/query_positions", headers=client.auth_headers(), timeout=5)
    assert response.status_code == 200
    assert sim.clock.now() - before == 2


def test_stalled_order_is_processed_even_though_the_client_timed_out():
    sim, client = faulty("stall", path="/api/new_order", stall_s=30)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.post_signed("/api/new_order", client.order_payload(cl_ord_id="stalled"), timeout=5)
    assert client.order("stalled").json()["status"] == "new"


def test_accept_then_504_processes_the_order_but_answers_504():
    sim, client = faulty("accept_then_504", path="/api/new_order")
    response = client.new_order(cl_ord_id="ghost")
    assert response.status_code == 504
    assert "<html>" in response.text
    sim.clock.sleep(0.25)
    assert client.order("ghost").json()["status"] == "new"


def test_dropped_connection_raises_connection_error_and_is_not_processed():
    sim, client = faulty("drop", path="/api/new_order")
    with pytest.raises(requests.exceptions.ConnectionError):
        client.new_order(cl_ord_id="lost")
    sim.clock.sleep(0.25)
    assert client.order("lost").status_code == 404


def test_fault_fires_only_count_times():
    _, client = faulty("error", count=2)
    statuses = [client.get("/api/query_positions").status_code for _ in range(3)]
    assert statuses == [500, 500, 200]


def test_fault_applies_only_to_its_path():
    _, client = faulty("error")
    assert client.get("/api/query_balance").status_code == 200


def test_fault_without_a_path_applies_to_every_path():
    _, client = faulty("error", path=None)
    assert client.get("/api/query_balance").status_code == 500


def test_fault_applies_only_within_its_time_window():
    sim, client = faulty("error", after_s=10, for_s=5)
    assert client.get("/api/query_positions").status_code == 200
    sim.clock.sleep(11)
    assert client.get("/api/query_positions").status_code == 500
    sim.clock.sleep(5)
    assert client.get("/api/query_positions").status_code == 200


def test_fault_probability_is_reproducible_for_a_seed():
    def pattern() -> list[int]:
        _, client = faulty("error", probability=0.5)
        return [client.get("/api/query_positions").status_code for _ in range(40)]
    first = pattern()
    assert first == pattern()
    assert 5 < first.count(500) < 35


def test_clear_removes_every_fault():
    sim, client = faulty("error")
    sim.faults.clear()
    assert client.get("/api/query_positions").status_code == 200


def test_unknown_fault_kind_is_refused():
    with pytest.raises(ValueError):
        flat_sim().faults.add("explode")


def test_expired_tokens_answer_401_until_the_next_login():
    sim = flat_sim()
    client = in_process_client(sim)
    sim.expire_tokens()
    assert client.get("/api/query_balance").status_code == 401
    client.login()
    assert client.get("/api/query_balance").status_code == 200


def test_clock_skew_makes_a_fresh_signature_expire():
    sim = flat_sim()
    client = in_process_client(sim)
    sim.set_clock_skew(45)
    response = client.new_order()
    assert response.status_code == 403
    assert response.json()["message"] == "signature has expired"


def test_date_header_shows_the_exchange_clock_including_skew():
    sim = flat_sim()
    client = in_process_client(sim)
    sim.set_clock_skew(45)
    response = client.get("/api/query_balance")
    assert email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp() == START_TS + 45


def test_adapter_latency_advances_the_clock():
    sim = flat_sim()
    session = requests.Session()
    session.mount(BASE_URL, sim.adapter(latency_s=0.08))
    before = sim.clock.now()
    response = session.get(f"{BASE_URL}/api/health")
    assert response.status_code == 200 and response.text == "OK"
    assert sim.clock.now() - before == pytest.approx(0.08)


def test_adapter_builds_a_complete_response():
    sim = flat_sim()
    session = requests.Session()
    session.mount(BASE_URL, sim.adapter())
    response = session.get(f"{BASE_URL}/api/query_symbol_info", params={"symbol": "BTC-USD"})
    assert response.url == f"{BASE_URL}/api/query_symbol_info?symbol=BTC-USD"
    assert response.request.method == "GET"
    assert response.encoding == "utf-8"
    assert response.reason == "OK"
    assert b"".join(response.iter_content(16)) == response.content


def test_handler_bug_is_answered_500_instead_of_raising(monkeypatch):
    sim = flat_sim()
    client = in_process_client(sim)

    def broken(address):
        raise RuntimeError("bug")
    monkeypatch.setattr(sim.exchange, "balance_view", broken)
    response = client.get("/api/query_balance")
    assert response.status_code == 500
    assert response.json() == {"code": 500, "message": "internal server error"}


def test_unknown_path_is_404_and_wrong_method_is_405():
    sim = flat_sim()
    assert sim.handle("GET", "/api/nope", {}, {}, b"")[0] == 404
    assert sim.handle("POST", "/api/query_balance", {}, {}, b"")[0] == 405


# ---- timeouts as a number, a (connect, read) tuple or a urllib3 Timeout ---------------------

@pytest.mark.parametrize("timeout, waited", [
    (5, 5),
    ((3, 5), 5),
    (Timeout(connect=3, read=5), 5),
    (Timeout(connect=3, read=5, total=4), 4),
    (Timeout(total=4), 4),
])
def test_stall_honours_every_form_of_read_timeout(timeout, waited):
    sim, client = faulty("stall", stall_s=30)
    before = sim.clock.now()
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.http.get(f"{BASE_URL}/api/query_positions", headers=client.auth_headers(), timeout=timeout)
    assert sim.clock.now() - before == waited


def test_stall_shorter_than_a_timeout_objects_read_timeout_delays_the_answer():
    sim, client = faulty("stall", stall_s=2)
    before = sim.clock.now()
    response = client.http.get(f"{BASE_URL}/api/query_positions", headers=client.auth_headers(),
                               timeout=Timeout(connect=3, read=5))
    assert response.status_code == 200
    assert sim.clock.now() - before == 2


# ---- slow headers -----------------------------------------------------------------------------

@pytest.mark.parametrize("timeout", [5, (3, 5), Timeout(connect=3, read=5)])
def test_slow_headers_arrive_after_stall_s_whatever_the_per_read_timeout(timeout):
    sim, client = faulty("slow_headers", stall_s=30)
    before = sim.clock.now()
    response = client.http.get(f"{BASE_URL}/api/query_positions", headers=client.auth_headers(), timeout=timeout)
    assert response.status_code == 200 and response.json() == []
    assert sim.clock.now() - before == 30


def test_slow_headers_within_a_total_timeout_arrive():
    sim, client = faulty("slow_headers", stall_s=8)
    before = sim.clock.now()
    response = client.http.get(f"{BASE_URL}/api/query_positions", headers=client.auth_headers(),
                               timeout=Timeout(connect=3, read=5, total=10))
    assert response.status_code == 200
    assert sim.clock.now() - before == 8


def test_slow_headers_longer_than_a_total_timeout_raise_read_timeout_after_the_total():
    sim, client = faulty("slow_headers", path="/api/new_order", stall_s=30)
    before = sim.clock.now()
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.post_signed("/api/new_order", client.order_payload(cl_ord_id="slow"),
                           timeout=Timeout(connect=3, read=5, total=10))
    assert sim.clock.now() - before == 10
    sim.clock.sleep(0.25)
    assert client.order("slow").json()["status"] == "new"  # processed all the same


# ---- compressed answers -----------------------------------------------------------------------

def read_raw(response: requests.Response) -> bytes:
    """The body as sent, read the way the daemon reads it: raw.read1 in small chunks."""
    chunks = []
    while chunk := response.raw.read1(16):
        chunks.append(chunk)
    return b"".join(chunks)


def test_answer_is_gzip_compressed_in_raw_and_decoded_in_content():
    sim = flat_sim()
    session = requests.Session()
    session.mount(BASE_URL, sim.adapter())
    response = session.get(f"{BASE_URL}/api/query_symbol_info", params={"symbol": "BTC-USD"}, stream=True)
    assert response.headers["Content-Encoding"] == "gzip"
    raw = read_raw(response)
    assert int(response.headers["Content-Length"]) == len(raw)
    assert gzip.decompress(raw) == response.content
    assert response.json()[0]["symbol"] == "BTC-USD"


def test_answer_is_deflate_compressed_when_the_client_accepts_only_deflate():
    sim = flat_sim()
    client = in_process_client(sim)
    response = client.http.get(f"{BASE_URL}/api/query_balance", headers={**client.auth_headers(),
                                                                         "Accept-Encoding": "deflate"})
    assert response.headers["Content-Encoding"] == "deflate"
    assert zlib.decompress(read_raw(response)) == response.content
    assert response.json()["balance"] == "1000"


@pytest.mark.parametrize("accept_encoding", ["identity", "br"])
def test_answer_is_plain_when_the_client_accepts_neither_gzip_nor_deflate(accept_encoding):
    sim = flat_sim()
    session = requests.Session()
    session.mount(BASE_URL, sim.adapter())
    response = session.get(f"{BASE_URL}/api/health", headers={"Accept-Encoding": accept_encoding})
    assert "Content-Encoding" not in response.headers
    assert read_raw(response) == b"OK"


def test_answer_is_plain_with_compression_off():
    sim = flat_sim(compress=False)
    session = requests.Session()
    session.mount(BASE_URL, sim.adapter())
    response = session.get(f"{BASE_URL}/api/health")
    assert "Content-Encoding" not in response.headers
    assert read_raw(response) == b"OK"
    sim.set_compress(True)
    assert session.get(f"{BASE_URL}/api/health").headers["Content-Encoding"] == "gzip"


def test_empty_answer_is_never_compressed():
    assert wire.compress((200, {}, b""), "gzip, deflate") == (200, {}, b"")


def test_fault_answers_are_compressed_too():
    _, client = faulty("malformed")
    response = client.get("/api/query_positions")
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.content == b'{"code":0,"message":"succ'


# ---- order visibility delay -------------------------------------------------------------------

def test_visibility_delay_applies_to_orders_accepted_from_then_on():
    sim = flat_sim(visibility_delay_s=0.2)
    client = in_process_client(sim)
    client.new_order(cl_ord_id="before", price="94990.0")
    sim.set_visibility_delay(4)
    client.new_order(cl_ord_id="after", price="94980.0")
    sim.clock.sleep(3.9)
    assert client.order("before").json()["status"] == "new"
    assert client.order("after").status_code == 404
    assert [o["cl_ord_id"] for o in client.open_orders()] == ["before"]
    sim.clock.sleep(0.2)
    assert client.order("after").json()["status"] == "new"


def test_cancel_while_the_order_is_still_pending_does_nothing_and_the_order_then_rests():
    sim = flat_sim(visibility_delay_s=0.2)
    client = in_process_client(sim)
    sim.set_visibility_delay(4)
    client.new_order(cl_ord_id="slow-1")
    assert client.post_signed("/api/cancel_order", {"cl_ord_id": "slow-1"}).status_code == 200
    sim.clock.sleep(1)  # the cancel took effect at 0.2 s, before the order was known
    assert client.order("slow-1").status_code == 404
    sim.clock.sleep(3.1)
    assert client.order("slow-1").json()["status"] == "new"
    assert [o["cl_ord_id"] for o in client.open_orders()] == ["slow-1"]
    metrics = sim.exchange.metrics(client.address)
    assert (metrics["cancel_requests"], metrics["orders_cancelled"]) == (1, 0)
    client.post_signed("/api/cancel_order", {"cl_ord_id": "slow-1"})  # a cancel once it is visible works
    sim.clock.sleep(0.2)
    assert client.order("slow-1").json()["status"] == "canceled"


def test_visibility_delay_cannot_be_negative():
    with pytest.raises(ValueError):
        flat_sim().set_visibility_delay(-1)


# ---- position answers that lag fills ----------------------------------------------------------

def test_position_answer_lags_fills_but_orders_and_balance_do_not():
    sim = flat_sim()
    client = in_process_client(sim)
    sim.set_position_lag(1.5)
    client.market_order("buy", "0.0010", cl_ord_id="buy-1")
    sim.clock.sleep(0.25)  # filled at 0.2 s
    assert client.order("buy-1").json()["status"] == "filled"
    assert client.balance() < 1000
    assert client.get("/api/query_positions").json() == []
    sim.clock.sleep(1.5)  # 1.55 s after the fill
    assert client.position_qty() == Decimal("0.0010")
    client.market_order("sell", "0.0010", reduce_only=True)
    sim.clock.sleep(1.4)  # filled 1.2 s ago
    assert client.position_qty() == Decimal("0.0010")
    assert sim.exchange.metrics(client.address)["position_qty"] == 0
    sim.clock.sleep(0.4)  # filled 1.6 s ago
    assert client.position_qty() == 0


def test_position_lag_back_to_0_answers_the_current_position():
    sim = flat_sim()
    client = in_process_client(sim)
    sim.set_position_lag(60)
    client.market_order("buy", "0.0010")
    sim.clock.sleep(0.25)
    assert client.position_qty() == 0
    sim.set_position_lag(0)
    assert client.position_qty() == Decimal("0.0010")


def test_position_history_keeps_only_what_the_longest_lag_needs():
    sim = flat_sim()
    client = in_process_client(sim)
    sim.set_position_lag(POSITION_HISTORY_S)
    for _ in range(10):  # a fill every 100 s: 1000 s of changes
        client.market_order("buy", "0.0010")
        sim.clock.sleep(100)
    assert len(sim.exchange.account(client.address).position_history) <= 5
    assert client.position_qty() == Decimal("0.0070")  # as 300 s ago: 7 fills


@pytest.mark.parametrize("seconds", [-1, POSITION_HISTORY_S + 1])
def test_position_lag_out_of_range_is_refused(seconds):
    with pytest.raises(ValueError):
        flat_sim().set_position_lag(seconds)


# ---- token lifetime and login failures --------------------------------------------------------

def login_token(client, **extra) -> str:
    signed_data = client.prepare().json()["signedData"]
    response = client.send_login(client.sign_message(signed_data), signed_data, **extra)
    assert response.status_code == 200, response.text
    client.token = response.json()["token"]
    return client.token


def test_token_lifetime_caps_the_tokens_of_later_logins():
    sim = flat_sim()
    client = in_process_client(sim, login=False)
    earlier = login_token(client)
    sim.set_max_token_lifetime(120)
    claims = jwt_payload(login_token(client))
    assert claims["exp"] - claims["iat"] == 120
    assert jwt_payload(login_token(client, expiresSeconds=60))["exp"] - claims["iat"] == 60  # shorter asked: kept
    login_token(client)
    sim.clock.sleep(119.9)
    assert client.get("/api/query_balance").status_code == 200
    sim.clock.sleep(0.1)
    assert client.get("/api/query_balance").status_code == 401
    client.token = earlier  # issued before the cap: still alive
    assert client.get("/api/query_balance").status_code == 200


def test_token_lifetime_cap_can_be_lifted():
    sim = flat_sim()
    client = in_process_client(sim, login=False)
    sim.set_max_token_lifetime(120)
    sim.set_max_token_lifetime(None)
    claims = jwt_payload(login_token(client))
    assert claims["exp"] - claims["iat"] == 604800


def test_logins_fail_only_within_an_error_window_on_prepare_signin():
    sim = flat_sim()
    client = in_process_client(sim)
    sim.set_max_token_lifetime(120)
    sim.faults.add("error", path="/v1/offchain/prepare-signin", status=503, after_s=110, for_s=30)
    login_token(client)  # t = 0: outside the window
    sim.clock.sleep(120)  # t = 120: the token has expired, logins fail until t = 140
    assert client.get("/api/query_balance").status_code == 401
    assert client.prepare().status_code == 503
    sim.clock.sleep(19.9)
    assert client.prepare().status_code == 503
    sim.clock.sleep(0.1)
    login_token(client)
    assert client.get("/api/query_balance").status_code == 200


def test_token_lifetime_must_be_positive():
    with pytest.raises(ValueError):
        flat_sim().set_max_token_lifetime(0)


# ---- clock skew ------------------------------------------------------------------------------

def test_signed_requests_stamped_with_exchange_time_are_accepted_again_once_the_skew_is_0():
    sim = flat_sim()
    client = in_process_client(sim)

    def order_stamped(offset_s: float) -> int:
        ts_ms = int((sim.clock.now() + offset_s) * 1000)
        return client.post_signed("/api/new_order", client.order_payload(), ts_ms=ts_ms).status_code

    sim.set_clock_skew(45)
    assert order_stamped(0) == 403
    assert order_stamped(45) == 200  # stamped with the exchange's time
    sim.set_clock_skew(0)
    assert order_stamped(0) == 200
    assert order_stamped(45) == 403
    date = client.get("/api/query_balance").headers["Date"]
    assert email.utils.parsedate_to_datetime(date).timestamp() == int(sim.clock.now())
