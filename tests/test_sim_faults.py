"""Fault injection through the in-process adapter, token expiry and clock skew."""
from __future__ import annotations

import email.utils
import json

import pytest
import requests

from tests.sim_helpers import BASE_URL, START_TS, flat_sim, in_process_client


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
