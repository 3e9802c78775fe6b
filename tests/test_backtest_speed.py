"""Faster backtests that measure the same: the lean InProcessSession hands the simulator the very
request requests' own Session builds and the client gets the same answers and errors, and a
backtest's figures are identical through either Session, in one process or in several (--jobs)."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
from functools import partial
from unittest import mock

import pytest
import requests
from urllib3.util import Timeout

import market_maker as mm
from standx_sim import backtest as bt
from standx_sim import wire
from standx_sim.__main__ import build_parser
from standx_sim.clock import VirtualClock
from requests.adapters import BaseAdapter
from standx_sim.transport import InProcessAdapter, InProcessSession
from tests.sim_helpers import BASE_URL, START_TS, SimClient, flat_sim
from tests.test_backtest import CALM_HOUR, REPO, backtest, needs_data, without_timing


def plain_session() -> requests.Session:
    """requests' own Session as the backtest's plain path builds it."""
    session = requests.Session()
    session.trust_env = False
    return session


SESSIONS = {"plain": plain_session, "lean": InProcessSession}


def recording(kind: str, answer=(200, {"Content-Type": "application/json"}, b"{}")):
    """A session of that kind whose in-process handler records every request it receives."""
    seen = []

    def handler(method, path, query, headers, body, client):
        seen.append((method, path, query, headers, body, client))
        return answer

    session = SESSIONS[kind]()
    session.mount(BASE_URL, InProcessAdapter(handler, VirtualClock(START_TS), latency_s=0.1))
    return session, seen


# ---- the same request reaches the handler -------------------------------------------------

LEAN_CALLS = [
    dict(method="GET", url=f"{BASE_URL}/api/query_positions", params={"symbol": "BTC-USD"},
         headers={"Authorization": "Bearer t0k3n"}),
    dict(method="get", url=f"{BASE_URL}/api/query_order?cl_ord_id=a b", params={"skip": None, "ids": ["1", "2"]}),
    dict(method="GET", url=f"{BASE_URL}/api/query_trades", params=[("b", "2"), ("a", "é")]),
    dict(method="GET", url=f"{BASE_URL}/api/query_trades", params={"limit": 10, "page": 1.5}),
    dict(method="GET", url=f"{BASE_URL}/api/query_trades", params="raw=1&flag"),
    dict(method="GET", url=f"{BASE_URL}/api/query_trades", params=b"raw=2"),
    dict(method="GET", url=f"{BASE_URL}/api/query_balance",
         headers={"accept-encoding": "deflate", "User-Agent": None, b"X-Bytes": b"v"}),
    dict(method="POST", url=f"{BASE_URL}/api/new_order", data=b'{"qty":"0.001"}',
         headers={"Content-Type": "application/json", "x-request-signature": "c2ln"}),
    dict(method="POST", url=f"{BASE_URL}/api/new_order", data='{"note":"é"}'),
    dict(method="POST", url=f"{BASE_URL}/api/new_order", json={"qty": "0.001"}),
    dict(method="POST", url=f"{BASE_URL}/api/form", data={"a": "1", "b": None}),
    dict(method="DELETE", url=f"{BASE_URL}/api/order"),
]
FULL_PATH_CALLS = [  # what the lean path leaves to requests
    dict(method="GET", url=f"{BASE_URL}/api/health", cookies={"session": "1"}),
    dict(method="GET", url=f"{BASE_URL}/api/health", auth=("user", "secret")),
    dict(method="GET", url=f"{BASE_URL}/api/health?contact=ops@example.com"),
]
SESSION_HEADERS = [{}, {"X-Client": "bot", "Accept": None, "accept-encoding": "gzip"}]


def sent(kind: str, session_headers: dict, call: dict) -> tuple[list, tuple]:
    session, seen = recording(kind)
    session.headers.update(session_headers)
    response = session.request(**call)
    prepared = response.request
    return seen, (prepared.method, prepared.url, dict(prepared.headers), prepared.body)


def test_params_requests_writes_differently_make_different_urls_though_equal_in_python():
    session, _ = recording("lean")
    urls = [session.get(f"{BASE_URL}/api/query_trades", params={"n": value}).url for value in (1, True, 1.0, "1")]
    assert [url.rsplit("=", 1)[1] for url in urls] == ["1", "True", "1.0", "1"]


@pytest.mark.parametrize("values", [(True, 1, 1.0, "1", 1), (1.0, 1, True, b"1", None, 1), (-0.0, 0, 0.0, False, 0)])
def test_params_equal_in_python_make_the_urls_requests_makes_whatever_came_before(values, request):
    name = f"n_{request.node.callspec.id}"  # a name no other test sends: nothing remembered yet
    urls = {kind: [recording(kind)[0].get(f"{BASE_URL}/api/query_trades", params={name: value}).url
                   for value in values] for kind in SESSIONS}
    assert urls["lean"] == urls["plain"]


def test_a_url_with_string_and_int_params_is_prepared_once():
    session, _ = recording("lean")
    params = {"symbol": "BTC-USD", "limit": 1234}  # as the daemon reads its open orders
    first = session.get(f"{BASE_URL}/api/query_open_orders", params=params).url
    with mock.patch.object(requests.PreparedRequest, "prepare_url", side_effect=AssertionError("prepared again")):
        assert session.get(f"{BASE_URL}/api/query_open_orders", params=dict(params)).url == first
    assert first.endswith("?symbol=BTC-USD&limit=1234")


@pytest.mark.parametrize("session_headers", SESSION_HEADERS)
@pytest.mark.parametrize("call", LEAN_CALLS + FULL_PATH_CALLS)
def test_the_lean_session_sends_the_request_requests_builds(call, session_headers):
    assert sent("lean", session_headers, call) == sent("plain", session_headers, call)


@pytest.mark.parametrize("call", LEAN_CALLS)
def test_calls_like_the_daemons_skip_requests_own_preparation(call):
    session, seen = recording("lean")
    with mock.patch.object(requests.Session, "prepare_request", side_effect=AssertionError("the full path")):
        session.request(**call, timeout=Timeout(connect=1, read=5, total=10), stream=True)
    assert len(seen) == 1


@pytest.mark.parametrize("call, error", [
    (dict(headers={"X-Bad": "a\r\nb"}), requests.exceptions.InvalidHeader),
    (dict(headers={"X-Bad": " leading"}), requests.exceptions.InvalidHeader),
    (dict(headers={"X-Number": 5}), requests.exceptions.InvalidHeader),
    (dict(headers={"X-List": ["a"]}), requests.exceptions.InvalidHeader),
    (dict(url="http:///api/health"), requests.exceptions.InvalidURL),
    (dict(url="standx.sim/api/health"), requests.exceptions.MissingSchema),
])
@pytest.mark.parametrize("kind", SESSIONS)
def test_a_request_requests_refuses_is_refused_the_same_way_twice(kind, call, error):
    session, seen = recording(kind)
    for _ in range(2):  # a refusal is never remembered as valid
        with pytest.raises(error):
            session.request(**{"method": "GET", "url": f"{BASE_URL}/api/health", **call})
    assert seen == []


# ---- the same answers and errors reach the client -----------------------------------------

def answer(response: requests.Response) -> tuple:
    return (response.status_code, response.reason, dict(response.headers), response.encoding, response.url,
            response.raw.read(), response.content, response.history, dict(response.cookies), response.next,
            response.ok, response.is_redirect)


@pytest.mark.parametrize("stream", [False, True])
def test_a_compressed_answer_reaches_the_client_the_same_way(stream):
    answers = {}
    for kind in SESSIONS:
        sim = flat_sim()
        session = SESSIONS[kind]()
        session.mount(BASE_URL, sim.adapter(latency_s=0.1))
        answers[kind] = answer(session.get(f"{BASE_URL}/api/query_symbol_info", params={"symbol": "BTC-USD"},
                                           stream=stream))
    assert answers["lean"] == answers["plain"]
    assert answers["lean"][2]["Content-Encoding"] == "gzip" and b"BTC-USD" in answers["lean"][6]


def in_process_session(kind: str) -> requests.Session:
    """A session of that kind on a quiet simulator."""
    session = SESSIONS[kind]()
    session.mount(BASE_URL, flat_sim().adapter(latency_s=0.1))
    return session


def test_an_answer_read_raw_is_never_decoded_and_one_read_as_content_once():
    session = in_process_session("lean")
    with mock.patch("standx_sim.transport.decompress", side_effect=wire.decompress) as decoding:
        raw_read = session.get(f"{BASE_URL}/api/query_symbol_info", stream=True)
        raw = raw_read.raw.read()
        assert decoding.call_count == 0
        read = session.get(f"{BASE_URL}/api/query_symbol_info", stream=True)
        assert read.json() == json.loads(read.content) == json.loads(read.text)
        assert decoding.call_count == 1
    assert read.headers["Content-Encoding"] == "gzip" and wire.decompress(raw, "gzip") == read.content


def test_a_client_that_decodes_the_raw_bytes_itself_keeps_what_it_decoded():
    session = in_process_session("lean")
    response = session.get(f"{BASE_URL}/api/query_symbol_info", stream=True)
    response._content = wire.decompress(response.raw.read(), response.headers["Content-Encoding"])
    assert response.json()[0]["symbol"] == "BTC-USD"


@pytest.mark.parametrize("kind", SESSIONS)
def test_an_answer_pickles_with_its_body(kind):
    session = in_process_session(kind)
    response = session.get(f"{BASE_URL}/api/query_symbol_info", stream=True)
    copy = pickle.loads(pickle.dumps(response))
    assert copy.content == response.content and copy.json()[0]["symbol"] == "BTC-USD"


def test_an_answer_and_its_request_have_every_attribute_requests_gives_them():
    response = in_process_session("lean").get(f"{BASE_URL}/api/query_symbol_info")
    assert [name for name in vars(requests.Response()) if not hasattr(response, name)] == []
    assert [name for name in vars(requests.PreparedRequest()) if not hasattr(response.request, name)] == []
    assert len(response.cookies) == 0 and len(response.request._cookies) == 0
    assert response.request.copy().headers == response.request.headers


def test_an_answer_not_streamed_is_read_at_once_as_requests_reads_it():
    session = in_process_session("lean")
    with mock.patch("standx_sim.transport.decompress", side_effect=wire.decompress) as decoding:
        response = session.get(f"{BASE_URL}/api/query_symbol_info")
        assert decoding.call_count == 1
    assert response.json()[0]["symbol"] == "BTC-USD"


def test_an_answer_took_its_time_on_the_clock():
    """The one figure the lean session gives differently: requests' Session.send would time the
    adapter on the host's clock."""
    response = in_process_session("lean").get(f"{BASE_URL}/api/health")
    assert response.elapsed.total_seconds() == pytest.approx(0.1)


