"""`python -m standx_sim record`: frames read, files written as the recordings are, pacing of
connections, and whole recordings of the served simulator's market stream replayed."""
from __future__ import annotations

import gzip
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

from standx_sim import SimServer, Simulator, SyntheticMarket
from standx_sim.clock import WallClock
from standx_sim.market import RecordedMarket
from standx_sim.record import (Backoff, Book, ConnectionBudget, RecordError, Recorder, RecordingFiles,
                               exchange_ms, positive_decimal, record_for, top_of_book)

REPO = Path(__file__).resolve().parents[1]
RECEIVED_MS = 1_767_657_600_123  # 2026-01-06 00:00:00.123 UTC
TIMEOUT_S = 15  # a deadline for what takes well under a second


def rows(path) -> list[list[str]]:
    with gzip.open(path, "rt") as f:
        return [line.rstrip("\n").split(",") for line in f]


# ---- reading frames ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [("95000.10", Decimal("95000.10")), (3, Decimal(3)),
                                             (0.5, Decimal("0.5"))])
def test_a_positive_decimal_is_read_from_a_string_or_a_number(value, expected):
    assert positive_decimal(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "NaN", "sNaN", "Infinity", "abc", "", None, True, [1]])
def test_anything_but_a_positive_finite_number_is_refused(value):
    with pytest.raises(ValueError):
        positive_decimal(value)


def test_the_top_of_an_unsorted_book_skips_removed_levels():
    data = {"bids": [["94999.5", "1"], ["95000.0", "0"], ["94999.9", "0.25"]],
            "asks": [["95001", "2"], ["95000.1", "0.5"], ["95000.0", "0"]]}
    assert top_of_book(data) == Book(Decimal("94999.9"), Decimal("95000.1"), Decimal("0.25"), Decimal("0.5"))


def test_a_crossed_book_is_kept_as_sent():
    data = {"bids": [["95000.2", "1"]], "asks": [["95000.1", "1"]]}
    assert top_of_book(data).bid > top_of_book(data).ask


def test_a_book_with_an_empty_side_has_no_top():
    assert top_of_book({"bids": [["95000", "1"]], "asks": []}) is None
    assert top_of_book({"bids": [["95000", "1"]], "asks": [["95001", "0"]]}) is None


@pytest.mark.parametrize("data", [None, [], {"bids": "x", "asks": []}, {"bids": [["95000"]], "asks": []},
                                  {"asks": [["95000", "1"]]}, {"bids": [["x", "1"]], "asks": [["95001", "1"]]},
                                  {"bids": [["95000", "-1"]], "asks": [["95001", "1"]]},
                                  {"bids": [["0", "1"]], "asks": [["95001", "1"]]}])
def test_a_malformed_book_is_refused(data):
    with pytest.raises(ValueError):
        top_of_book(data)


@pytest.mark.parametrize("value, expected", [
    ("2026-01-06T00:00:01.5Z", 1_767_657_601_500),
    ("2026-01-06T00:00:01.123456789Z", 1_767_657_601_123),  # nanoseconds, which Python 3.10 cannot parse
    ("2026-01-06T00:00:01Z", 1_767_657_601_000),
    ("2026-01-06T02:00:01.250+02:00", 1_767_657_601_250),
    ("2026-01-06T02:00:01.250+0200", 1_767_657_601_250),
    ("2026-01-06 00:00:01.250", 1_767_657_601_250),  # no zone: UTC
    (1_767_657_601_250, 1_767_657_601_250),  # Unix milliseconds
    ("1767657601250", 1_767_657_601_250),
    (1_767_657_601.25, 1_767_657_601_250),  # Unix seconds
    (None, RECEIVED_MS), ("yesterday", RECEIVED_MS), ({"t": 1}, RECEIVED_MS), ("2026-13-45T00:00:00Z", RECEIVED_MS),
])
def test_the_exchange_time_is_read_in_milliseconds_else_the_receive_time(value, expected):
    assert exchange_ms(value, RECEIVED_MS) == expected


# ---- writing files -----------------------------------------------------------------------------

def book(bid: str, ask: str, bid_qty: str = "1", ask_qty: str = "2") -> Book:
    return Book(Decimal(bid), Decimal(ask), Decimal(bid_qty), Decimal(ask_qty))


