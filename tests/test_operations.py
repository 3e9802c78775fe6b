"""Running for weeks: the systemd unit, the log file, --status, alerts from the daemon, and the
local reward estimate."""
from __future__ import annotations

import configparser
import logging
import logging.handlers
import signal
import subprocess
import sys
from decimal import Decimal

import pytest
from eth_account import Account

import market_maker as mm
import standx_api as api
from standx_auth import StandXAuth, StandXError
from standx_sim.simulate import throwaway_key
from tests.sim_helpers import realistic_flat_sim, trade_through
from tests.sim_process import REPO, account, clean_env, start_daemon_process, wait_until
from tests.test_e2e import resting, run_for, start_daemon

UNIT = REPO / "deploy" / "standx-market-maker@.service"


# ---- systemd ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(UNIT)
    return parser


def test_unit_restarts_on_failure_but_not_on_errors_a_person_must_fix(unit):
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert set(service["RestartPreventExitStatus"].split()) == {
        str(mm.EXIT_CONFIG), str(mm.EXIT_ALREADY_RUNNING), str(mm.EXIT_BALANCE_FLOOR), str(mm.EXIT_REFUSED)}


def test_unit_waits_longer_than_the_daemons_own_stop_deadline(unit):
    assert int(unit["Service"]["TimeoutStopSec"]) > mm.STOP_DEADLINE_S + 5
    assert unit["Service"]["KillSignal"] == "SIGTERM"


def test_unit_reads_the_instances_env_file_and_logs_to_the_journal_only(unit):
    service = unit["Service"]
    assert service["EnvironmentFile"].endswith("/.env.%i")
    assert "market_maker.py" in service["ExecStart"] and "--log-file" not in service["ExecStart"]
    # the same file again, so that a stray .env in the working directory is never read
    assert service["ExecStart"].endswith(f"--env-file {service['EnvironmentFile']}")


def test_unit_is_hardened(unit):
    service = unit["Service"]
    assert service["NoNewPrivileges"] == "true" and service["PrivateTmp"] == "true"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"].endswith("/logs")  # the state file for --status


# ---- log file -----------------------------------------------------------------------------------

@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_file_is_rotated_by_size_and_nothing_goes_to_stdout(tmp_path, capsys, restore_logging):
    path = tmp_path / "acct.log"
    mm.setup_logging("INFO", str(path))
    logging.getLogger("market_maker").info("hello from the daemon")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert (handler.maxBytes, handler.backupCount) == (10 * 1024 * 1024, 5)
    assert len(logging.getLogger().handlers) == 1
    assert "hello from the daemon" in path.read_text()
    assert capsys.readouterr().out == ""


def test_without_a_log_file_the_daemon_logs_to_stdout(capsys, restore_logging):
    mm.setup_logging("INFO")
    logging.getLogger("market_maker").info("to the journal")
    assert "to the journal" in capsys.readouterr().out


def test_urllib3_debug_lines_are_kept_out_even_at_debug(restore_logging):
    mm.setup_logging("DEBUG")
    assert not logging.getLogger("urllib3").isEnabledFor(logging.DEBUG)


# ---- --status -----------------------------------------------------------------------------------

def test_read_only_client_refuses_every_order_request():
    auth = StandXAuth("0x" + "11" * 32, read_only=True)
    for call in (lambda: api.new_limit_order(auth, "BTC-USD", "buy", "0.005", "1", "alo", cl_ord_id="x"),
                 lambda: api.new_market_order(auth, "BTC-USD", "sell", "0.005", reduce_only=True),
                 lambda: api.cancel_orders(auth, cl_ord_ids=["x"])):
        with pytest.raises(StandXError, match="read-only client"):
            call()
    assert auth.requests_sent == 0


def test_status_shows_balance_position_and_our_orders_and_sends_no_order(sim_server, tmp_path):
    key = throwaway_key()
    address = Account.from_key(key).address.lower()
    daemon = start_daemon_process(sim_server, key, tmp_path)
    try:
        assert wait_until(lambda: len(account(sim_server, address).get("open_orders", [])) == 2, 20)
        placed_before = account(sim_server, address)["metrics"]["requests"].get("/api/new_order")
        status = subprocess.run(
            [sys.executable, str(REPO / "market_maker.py"), "--status"], cwd=tmp_path, timeout=60,
            env=clean_env(WALLET_PRIVATE_KEY=key, STANDX_AUTH_BASE_URL=sim_server,
                          STANDX_PERPS_BASE_URL=sim_server, MARKET_MAKER_STATE_DIR=str(tmp_path)),
            capture_output=True, text=True)
        placed_after = account(sim_server, address)["metrics"]["requests"].get("/api/new_order")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("account  0x") and lines[1] == "balance  1000"
    assert lines[2] == "position 0"
    orders = [line for line in lines if line.startswith(("  buy", "  sell"))]
    assert len(orders) == 2 and all(" 7." in line and "bps" in line for line in orders)
    assert lines[-1].startswith("daemon   running (pid")
    assert placed_after == placed_before  # the status run placed nothing
    assert key[2:] not in status.stdout + status.stderr