def test_headers_sent_again_are_checked_once_and_each_request_keeps_its_own():
    session, _ = recording("lean")
    headers = {"Authorization": "Bearer sent-twice", "X-Twice": "1"}  # a set no other test sends
    posted = session.post(f"{BASE_URL}/api/new_order", data=b"{}", headers=headers)
    with mock.patch("standx_sim.transport.check_header_validity", side_effect=AssertionError("checked again")):
        read = session.get(f"{BASE_URL}/api/query_balance", headers=dict(headers))
    assert posted.request.headers["Content-Length"] == "2" and "Content-Length" not in read.request.headers
    assert read.request.headers["x-twice"] == "1"


def test_the_adapter_last_mounted_for_a_url_serves_it():
    session = InProcessSession()
    url = f"{BASE_URL}/api/health"
    adapters = [InProcessAdapter(lambda *_: (200, {}, b""), VirtualClock(START_TS)) for _ in range(3)]
    session.mount(BASE_URL, adapters[0])
    assert session.get_adapter(url) is adapters[0]
    session.mount(BASE_URL, adapters[1])
    assert session.get_adapter(url) is adapters[1]
    session.mount(f"{BASE_URL}/api/", adapters[2])
    assert session.get_adapter(url) is adapters[2] and session.get_adapter(f"{BASE_URL}/other") is adapters[1]


