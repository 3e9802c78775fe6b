"""The daemon's reward estimate (status line, --status) against the simulator's own scoring of
the same run, and the setting that chooses the programme."""
from __future__ import annotations

import re
import time
from decimal import Decimal

import pytest

import market_maker as mm
from rewards import HOUR_S, PROGRAMMES
from standx_sim import backtest as bt
from tests import test_market_maker
from tests.exchange_fakes import FakeClock
from tests.fake_api import FakeAuth

KEY = test_market_maker.KEY
exchange = test_market_maker.exchange  # the FakeApi fixture, shared

HOUR_FIGURE = re.compile(r"reward (\S+) \(estimate, second-hand rules\): hour=([0-9.]+)MH@(\S+) ")


def run_and_keep_the_daemon(config: mm.Config, source: bt.SyntheticHour, seconds: float):
    """One backtest hour cut to `seconds`; its figures, the daemon, and the simulator's meter."""
    kept = {}

    def factory(session, clock, feed):
        maker, address = mm.daemon_on(config, session, clock, feed, run_id=bt.RUN_ID)
        kept["maker"] = maker
        return maker, address

    figures = bt.run_hour(source, factory, config.qty, max_seconds=seconds,
                          programme=PROGRAMMES[config.reward_programme])
    return figures, kept["maker"]


@pytest.mark.parametrize("programme, preset", [("cmy-2026-08", "volatile"), ("uptime-2026-01", "calm")])
def test_the_status_lines_estimate_agrees_with_the_simulators_scoring(programme, preset):
    config = mm.replay_config({"MARKET_MAKER_REWARD_PROGRAMME": programme}, None, None, bt.SIM_URL,
                              bt.throwaway_private_key())
    figures, maker = run_and_keep_the_daemon(config, bt.SyntheticHour(preset, 0), 1200)
    line = maker.status_line()
    shown = HOUR_FIGURE.search(line)
    assert shown, line
    assert shown.group(1) == programme and shown.group(3) == "1x"
    # The simulator scored every change at the exchange; the daemon sampled what it believed
    # rested, each loop. The simulator's figure is earned over 1200 s of the hour: projected to
    # the hour, as the status line's is.
    simulator = figures["maker_hours_per_hour"]
    assert simulator > 0 and figures["tier_1x_hours"] == 1
    assert float(shown.group(2)) == pytest.approx(simulator, rel=0.03)


def test_without_rules_for_the_symbol_the_status_line_says_so():
    config = mm.replay_config({}, None, None, bt.SIM_URL, bt.throwaway_private_key())
    text = mm.reward_estimate(None, mm.replace(config, symbol="XAU-USD"), 0.0)
    assert text.endswith("no rules for XAU-USD")


def test_the_estimate_shows_this_hour_the_last_and_the_day():
    config = mm.replay_config({}, None, None, bt.SIM_URL, bt.throwaway_private_key())
    programme = PROGRAMMES[config.reward_programme]
    meter = mm.RewardMeter(programme, programme.pairs["BTC-USD"])
    day = 20_000 * 24 * HOUR_S
    meter.record(day + 3 * HOUR_S, 0.0015)  # from 03:00, two-sided at 7.5 bps with 0.005 BTC
    meter.record(day + 4.5 * HOUR_S, 0.0015)
    text = mm.reward_estimate(meter, config, day + 4.5 * HOUR_S)
    # last hour (03:00-04:00): 0.0015; this hour on track for 0.0015; today: 1.5 hours of it
    assert text.endswith("hour=0.001500MH@1x last=0.001500MH@1x today=0.002250MH")