def test_files_have_the_recorded_format_and_a_row_only_when_the_top_changes(tmp_path):
    files = RecordingFiles(str(tmp_path / "rec"))
    assert files.book(1000, book("95000.0", "95000.2"))
    assert not files.book(1100, book("95000.0", "95000.2"))
    assert files.book(1200, book("95000.0", "95000.2", bid_qty="0.5"))  # a size change is a change
    files.trade(1150, Decimal("95000.2"), Decimal("0.01"), "buy")
    files.close()
    assert rows(tmp_path / "rec.bbo.csv.gz") == [["ts_ms", "bid", "ask", "bid_qty", "ask_qty"],
                                                 ["1000", "95000.0", "95000.2", "1", "2"],
                                                 ["1200", "95000.0", "95000.2", "0.5", "2"]]
    assert rows(tmp_path / "rec.trades.csv.gz") == [["ts_ms", "price", "qty", "taker_side"],
                                                    ["1150", "95000.2", "0.01", "buy"]]


def test_a_row_never_goes_back_in_time_so_the_replay_accepts_it(tmp_path):
    files = RecordingFiles(str(tmp_path / "rec"))
    files.book(2000, book("95000.0", "95000.2"))
    files.book(1990, book("95000.1", "95000.2"))  # the exchange's clocks disagree by a few ms
    files.trade(3000, Decimal("95000.2"), Decimal("0.01"), "buy")
    files.trade(2999, Decimal("95000.1"), Decimal("0.02"), "sell")
    files.close()
    assert [r[0] for r in rows(tmp_path / "rec.bbo.csv.gz")[1:]] == ["2000", "2000"]
    assert [r[0] for r in rows(tmp_path / "rec.trades.csv.gz")[1:]] == ["3000", "3000"]
    market = RecordedMarket([str(tmp_path / "rec")])
    assert market.book_at(2.0).bid == Decimal("95000.1")
    assert [t.qty for t in market.trades_between(0, 3.0)] == [Decimal("0.01"), Decimal("0.02")]


def test_discarded_files_are_gone(tmp_path):
    files = RecordingFiles(str(tmp_path / "rec"))
    files.discard()
    assert list(tmp_path.iterdir()) == []


# ---- pacing ------------------------------------------------------------------------------------

def test_the_budget_allows_30_new_connections_in_any_rolling_minute():
    budget = ConnectionBudget()
    for k in range(30):
        assert budget.wait_s(k * 0.5) == 0
        budget.spend(k * 0.5)
    assert budget.wait_s(20.0) == pytest.approx(40.0)  # the first one leaves the window at 60 s
    assert budget.wait_s(60.0) == 0


def test_the_backoff_doubles_to_its_ceiling_with_jitter_and_starts_over_after_a_reset():
    backoff = Backoff(1.0, 60.0, random.Random(7))
    delays = [backoff.next_s() for _ in range(9)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays[-3:])) == 3  # jittered, not in step with other clients
    backoff.reset()
    assert backoff.next_s() <= 1.0


# ---- frames handled by a recorder --------------------------------------------------------------

@pytest.fixture
def recorder(tmp_path):
    files = RecordingFiles(str(tmp_path / "rec"))
    yield Recorder("ws://127.0.0.1:9/ws-stream/v1", "BTC-USD", files, seconds=60)
    files.close()


def frame(channel: str, data, symbol: str = "BTC-USD") -> str:
    return json.dumps({"seq": 1, "channel": channel, "symbol": symbol, "data": data})


def test_our_book_and_trades_are_written(recorder):
    recorder.handle(frame("depth_book", {"bids": [["95000", "1"]], "asks": [["95000.2", "2"]],
                                          "symbol": "BTC-USD", "time": "2026-01-06T00:00:01Z"}), RECEIVED_MS)
    recorder.handle(frame("public_trade", {"price": "95000.2", "qty": "0.1", "taker_side": "buy",
                                            "symbol": "BTC-USD"}), RECEIVED_MS)
    assert (recorder.files.book_rows, recorder.files.trade_rows, recorder.ignored) == (1, 1, 0)