class EchoAdapter(BaseAdapter):
    """An adapter that is no InProcessAdapter: answers 200 with the request's path."""

    def send(self, request, **kwargs):
        response = requests.Response()
        response.status_code, response.url, response.request = 200, request.url, request
        response.raw = io.BytesIO(request.path_url.encode())
        return response

    def close(self):
        pass


def test_a_call_to_another_adapter_goes_through_session_send():
    answers = {}
    for kind in SESSIONS:
        session = SESSIONS[kind]()
        session.mount(BASE_URL, EchoAdapter())
        with mock.patch.object(requests.Session, "send", autospec=True, side_effect=requests.Session.send) as send:
            response = session.get(f"{BASE_URL}/api/health", params={"a": "1"})
        assert send.call_count == 1
        answers[kind] = (response.status_code, response.url, response.content, response.history)
    assert answers["lean"] == answers["plain"] == (200, f"{BASE_URL}/api/health?a=1", b"/api/health?a=1", [])


def redirected(kind: str, allow_redirects: bool) -> tuple:
    """What a client sees of an answer that redirects once, to an answer that does not."""
    answers = iter([(301, {"Location": "/api/health"}, b""), (200, {"Content-Type": "text/plain"}, b"OK")])
    paths = []

    def handler(method, path, query, headers, body, client):
        paths.append(path)
        return next(answers)

    session = SESSIONS[kind]()
    session.mount(BASE_URL, InProcessAdapter(handler, VirtualClock(START_TS)))
    response = session.get(f"{BASE_URL}/api/old", allow_redirects=allow_redirects)
    following = response.next
    return (response.status_code, response.url, response.content, [r.status_code for r in response.history],
            following.url if following is not None else None, paths)