def test_status_says_when_no_daemon_runs(tmp_path):
    assert mm.read_state(str(tmp_path / "none.json"), 0).startswith("no state file")


def test_status_reports_a_stale_state_as_no_news(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"updated_at": 1000, "running": true, "uptime": "uptime 1h=99.0%"}')
    assert mm.read_state(str(path), 1000 + 4 * mm.STATUS_EVERY_S).startswith("no news for 240 s")


# ---- alerts from the daemon ---------------------------------------------------------------------

class RecordingAlerter:
    def __init__(self):
        self.sent: list[tuple[str, str]] = []
        self.conditions: dict[str, bool] = {}

    def send(self, event: str, text: str) -> None:
        self.sent.append((event, text))

    def condition(self, key: str, active: bool, text: str) -> None:
        if self.conditions.get(key, False) != active:  # every condition starts inactive
            self.sent.append((key if active else f"{key}_recovered", text))
        self.conditions[key] = active

    def events(self) -> list[str]:
        return [event for event, _ in self.sent]


def daemon_with_alerts(sim, **env):
    maker = start_daemon(sim, **env)
    maker.alerter = RecordingAlerter()
    return maker


def test_daemon_alerts_a_fill_and_its_close():
    sim = realistic_flat_sim()
    maker = daemon_with_alerts(sim)
    run_for(maker, 2)
    buy = resting(sim, maker, "buy")[0]
    trade_through(sim, buy, Decimal("0.01"))
    run_for(maker, 3)
    assert maker.alerter.events() == ["fill", "close"]


def test_daemon_alerts_a_mode_change():
    sim = realistic_flat_sim()
    maker = daemon_with_alerts(sim)
    sim.exchange.set_balance(maker.auth.address.lower(), Decimal("75"))
    run_for(maker, 6)
    assert ("mode", "balance 75: mode degraded_1") in maker.alerter.sent


def test_daemon_alerts_repeated_read_failures_once_and_their_recovery():
    sim = realistic_flat_sim()
    maker = daemon_with_alerts(sim)
    sim.faults.add("error", path="/api/query_positions", for_s=30)
    run_for(maker, 40)
    assert maker.alerter.events() == ["failures", "failures_recovered"]
    assert "position read failed" in maker.alerter.sent[0][1]


def test_daemon_alerts_start_and_stop_with_the_reason():
    sim = realistic_flat_sim()
    config = mm.load_config({"WALLET_PRIVATE_KEY": throwaway_key(), "STANDX_AUTH_BASE_URL": "http://standx.sim",
                             "STANDX_PERPS_BASE_URL": "http://standx.sim"})
    maker = start_daemon(sim)
    alerter = RecordingAlerter()
    fresh = mm.MarketMaker(config, maker.auth, clock=sim.clock, alerter=alerter)
    assert fresh.run(duration_s=3) == mm.EXIT_OK
    assert alerter.events()[0] == "start" and alerter.events()[-1] == "stop"
    assert alerter.sent[-1][1].startswith("stopped (duration reached): no order of ours is left open")


# ---- the local reward estimate -------------------------------------------------------------------

def test_uptime_tracker_weights_time_and_forgets_beyond_an_hour():
    uptime = mm.UptimeTracker()
    start = 7200.0  # a clock hour boundary
    uptime.record(start, True)
    uptime.record(start + 1800, False)  # two-sided for 30 minutes
    uptime.record(start + 2400, True)  # one-sided for 10 minutes
    uptime.record(start + 3600, True)
    assert uptime.last_hour(start + 3600) == pytest.approx(50 / 60)
    uptime.record(start + 7200, True)
    assert uptime.last_hour(start + 7200) == pytest.approx(1.0)


def test_reward_summary_shows_the_two_sided_shares_and_leaves_the_tier_to_the_reward_estimate():
    uptime = mm.UptimeTracker()
    uptime.record(3600.0, True)
    uptime.record(3600.0 + 2000, False)
    uptime.record(3600.0 + 2400, False)
    assert mm.reward_summary(uptime, 3600.0 + 2400) == "uptime 1h=83.3% hour=83.3%"


def test_status_line_includes_the_reward_estimate():
    sim = realistic_flat_sim()
    maker = start_daemon(sim)
    run_for(maker, 5)
    assert "uptime 1h=" in maker.status_line() and "MH@1x" in maker.status_line()