@pytest.mark.parametrize("text", [
    "not json", "[1, 2]", '"text"', b"\xff\xfe",
    frame("price", {"mark_price": "95000"}),                       # a channel we did not ask for
    frame("depth_book", {"bids": [["1", "1"]], "asks": [["2", "1"]]}, symbol="ETH-USD"),
    frame("depth_book", {"bids": [["x", "1"]], "asks": [["2", "1"]]}),
    frame("depth_book", {"bids": [], "asks": [["2", "1"]]}),
    frame("depth_book", "oops"),
    frame("public_trade", {"price": "95000", "qty": "0.1", "taker_side": "up"}),
    frame("public_trade", {"price": "-1", "qty": "0.1", "taker_side": "buy"}),
    frame("public_trade", {"price": "1", "qty": "0.1", "taker_side": "buy", "symbol": "ETH-USD"}),
    frame("public_trade", None),
    '{"seq": 3, "channel": "auth", "data": {"code": 200, "msg": "success"}}',
])
def test_other_or_malformed_frames_are_counted_and_ignored(recorder, text):
    recorder.handle(text, RECEIVED_MS)
    assert (recorder.files.book_rows, recorder.files.trade_rows, recorder.ignored) == (0, 0, 1)


def test_a_refused_subscription_ends_the_recording_as_a_bad_argument(recorder):
    with pytest.raises(RecordError, match="refused the subscription to BTC-USD: 400 invalid request payload") as exc:
        recorder.handle('{"code": 400, "message": "invalid request payload"}', RECEIVED_MS)
    assert exc.value.exit_code == 2


# ---- the command -------------------------------------------------------------------------------

def closed_port_url() -> str:
    """A loopback URL nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}/ws-stream/v1"


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    from standx_sim.__main__ import main  # the entry point loads the daemon: only these tests need it
    try:
        code = main(["record", *argv])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, says", [
    (["--minutes", "0"], "argument --minutes: must be a number greater than 0: '0'"),
    (["--minutes", "abc"], "argument --minutes: not a number: 'abc'"),
    (["--symbol", "btc usd"], "--symbol must be a symbol such as BTC-USD, got 'btc usd'"),
    (["--url", "https://perps.standx.com/ws-stream/v1"], "--url must be a ws:// or wss:// URL"),
    (["--url", "ws://"], "--url must be a ws:// or wss:// URL"),
    (["--out", "{tmp}/nowhere/rec"], "--out: no directory"),
    (["--out", "{tmp}/old"], "old.bbo.csv.gz already exists; choose another prefix"),
])
def test_a_bad_argument_is_refused_in_one_line_with_exit_2(tmp_path, capsys, argv, says):
    (tmp_path / "old.bbo.csv.gz").write_bytes(b"a recording")
    args = {"--symbol": "BTC-USD", "--minutes": "1", "--out": str(tmp_path / "rec"), "--url": closed_port_url()}
    args.update(zip(argv[::2], (value.format(tmp=tmp_path) for value in argv[1::2])))
    code, out, err = run_main(capsys, *(item for pair in args.items() for item in pair))
    assert code == 2
    lines = err.strip().splitlines()
    assert says in lines[-1] and (len(lines) == 1 or lines[0].startswith("usage:")) and "Traceback" not in err
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.bbo.csv.gz"]


def test_a_stream_that_cannot_be_reached_at_the_start_exits_1_and_leaves_no_file(tmp_path, capsys):
    code, out, err = run_main(capsys, "--symbol", "BTC-USD", "--minutes", "1", "--out", str(tmp_path / "rec"),
                              "--url", closed_port_url())
    assert code == 1
    assert err.strip().splitlines() == [err.strip()] and err.startswith("standx_sim: cannot connect to ws://127.0.0.1:")
    assert list(tmp_path.iterdir()) == []


def test_record_for_refuses_an_unreachable_stream(tmp_path):
    with pytest.raises(RecordError, match="cannot connect") as exc:
        record_for(closed_port_url(), "BTC-USD", 5, str(tmp_path / "rec"))
    assert exc.value.exit_code == 1


# ---- recordings of the served simulator --------------------------------------------------------

class Served:
    """A quiet BTC-USD market (95000.0 / 95000.2 until a test moves it) served on a loopback port."""

    def __init__(self) -> None:
        clock = WallClock()
        market = SyntheticMarket(start_ts=clock.now(), start_price=Decimal("95000.1"),
                                 volatility_bps_per_sqrt_s=0, spread_usd=(Decimal("0.2"),) * 2)
        self.sim = Simulator(clock, market, visibility_delay_s=0.05, queue=False, mark="mid")
        self.server = SimServer(self.sim)
        self.stream_url = self.server.start().replace("http", "ws", 1) + "/ws-stream/v1"

    def act(self, action) -> None:
        """Run action(sim) as the server's threads do: under its lock."""
        with self.server.lock:
            action(self.sim)

    def subscribed_session(self, other_than=None):
        """The recorder's connection once it has subscribed to both channels (a new one when
        other_than is given); fails the test after TIMEOUT_S."""
        ends = time.monotonic() + TIMEOUT_S
        while time.monotonic() < ends:
            with self.server.lock:
                for session in self.sim.streams.sessions():
                    if session is not other_than and session.public == {"depth_book", "public_trade"}:
                        return session
            time.sleep(0.02)
        raise AssertionError("the recorder never subscribed")