def test_the_programme_is_one_setting_and_a_wrong_one_is_refused():
    env = {"WALLET_PRIVATE_KEY": "0x" + "11" * 32}
    assert mm.load_config(env).reward_programme == "cmy-2026-08"
    assert mm.load_config({**env, "MARKET_MAKER_REWARD_PROGRAMME": "uptime-2026-01"}).reward_programme == \
        "uptime-2026-01"
    with pytest.raises(mm.ConfigError, match="MARKET_MAKER_REWARD_PROGRAMME: must be one of cmy-2026-08, "
                                             "uptime-2026-01 .got 'cmy-2027'."):
        mm.load_config({**env, "MARKET_MAKER_REWARD_PROGRAMME": "cmy-2027"})


# ---- what the review of the estimate found ----------------------------------------------------

def started(state_path: str | None = None, **env: str) -> mm.MarketMaker:
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY, **env})
    clock = FakeClock()
    maker = mm.MarketMaker(config, FakeAuth(clock), clock=clock, run_id="abc123", state_path=state_path)
    maker.start()
    return maker


def loops(maker: mm.MarketMaker, seconds: float) -> None:
    for _ in range(int(seconds / 0.5)):
        maker.clock.sleep(0.5)
        maker.run_once()


def two_sided_s(maker: mm.MarketMaker) -> float:
    return sum(tally.two_sided_s for tally in maker.reward.hours.values())


def test_time_the_daemon_cannot_see_counts_as_not_quoting(exchange):
    maker = started()
    loops(maker, 60)
    seen = two_sided_s(maker)
    assert 55 <= seen <= 60
    exchange.fail("query_symbol_price")  # ten minutes of failing reads: blind
    exchange.fail("query_positions")
    loops(maker, 600)
    exchange.heal("query_symbol_price")
    exchange.heal("query_positions")
    loops(maker, 30)
    # the blind ten minutes count nothing; the estimate resumes with the first loop that reads
    assert two_sided_s(maker) == pytest.approx(seen + 30, abs=2)
    assert maker.uptime.share_since(0) == pytest.approx((seen + 30) / 690, abs=0.01)


def test_the_hours_are_the_exchanges_and_a_later_step_of_this_hosts_clock_changes_nothing(exchange):
    config = mm.load_config({"WALLET_PRIVATE_KEY": KEY})
    clock = FakeClock()
    maker = mm.MarketMaker(config, FakeAuth(clock), clock=clock, run_id="abc123")
    maker.auth.time_offset_s = -1500.0  # the login found this host 25 minutes ahead of the exchange
    maker.start()
    exchange_now = clock.wall() - 1500.0
    assert maker._hour_time() == pytest.approx(exchange_now)
    clock.step_wall(900)  # then this host's clock jumps (and the next requests re-measure the offset)
    maker.auth.time_offset_s = -2400.0
    clock.sleep(10)
    assert maker._hour_time() == pytest.approx(exchange_now + 10)


def test_a_quote_on_the_wrong_side_of_the_mark_still_counts_as_quoting(exchange):
    maker = started()
    loops(maker, 2)
    buy = maker.our.resting("buy")[0].price  # 7.5 bps under 100
    maker.our.resting("sell")[0].price = buy + Decimal("0.05")
    # the mark lags under our buy: the buy 2 bps above it, the sell 7 bps
    maker.market = mm.Market(buy - Decimal("0.02"), None, None, maker.clock.monotonic())
    assert maker.quoting_both_sides() and maker.reward_value(maker.reward) > 0


def test_a_restart_takes_back_the_days_reward_and_round_trips(exchange, tmp_path):
    path = str(tmp_path / "state.json")
    first = started(path)
    loops(first, 120)
    first.day = mm.DayTotals(time.strftime("%Y-%m-%d", time.gmtime(first.clock.wall())), 2, Decimal("0.5"),
                             Decimal("-0.1"))
    first.write_state()
    earned = first.reward.day_so_far(first._hour_time())
    assert earned > 0
    second = started(path)
    assert second.reward.day_so_far(second._hour_time()) == pytest.approx(earned, rel=0.01)
    assert (second.day.fills, second.day.fees, second.day.pnl) == (2, Decimal("0.5"), Decimal("-0.1"))