@pytest.mark.parametrize("allow_redirects", [True, False])
def test_one_redirect_reaches_the_client_the_same_way(allow_redirects):
    assert redirected("lean", allow_redirects) == redirected("plain", allow_redirects)
    assert redirected("lean", allow_redirects)[-1] == ["/api/old", "/api/health"][:1 + allow_redirects]


@pytest.mark.parametrize("kind", SESSIONS)
def test_a_redirect_is_followed_as_requests_follows_it(kind):
    session, seen = recording(kind, answer=(302, {"Location": "/api/health"}, b""))
    with pytest.raises(requests.exceptions.TooManyRedirects):
        session.get(f"{BASE_URL}/api/old", params={"a": "1"})
    assert [call[1] for call in seen[:2]] == ["/api/old", "/api/health"] and len(seen) == session.max_redirects + 1


def test_response_hooks_of_the_session_still_run():
    session, _ = recording("lean")
    statuses = []
    session.hooks["response"].append(lambda response, **_: statuses.append(response.status_code))
    session.get(f"{BASE_URL}/api/health")
    assert statuses == [200]


def fault_outcome(kind: str, fault: str, rule: dict, timeout) -> tuple:
    """What a client on that session sees of one faulty request: the answer or the error, and
    how long it waited on the virtual clock."""
    sim = flat_sim()
    session = SESSIONS[kind]()
    session.mount(BASE_URL, sim.adapter(latency_s=0.1))
    client = SimClient(session, sim.clock, BASE_URL)
    client.login()
    sim.faults.add(fault, path="/api/query_positions", **rule)
    before = sim.clock.now()
    try:
        response = session.get(f"{BASE_URL}/api/query_positions", headers=client.auth_headers(), timeout=timeout)
        seen = (response.status_code, dict(response.headers), response.content)
    except requests.exceptions.RequestException as exc:
        seen = (type(exc), str(exc))
    return seen, sim.clock.now() - before


@pytest.mark.parametrize("fault, rule, timeout", [
    ("stall", {"stall_s": 30}, 5),
    ("stall", {"stall_s": 2}, Timeout(connect=3, read=5)),
    ("slow_headers", {"stall_s": 30}, Timeout(connect=3, read=5, total=10)),
    ("slow_headers", {"stall_s": 8}, (3, 5)),
    ("drop", {}, 5),
    ("error", {"status": 503}, 5),
    ("html", {"status": 502}, 5),
    ("malformed", {}, 5),
    ("rate_limit", {"retry_after_s": 3}, 5),
])
def test_a_simulated_fault_reaches_the_client_the_same_way(fault, rule, timeout):
    assert fault_outcome("lean", fault, rule, timeout) == fault_outcome("plain", fault, rule, timeout)


def test_the_faults_compared_do_differ():
    stalled = fault_outcome("lean", "stall", {"stall_s": 30}, 5)
    dropped = fault_outcome("lean", "drop", {}, 5)
    assert stalled[0][0] is requests.exceptions.ReadTimeout and stalled[1] == pytest.approx(5.05)
    assert dropped[0][0] is requests.exceptions.ConnectionError


# ---- identical figures ----------------------------------------------------------------------

CONFIG = mm.replay_config({}, None, None, bt.SIM_URL, bt.throwaway_private_key())
DAEMON = partial(mm.daemon_on, CONFIG, run_id=bt.RUN_ID)