@pytest.fixture
def served():
    served = Served()
    yield served
    served.server.stop()


class Recording:
    """record_for in a thread, reporting progress every 0.2 s and reconnecting after 0.05 s."""

    def __init__(self, pool: ThreadPoolExecutor, prefix: str) -> None:
        self.prefix = prefix
        self.lines: list[str] = []
        self._pool = pool
        self._stopping = threading.Event()

    def start(self, url: str, seconds: float = 60.0, symbol: str = "BTC-USD") -> Future:
        return self._pool.submit(record_for, url, symbol, seconds, self.prefix, stop=self._stopping.is_set,
                                 say=self.lines.append, backoff=Backoff(0.05, 1.0), progress_every_s=0.2)

    def progress_says(self, counts: str) -> None:
        """Wait for a progress line ending with `counts` ("3 book rows, 2 trades, 0 reconnects")."""
        ends = time.monotonic() + TIMEOUT_S
        while not any(line.endswith(counts) for line in self.lines):
            assert time.monotonic() < ends, f"no progress line says {counts!r}: {self.lines}"
            time.sleep(0.02)

    def stop(self) -> None:
        self._stopping.set()


@pytest.fixture
def recording(tmp_path):
    with ThreadPoolExecutor(1) as pool:
        recording = Recording(pool, str(tmp_path / "rec"))
        yield recording
        recording.stop()


def test_a_recording_of_moves_and_trades_replays_as_it_happened(served, recording):
    started_ms = time.time() * 1000
    summary = recording.start(served.stream_url)
    served.subscribed_session()
    served.act(lambda sim: sim.exchange.set_mid(Decimal("95010.1")))
    served.act(lambda sim: sim.exchange.add_trade(Decimal("95010.2"), Decimal("0.01"), "buy"))
    served.act(lambda sim: sim.streams.send_garbage("not json"))
    served.act(lambda sim: sim.exchange.set_mid(Decimal("94990.1")))
    served.act(lambda sim: sim.exchange.add_trade(Decimal("94990.0"), Decimal("0.02"), "sell"))
    recording.progress_says("3 book rows, 2 trades, 0 reconnects")
    recording.stop()
    result = summary.result(timeout=TIMEOUT_S)
    ended_ms = time.time() * 1000
    assert (result.book_rows, result.trades, result.ignored, result.connections) == (3, 2, 1, 1)
    assert recording.lines[0].startswith(f"recording BTC-USD from {served.stream_url}")
    books = rows(recording.prefix + ".bbo.csv.gz")[1:]
    assert [row[1:3] for row in books] == [["95000.0", "95000.2"], ["95010.0", "95010.2"], ["94990.0", "94990.2"]]
    assert all(started_ms - 1000 <= int(row[0]) <= ended_ms for row in books)  # the simulator's time
    market = RecordedMarket([recording.prefix])
    last_ts = int(books[-1][0]) / 1000
    assert market.book_at(last_ts)[:2] == (Decimal("94990.0"), Decimal("94990.2"))
    assert [(t.price, t.qty, t.taker_side) for t in market.trades_between(0, ended_ms / 1000)] == [
        (Decimal("95010.2"), Decimal("0.01"), "buy"), (Decimal("94990.0"), Decimal("0.02"), "sell")]


