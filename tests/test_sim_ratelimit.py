"""StandX's rate limits in the simulator (standx_sim/ratelimit.py): the buckets' arithmetic, the
429 answers of the handler, their counts, and the client's IP address over real HTTP."""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import pytest
import requests
from requests.adapters import HTTPAdapter

from standx_sim import SimServer
from standx_sim.__main__ import build_parser
from standx_sim.ratelimit import DEFAULT_RATE_LIMITS, RateLimitParams, RateLimits, retry_after_s
from tests.sim_helpers import BASE_URL, START_TS, SimClient, flat_sim, in_process_client
from tests.sim_process import REPO, clean_env

P = DEFAULT_RATE_LIMITS
BURST = int(P.burst_credits // P.credits_per_request)  # requests an account may send at once
ONE_REQUEST_S = P.credits_per_request / P.refill_credits_per_s  # the refill of one request's credits
IP_BURST = int(P.ip_burst_requests)
LOGIN_REQUESTS = 2  # prepare-signin and login, both on the account of the address they name
PUBLIC_PATH = "/api/query_symbol_info"
PRIVATE_PATH = "/api/query_balance"


def admitted_at_rate(limits: RateLimits, per_s: float, seconds: float) -> int:
    """How many of one account's `per_s` evenly spaced requests over `seconds` pass."""
    count = round(per_s * seconds)
    return sum(limits.admit(START_TS + i / per_s, "0xa", "10.0.0.1") is None for i in range(count))


# ---- the buckets ------------------------------------------------------------------------------

def test_the_documented_defaults():
    assert BURST == 20 and round(P.refill_credits_per_s / P.credits_per_request) == 22 and IP_BURST == 50


def test_twenty_requests_at_once_pass_and_the_21st_waits_for_one_requests_credits():
    limits = RateLimits()
    assert all(limits.admit(START_TS, "0xa", "10.0.0.1") is None for _ in range(BURST))
    wait_s = limits.admit(START_TS, "0xa", "10.0.0.1")
    assert wait_s == pytest.approx(ONE_REQUEST_S)
    assert retry_after_s(wait_s) == 1  # whole seconds, rounded up


def test_after_the_refill_time_a_request_passes_again_and_not_a_microsecond_before():
    limits = RateLimits()
    for _ in range(BURST):
        limits.admit(START_TS, "0xa", "10.0.0.1")
    assert limits.admit(START_TS + ONE_REQUEST_S - 1e-6, "0xa", "10.0.0.1") == pytest.approx(1e-6)
    assert limits.admit(START_TS + ONE_REQUEST_S, "0xa", "10.0.0.1") is None
    assert limits.admit(START_TS + ONE_REQUEST_S, "0xa", "10.0.0.1") == pytest.approx(ONE_REQUEST_S)


def test_a_refused_request_takes_no_credit():
    limits = RateLimits()
    for _ in range(BURST):
        limits.admit(START_TS, "0xa", "10.0.0.1")
    refused = [limits.admit(START_TS + i * ONE_REQUEST_S / 10, "0xa", "10.0.0.1") for i in range(10)]
    assert None not in refused
    assert limits.admit(START_TS + ONE_REQUEST_S, "0xa", "10.0.0.1") is None


def test_an_account_refusal_takes_nothing_from_the_ip():
    limits = RateLimits()
    for _ in range(BURST + 1):  # the last one is refused by the account's bucket
        limits.admit(START_TS, "0xa", "10.0.0.1")
    assert all(limits.admit(START_TS, None, "10.0.0.1") is None for _ in range(IP_BURST - BURST))
    assert limits.admit(START_TS, None, "10.0.0.1") == pytest.approx(1 / P.ip_requests_per_s)


def test_a_request_stamped_before_the_last_one_refills_nothing():
    limits = RateLimits()
    for _ in range(BURST):
        limits.admit(START_TS + 1, "0xa", "10.0.0.1")
    assert limits.admit(START_TS, "0xa", "10.0.0.1") == pytest.approx(ONE_REQUEST_S)


def test_sustained_22_per_s_pass():
    assert admitted_at_rate(RateLimits(), 22, 60) == 22 * 60


def test_30_per_s_get_some_429s_and_pass_what_the_bucket_allows():
    seconds = 10
    admitted = admitted_at_rate(RateLimits(), 30, seconds)
    last_s = seconds - 1 / 30  # the time of the last request
    budget = (P.burst_credits + P.refill_credits_per_s * last_s) / P.credits_per_request
    assert admitted < 30 * seconds
    assert math.floor(budget) == admitted


def test_three_accounts_at_20_per_s_from_one_ip_get_429s_from_three_ips_none():
    seconds, per_s, accounts = 10, 20, ("0xa", "0xb", "0xc")

    def admitted(limits: RateLimits, ip_of) -> int:
        return sum(limits.admit(START_TS + i / per_s, address, ip_of(address)) is None
                   for i in range(per_s * seconds) for address in accounts)
    one_ip = admitted(RateLimits(), lambda address: "10.0.0.1")
    ip_budget = P.ip_burst_requests + P.ip_requests_per_s * (seconds - 1 / per_s)  # until the last request
    assert one_ip < len(accounts) * per_s * seconds
    assert math.floor(ip_budget) == one_ip
    assert admitted(RateLimits(), lambda address: f"10.0.0.{accounts.index(address)}") == \
        len(accounts) * per_s * seconds


def test_requests_of_no_account_count_per_ip_only():
    limits = RateLimits()
    assert all(limits.admit(START_TS, None, "10.0.0.1") is None for _ in range(IP_BURST))
    assert limits.admit(START_TS, None, "10.0.0.1") == pytest.approx(1 / P.ip_requests_per_s)
    assert limits.admit(START_TS, None, "10.0.0.2") is None


@pytest.mark.parametrize("params", [{"credits_per_request": 0}, {"refill_credits_per_s": -1},
                                    {"ip_requests_per_s": 0}, {"burst_credits": 44}, {"ip_burst_requests": 0.5}])
def test_limits_that_could_never_admit_are_refused(params):
    with pytest.raises(ValueError):
        RateLimitParams(**params)


@pytest.mark.parametrize("wait_s, header", [(0.001, 1), (1.0, 1), (1.2, 2)])
def test_retry_after_is_the_wait_rounded_up_to_whole_seconds(wait_s, header):
    assert retry_after_s(wait_s) == header


# ---- the handler ------------------------------------------------------------------------------

def spend_account_burst(client: SimClient) -> None:
    """The rest of a freshly logged-in account's burst, all at the same moment."""
    for _ in range(BURST - LOGIN_REQUESTS):
        assert client.get(PRIVATE_PATH).status_code == 200


def test_over_the_account_limit_the_handler_answers_429_with_retry_after_and_the_json_body():
    sim = flat_sim(rate_limits=DEFAULT_RATE_LIMITS)
    client = in_process_client(sim)
    spend_account_burst(client)
    response = client.get(PRIVATE_PATH)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == str(retry_after_s(ONE_REQUEST_S))
    body = response.json()
    assert set(body) == {"code", "message"} and body["code"] == 429 and body["message"]
    assert sim.rate_limited(client.address) == sim.rate_limited() == 1
    sim.clock.sleep(ONE_REQUEST_S)
    assert client.get(PRIVATE_PATH).status_code == 200


def test_a_clock_skew_does_not_refill_the_buckets():
    sim = flat_sim(rate_limits=DEFAULT_RATE_LIMITS)
    client = in_process_client(sim)
    spend_account_burst(client)
    sim.set_clock_skew(60)
    assert client.get(PRIVATE_PATH).status_code == 429


def test_a_refused_order_is_not_placed():
    sim = flat_sim(rate_limits=DEFAULT_RATE_LIMITS)
    client = in_process_client(sim)
    spend_account_burst(client)
    assert client.new_order(cl_ord_id="over").status_code == 429
    sim.clock.sleep(1)
    assert client.order("over").status_code == 404 and client.open_orders() == []


def test_login_requests_count_on_the_account_they_name():
    sim = flat_sim(rate_limits=DEFAULT_RATE_LIMITS)
    client = in_process_client(sim, login=False)
    for _ in range(BURST):
        assert client.prepare().status_code == 200
    assert client.prepare().status_code == 429
    assert sim.rate_limited(client.address) == 1
    sim.clock.sleep(ONE_REQUEST_S)
    signed_data = client.prepare().json()["signedData"]
    assert client.send_login(client.sign_message(signed_data), signed_data).status_code == 429


def test_counts_by_account_and_in_total():
    sim = flat_sim(rate_limits=DEFAULT_RATE_LIMITS)
    first, second = in_process_client(sim), in_process_client(sim)
    spend_account_burst(first)
    spend_account_burst(second)
    for _ in range(3):
        first.get(PRIVATE_PATH)
    second.get(PRIVATE_PATH)
    assert (sim.rate_limited(first.address), sim.rate_limited(second.address.upper()), sim.rate_limited()) == (3, 1, 4)
    assert sim.api.rate_limited_by_ip == {"127.0.0.1": 4}


def per_ip_run(client_addresses: list[str]) -> int:
    """Three accounts, each at 20 requests/s for 10 s, at the given client addresses: the 429s."""
    sim = flat_sim(rate_limits=DEFAULT_RATE_LIMITS)
    clients = []
    for client_address in client_addresses:
        session = requests.Session()
        session.mount(BASE_URL, sim.adapter(client_address=client_address))
        clients.append(SimClient(session, sim.clock, BASE_URL))
    for client in clients:
        client.login()
    sim.clock.sleep(1)  # the logins' credits are back
    for _ in range(20 * 10):
        for client in clients:
            client.get(PRIVATE_PATH)
        sim.clock.sleep(1 / 20)
    assert sum(sim.rate_limited(client.address) for client in clients) == sim.rate_limited()
    return sim.rate_limited()


def test_three_accounts_behind_one_ip_get_429s_behind_three_ips_none():
    assert per_ip_run(["10.0.0.1"] * 3) > 0
    assert per_ip_run(["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == 0


def test_with_the_limits_off_nothing_is_refused():
    sim = flat_sim(rate_limits=None)
    client = in_process_client(sim)
    assert all(client.get(PRIVATE_PATH).status_code == 200 for _ in range(3 * IP_BURST))
    assert sim.rate_limited() == 0


def test_the_simulator_applies_the_limits_it_is_given():
    sim = flat_sim(rate_limits=RateLimitParams(ip_requests_per_s=5, ip_burst_requests=5))
    client = in_process_client(sim, login=False)
    assert [client.http.get(f"{BASE_URL}{PUBLIC_PATH}").status_code for _ in range(6)] == [200] * 5 + [429]


def test_the_429_fault_stays_a_fault_and_is_not_counted_as_a_rate_limit():
    sim = flat_sim(rate_limits=DEFAULT_RATE_LIMITS)
    client = in_process_client(sim)
    sim.faults.add("rate_limit", path=PRIVATE_PATH, count=1, retry_after_s=3)
    response = client.get(PRIVATE_PATH)
    assert (response.status_code, response.headers["Retry-After"]) == (429, "3")
    assert sim.rate_limited() == 0


def test_a_request_over_the_limit_does_not_use_up_a_fault_rule():
    sim = flat_sim(rate_limits=DEFAULT_RATE_LIMITS)
    client = in_process_client(sim)
    spend_account_burst(client)
    sim.faults.add("error", path=PRIVATE_PATH, count=1)
    assert client.get(PRIVATE_PATH).status_code == 429
    sim.clock.sleep(ONE_REQUEST_S)
    assert client.get(PRIVATE_PATH).status_code == 500


def test_serve_has_a_switch_to_turn_the_limits_off():
    assert build_parser().parse_args(["serve", "--no-rate-limits"]).no_rate_limits
    assert not build_parser().parse_args(["serve"]).no_rate_limits


# ---- over real HTTP -----------------------------------------------------------------------------

class SourceAddressAdapter(HTTPAdapter):
    """Connects from a given loopback address, as a second host would."""

    def __init__(self, source_ip: str) -> None:
        self._source_ip = source_ip
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, source_address=(self._source_ip, 0), **kwargs)


def test_over_http_the_limit_is_per_peer_address():
    sim = flat_sim(rate_limits=DEFAULT_RATE_LIMITS)  # virtual time stands still: the budget does not refill during the test
    server = SimServer(sim)
    url = server.start()
    try:
        first, second = requests.Session(), requests.Session()
        second.mount("http://", SourceAddressAdapter("127.0.0.2"))
        statuses = [first.get(f"{url}{PUBLIC_PATH}", timeout=5).status_code for _ in range(IP_BURST + 1)]
        assert statuses == [200] * IP_BURST + [429]
        assert second.get(f"{url}{PUBLIC_PATH}", timeout=5).status_code == 200
        assert sim.api.rate_limited_by_ip == {"127.0.0.1": 1}
    finally:
        server.stop()


def test_serve_with_no_rate_limits_answers_a_burst_over_the_ip_budget():
    process = subprocess.Popen([sys.executable, "-m", "standx_sim", "serve", "--no-rate-limits"], cwd=REPO,
                               env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = process.stdout.readline().strip().split("=", 1)[1]
        with requests.Session() as session:
            # Sent back to back, these are far over 50/s: limits on would refuse some.
            statuses = {session.get(f"{url}/api/health", timeout=5).status_code for _ in range(4 * IP_BURST)}
        assert statuses == {200}
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---- bench/accounts.py ---------------------------------------------------------------------------

def bench_accounts():
    spec = importlib.util.spec_from_file_location("bench_accounts", REPO / "bench" / "accounts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_busiest_second_counts_the_moments_of_the_fullest_one_second_window():
    busiest_second = bench_accounts().busiest_second
    assert busiest_second([]) == 0
    assert busiest_second([5.0, 0.0, 0.4, 1.3, 1.35, 1.39, 2.4]) == 4  # 0.4 .. 1.39
    assert busiest_second([0.0, 1.0, 2.0]) == 1  # a window is one second, its end excluded


def test_the_accounts_bench_reports_each_account_and_the_ip():
    result = subprocess.run([sys.executable, "bench/accounts.py", "--accounts", "2", "--seconds", "2",
                             "--latency-ms", "0"], cwd=REPO, env=clean_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("2 account(s) behind 127.0.0.1")
    assert [line.split()[0][:2] for line in lines[1:3]] == ["0x", "0x"] and "requests/s" in lines[1]
    assert lines[3].strip().startswith("per IP:") and "x 429 in all" in lines[3]
