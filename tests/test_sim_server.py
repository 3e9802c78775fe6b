"""The simulator over real HTTP on 127.0.0.1, its control endpoints, and `python -m standx_sim serve`."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from standx_sim.clock import WallClock
from standx_sim import SimServer, Simulator, SyntheticMarket
from tests.sim_helpers import SimClient, compact, flat_sim

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 5


@pytest.fixture
def served():
    """A quiet market served on a free loopback port with a short visibility delay, where any
    touch fills a whole order and the mark is the mid (these tests are of the server, not of
    matching or of the mark model)."""
    clock = WallClock()
    market = SyntheticMarket(start_ts=clock.now(), volatility_bps_per_sqrt_s=0, spread_usd=(Decimal("0.2"),) * 2)
    sim = Simulator(clock, market, visibility_delay_s=0.05, queue=False, mark="mid")
    server = SimServer(sim)
    url = server.start()
    session = requests.Session()
    yield sim, url, SimClient(session, clock, url)
    session.close()
    server.stop()


def control(url: str, path: str, payload: dict | None = None) -> requests.Response:
    if payload is None:
        return requests.get(f"{url}/_sim/{path}", timeout=TIMEOUT_S)
    return requests.post(f"{url}/_sim/{path}", data=compact(payload), timeout=TIMEOUT_S)


def test_server_listens_on_loopback_only(served):
    _, url, _ = served
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(ValueError):
        SimServer(flat_sim(), host="0.0.0.0")


def test_http_answers_like_in_process(served):
    sim, url, _ = served
    over_http = requests.get(f"{url}/api/query_symbol_info", params={"symbol": "BTC-USD"}, timeout=TIMEOUT_S)
    status, _, body = sim.handle("GET", "/api/query_symbol_info", {"symbol": "BTC-USD"}, {}, b"")
    assert (over_http.status_code, over_http.content) == (status, body)
    assert "Date" in over_http.headers


def test_login_and_order_over_http(served):
    sim, _, client = served
    client.login()
    assert client.new_order(cl_ord_id="http-1").status_code == 200
    sim.clock.sleep(0.1)
    assert [o["cl_ord_id"] for o in client.open_orders()] == ["http-1"]


def test_bad_signature_over_http_is_403(served):
    _, _, client = served
    client.login()
    payload = client.order_payload()
    response = client.post_signed("/api/new_order", payload, sent_body=compact(payload).replace("buy", "sell"))
    assert response.status_code == 403


def test_control_reads_account_state_and_metrics(served):
    sim, url, client = served
    client.login()
    client.new_order(cl_ord_id="ctl-1")
    sim.clock.sleep(0.1)
    account = control(url, f"account?address={client.address}").json()
    assert account["balance"] == "1000"
    assert [o["cl_ord_id"] for o in account["open_orders"]] == ["ctl-1"]
    assert account["metrics"]["orders_placed"] == 1
    assert control(url, f"metrics?address={client.address}").json()["orders_placed"] == 1


def test_control_for_an_unknown_account_is_404(served):
    _, url, _ = served
    assert control(url, "account?address=0x" + "00" * 20).status_code == 404


def test_control_sets_the_balance(served):
    _, url, client = served
    client.login()
    assert control(url, "balance", {"address": client.address, "balance": None}).status_code == 200
    assert client.get("/api/query_balance").status_code == 404


def test_control_moves_the_price_and_injects_a_trade_that_fills(served):
    sim, url, client = served
    client.login()
    client.new_order(cl_ord_id="ctl-fill", price="94990.0")
    sim.clock.sleep(0.1)
    market = control(url, "price", {"shift_bps": -0.5}).json()
    assert market["mark"] == "94995.2"
    assert control(url, "trade", {"price": "94990.0", "qty": "0.1", "taker_side": "sell"}).status_code == 200
    assert client.order("ctl-fill").json()["status"] == "filled"


def test_control_adds_and_clears_faults(served):
    _, url, client = served
    client.login()
    assert control(url, "faults", {"kind": "error", "path": "/api/query_balance", "status": 503}).json()["id"] >= 1
    assert client.get("/api/query_balance").status_code == 503
    control(url, "faults/clear", {})
    assert client.get("/api/query_balance").status_code == 200


def test_control_refuses_a_bad_fault_rule(served):
    _, url, _ = served
    assert control(url, "faults", {"kind": "explode"}).status_code == 400


def test_control_expires_tokens_and_skews_the_clock(served):
    _, url, client = served
    client.login()
    control(url, "expire_tokens", {})
    assert client.get("/api/query_balance").status_code == 401
    client.login()
    control(url, "clock_skew", {"seconds": 60})
    assert client.new_order().json()["message"] == "signature has expired"


def test_dropped_connection_over_http_raises_connection_error(served):
    sim, url, client = served
    client.login()
    sim.faults.add("drop", path="/api/query_balance")
    with pytest.raises(requests.exceptions.ConnectionError):
        client.http.get(f"{url}/api/query_balance", headers=client.auth_headers(), timeout=TIMEOUT_S)


def test_stall_over_http_times_out_the_client(served):
    sim, url, client = served
    client.login()
    sim.faults.add("stall", path="/api/query_balance", stall_s=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.http.get(f"{url}/api/query_balance", headers=client.auth_headers(), timeout=0.2)


def test_slow_headers_over_http_trickle_in_under_a_short_read_timeout(served):
    sim, url, _ = served
    sim.faults.add("slow_headers", path="/api/query_symbol_info", stall_s=1.0)
    started = time.monotonic()
    response = requests.get(f"{url}/api/query_symbol_info", params={"symbol": "BTC-USD"}, timeout=(TIMEOUT_S, 0.3))
    assert time.monotonic() - started >= 1.0
    assert response.status_code == 200 and response.json()[0]["symbol"] == "BTC-USD"


def test_answers_over_http_are_gzip_compressed_for_a_client_that_accepts_gzip(served):
    _, url, _ = served
    response = requests.get(f"{url}/api/query_symbol_info", params={"symbol": "BTC-USD"}, timeout=TIMEOUT_S,
                            stream=True)
    assert response.headers["Content-Encoding"] == "gzip"
    raw = response.raw.read1(1 << 16)  # still compressed, as the daemon reads it
    assert int(response.headers["Content-Length"]) == len(raw)
    assert json.loads(gzip.decompress(raw))[0]["symbol"] == "BTC-USD"


def test_compress_control_over_http_turns_compression_off(served):
    _, url, _ = served
    assert control(url, "compress", {"on": False}).status_code == 200
    response = requests.get(f"{url}/api/health", timeout=TIMEOUT_S)
    assert "Content-Encoding" not in response.headers and response.text == "OK"


def run_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "standx_sim", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_serve_prints_the_url_first_and_exits_0_on_sigterm():
    process = run_cli("serve", "--port", "0", "--latency-ms", "1")
    try:
        first = process.stdout.readline().strip()
        assert first.startswith("STANDX_SIM_URL=http://127.0.0.1:")
        url = first.split("=", 1)[1]
        assert requests.get(f"{url}/api/health", timeout=TIMEOUT_S).text == "OK"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_with_a_missing_market_file_exits_2_with_one_line(tmp_path):
    process = run_cli("serve", "--market-data", str(tmp_path / "missing"))
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 2
    assert stderr.strip().count("\n") == 0 and "missing.bbo.csv.gz" in stderr


def test_serve_with_a_bad_argument_exits_2():
    process = run_cli("serve", "--balance", "lots")
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 2
    assert "--balance" in stderr


def test_serve_help_says_what_the_simulator_models_and_what_it_does_not(capsys):
    from standx_sim.__main__ import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    models, not_modelled = text.split("what it models")[1].split("not modelled:")
    for modelled in ("mark price", "rate limits", "429", "random delay", "rejected in matching", "queue",
                     "partial fills", "ETH-USD", "gzip", "WebSocket streams", "/ws-stream/v1", "/ws-api/v1"):
        assert modelled in models, modelled
    assert "depth" in not_modelled and "order response stream" in not_modelled