def test_a_restart_under_another_programme_starts_its_estimate_afresh(exchange, tmp_path):
    path = str(tmp_path / "state.json")
    first = started(path)
    loops(first, 60)
    first.write_state()
    second = started(path, MARKET_MAKER_REWARD_PROGRAMME="uptime-2026-01")
    assert second.reward.hours == {}


def test_a_garbled_state_file_is_ignored(exchange, tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"reward_programme": "cmy-2026-08", "reward_hours": {"x": [1], "5": "no"}, '
                    '"day_totals": {"day": "2026-01-01", "round_trips": "many"}}')
    assert started(str(path)).reward.hours == {}


def test_status_of_a_stopped_daemon_shows_its_last_estimate_and_day(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"updated_at": 1000, "running": false, "uptime": "uptime 1h=90.0% hour=91.0%", '
                    '"reward": "reward cmy-2026-08 (estimate, second-hand rules): hour=0.001000MH@1x", '
                    '"day": "day: no round trip yet"}')
    shown = mm.read_state(str(path), 1010)
    assert shown.startswith("stopped 10 s ago; last: uptime 1h=90.0%")
    assert "hour=0.001000MH@1x" in shown and "day: no round trip yet" in shown


def test_simulate_says_when_the_programme_has_no_rules_for_the_symbol():
    from standx_sim.simulate import reward_text
    text = reward_text({"reward_programme": "cmy-2026-08", "maker_hours": None, "symbol": "XAU-USD"})
    assert text == "reward under cmy-2026-08: none estimated, the programme has no rules for XAU-USD"


def test_a_replay_starting_late_into_its_hour_is_named_as_unable_to_reach_the_tier(capsys):
    from standx_sim.__main__ import warn_of_short_hours
    warn_of_short_hours([{"hour": "on-time", "start_ts": 7200.4}, {"hour": "late", "start_ts": 7200 + 35 * 60}])
    out = capsys.readouterr().out
    assert "on-time" not in out and "late starts 35 minutes into its clock hour" in out


def test_the_wait_for_a_read_that_fails_counts_as_blind_too(exchange, monkeypatch):
    maker = started()
    loops(maker, 10)
    before = two_sided_s(maker)

    def slow_failure(*_args, **_kwargs):
        maker.clock.sleep(10)  # the read hangs until its timeout
        raise mm.StandXError("read timed out", None)

    monkeypatch.setattr(exchange, "query_symbol_price", slow_failure)
    monkeypatch.setattr(exchange, "query_positions", slow_failure)
    maker.clock.sleep(0.5)
    maker.run_once()
    assert two_sided_s(maker) == pytest.approx(before + 0.5, abs=0.01)  # not + 10.5


def test_a_stopped_daemons_hour_is_scored_as_it_stands(exchange, tmp_path):
    maker = started(str(tmp_path / "state.json"))  # FakeClock starts 800 s into its clock hour
    loops(maker, 300)
    assert "hour=" in maker.status_line() and "MH@1x" in maker.status_line()  # on track while quoting
    maker.request_stop("test")
    maker.write_state()
    saved = mm.read_state(str(tmp_path / "state.json"), maker.clock.wall())
    # stopped after 5 two-sided minutes of the hour: short of 30, it earns nothing
    assert "hour=0.000000MH@no tier" in saved and "today=0.000000MH" in saved


def test_a_tally_no_quoting_could_make_is_not_taken_back():
    programme = PROGRAMMES["uptime-2026-01"]
    meter = mm.RewardMeter(programme, programme.pairs["BTC-USD"])
    hour = 20_000
    saved = {str(hour): [3600, 3600, 1e300 * 3600, [[1e300, 3600]]],  # over the 2 BTC cap
             str(hour - 1): [3600, 3600, 0.0025 * 3600, [[0.0025, 3600]]]}
    assert meter.restore(saved, hour * HOUR_S + 10) == 1 and list(meter.hours) == [hour - 1]