def figures(hour: dict) -> dict:
    """An hour's report without its timing: every figure that is measured."""
    return {key: value for key, value in bt.plain(hour).items() if key not in bt.TIMING_FIELDS}


def test_every_request_of_a_backtest_takes_the_lean_path():
    with mock.patch.object(requests.Session, "prepare_request", side_effect=AssertionError("the full path")):
        hour = bt.run_hour(bt.SyntheticHour("calm", 0), DAEMON, CONFIG.qty, max_seconds=30)
    assert hour["exit_code"] == 0 and hour["requests"] > 20


def test_a_synthetic_hour_scores_the_same_through_either_session():
    source = bt.SyntheticHour("volatile", 3)
    plain = bt.run_hour(source, DAEMON, CONFIG.qty, max_seconds=180, lean=False)
    lean = bt.run_hour(source, DAEMON, CONFIG.qty, max_seconds=180)
    assert figures(lean) == figures(plain)
    assert plain["requests"] > 100 and plain["orders_placed"] > 0


@needs_data
def test_a_recorded_hour_scores_the_same_through_either_session():
    plain = bt.run_hour(str(CALM_HOUR), DAEMON, CONFIG.qty, max_seconds=120, lean=False)
    lean = bt.run_hour(str(CALM_HOUR), DAEMON, CONFIG.qty, max_seconds=120)
    assert figures(lean) == figures(plain)
    assert plain["requests"] > 100


def test_hours_on_two_processes_score_as_in_one_in_the_order_given():
    sources = [bt.SyntheticHour("calm", 2), bt.SyntheticHour("calm", 1)]
    alone = bt.run_hours(sources, DAEMON, CONFIG.qty, max_seconds=60, jobs=1)
    pooled = bt.run_hours(sources, DAEMON, CONFIG.qty, max_seconds=60, jobs=2)
    assert [h["hour"] for h in pooled] == ["synthetic-calm-seed2", "synthetic-calm-seed1"]
    assert [figures(h) for h in pooled] == [figures(h) for h in alone]
    assert figures(alone[0]) != figures(alone[1])


def test_the_backtest_report_is_byte_identical_with_one_job_or_two(tmp_path):
    reports = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}.json"
        result = backtest("--hours", "2", "--max-seconds", "30", "--jobs", jobs, "--json", str(out))
        assert result.returncode == 0, result.stderr
        reports.append(json.loads(out.read_text()))
    assert [h["hour"] for h in reports[0]["hours"]] == ["synthetic-calm-seed0", "synthetic-calm-seed1"]
    assert bt.report_json(without_timing(reports[1])) == bt.report_json(without_timing(reports[0]))


# ---- --jobs ---------------------------------------------------------------------------------

def test_backtest_jobs_default_to_the_core_count():
    assert build_parser().parse_args(["backtest"]).jobs == os.cpu_count()


def test_backtest_jobs_must_be_at_least_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["backtest", "--jobs", "0"])
    assert exit_.value.code == 2 and "--jobs" in capsys.readouterr().err


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_uptime_benchmark_takes_jobs_defaulting_to_the_core_count():
    uptime = load_bench("uptime")
    assert uptime.parse_args([]).jobs == os.cpu_count()
    assert uptime.parse_args(["--jobs", "3"]).jobs == 3
    with pytest.raises(SystemExit):
        uptime.parse_args(["--workers", "2"])


# ---- the speed benchmark ---------------------------------------------------------------------

def test_the_speed_benchmark_compares_both_sessions_and_finds_the_same_figures(capsys):
    speed = load_bench("backtest_speed")
    assert speed.main(["--max-seconds", "20", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "plain" in out and "lean" in out and "sim s per wall s" in out
    assert "| synthetic-calm-seed0 " in out and "| synthetic-volatile-seed0 " in out
    assert "differ" not in out


def test_the_speed_benchmark_fails_when_the_figures_differ(capsys, monkeypatch):
    speed = load_bench("backtest_speed")
    run_hour = bt.run_hour

    def miscounting(*args, lean: bool = True, **kwargs):
        hour = run_hour(*args, lean=lean, **kwargs)
        return {**hour, "requests": hour["requests"] + lean}  # the lean path counting one request more

    monkeypatch.setattr(bt, "run_hour", miscounting)
    assert speed.main(["--max-seconds", "10", "--repeat", "1"]) == 1
    assert "differ" in capsys.readouterr().out