def test_a_recording_ends_by_itself_after_its_duration(served, recording):
    result = recording.start(served.stream_url, seconds=0.5).result(timeout=TIMEOUT_S)
    assert result.seconds >= 0.5 and (result.book_rows, result.connections) == (1, 1)  # the snapshot
    RecordedMarket([recording.prefix])


@pytest.mark.parametrize("end", [lambda sim: sim.streams.drop_all(), lambda sim: sim.streams.close_all(1000)],
                         ids=["dropped", "closed"])
def test_a_connection_lost_mid_recording_is_reopened_and_the_files_stay_valid(served, recording, end):
    summary = recording.start(served.stream_url)
    first = served.subscribed_session()
    served.act(lambda sim: sim.exchange.set_mid(Decimal("95010.1")))
    served.act(end)
    served.subscribed_session(other_than=first)
    served.act(lambda sim: sim.exchange.set_mid(Decimal("95020.1")))
    served.act(lambda sim: sim.exchange.add_trade(Decimal("95020.2"), Decimal("0.01"), "buy"))
    recording.progress_says("3 book rows, 1 trades, 1 reconnects")
    recording.stop()
    result = summary.result(timeout=TIMEOUT_S)
    assert (result.connections, result.book_rows, result.trades) == (2, 3, 1)
    assert result.down_s > 0
    market = RecordedMarket([recording.prefix])
    assert [change.bid for change in market.book_changes_between(0, time.time())] == [
        Decimal("95000.0"), Decimal("95010.0"), Decimal("95020.0")]  # the snapshot after the drop adds no row


def test_a_symbol_the_stream_refuses_ends_the_recording_and_leaves_no_file(served, recording, tmp_path):
    with pytest.raises(RecordError, match="refused the subscription to ETH-USD") as exc:
        recording.start(served.stream_url, symbol="ETH-USD").result(timeout=TIMEOUT_S)
    assert exc.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_the_command_stops_on_sigterm_with_complete_files_and_a_summary(served, tmp_path):
    # When the recording ran on the main thread, about one SIGTERM in ten hung it for good inside
    # websockets' recv (a queue.SimpleQueue wait interrupted by a signal, before Python 3.13).
    prefix = str(tmp_path / "rec")
    process = subprocess.Popen([sys.executable, "-m", "standx_sim", "record", "--symbol", "BTC-USD",
                                "--minutes", "5", "--out", prefix, "--url", served.stream_url],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        served.subscribed_session()
        served.act(lambda sim: sim.exchange.add_trade(Decimal("95000.2"), Decimal("0.01"), "buy"))
        served.act(lambda sim: sim.exchange.set_mid(Decimal("95010.1")))
        time.sleep(0.5)  # the frames cross the loopback (the process shows nothing before it ends)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("recording BTC-USD from ") and len(lines) == 2
    assert lines[1].startswith("recorded BTC-USD for ") and "2 book rows, 1 trades, 0 reconnects" in lines[1]
    assert "Traceback" not in err
    market = RecordedMarket([prefix])
    assert market.book_at(time.time()).bid == Decimal("95010.0")


def test_a_silent_connection_is_given_up_by_its_keepalive_and_reopened(served, recording, monkeypatch):
    monkeypatch.setattr("standx_sim.record.PING_INTERVAL_S", 0.1)
    monkeypatch.setattr("standx_sim.record.PING_TIMEOUT_S", 0.2)
    summary = recording.start(served.stream_url)
    first = served.subscribed_session()
    served.act(lambda sim: sim.streams.silence(1.0))
    served.subscribed_session(other_than=first)
    served.act(lambda sim: sim.exchange.set_mid(Decimal("95010.1")))
    recording.progress_says("2 book rows, 0 trades, 1 reconnects")
    recording.stop()
    assert summary.result(timeout=TIMEOUT_S).connections == 2
