"""Alerts: config validation, message format per channel, background delivery that never
blocks or raises, queue overflow, and edge-triggered throttled conditions."""
from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import requests
import responses

import alerts
from alerts import AlertConfig, AlertConfigError, Alerter, load_alert_config

TOKEN = "123456789:AAHsecretTokenPart_xyz-0"
CHAT_ID = "-1001234567890"
TELEGRAM_URL = f"https://api.telegram.org/bot{TOKEN}/sendMessage"
WEBHOOK_URL = "https://hooks.example.com/services/T000/B000/webhooksecret"
ACCOUNT = "0xAbCdEf0123456789aBcDeF0123456789AbCd1234"
SYMBOL = "BTC-USD"
PREFIX = "[0xAbCd…1234 BTC-USD]"

TELEGRAM = AlertConfig(telegram_bot_token=TOKEN, telegram_chat_id=CHAT_ID)
WEBHOOK = AlertConfig(webhook_url=WEBHOOK_URL)
BOTH = AlertConfig(telegram_bot_token=TOKEN, telegram_chat_id=CHAT_ID, webhook_url=WEBHOOK_URL)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_alerter(config: AlertConfig, clock: FakeClock | None = None) -> Alerter:
    return Alerter(config, account=ACCOUNT, symbol=SYMBOL, clock=clock or FakeClock())


def sent_bodies(rsps: responses.RequestsMock, url: str) -> list[dict]:
    return [json.loads(call.request.body) for call in rsps.calls if call.request.url == url]


def alert_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "alerts" and r.levelno == logging.WARNING]


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# ---- configuration -------------------------------------------------------------------------

def test_no_alert_variables_means_alerts_off():
    config = load_alert_config({})
    assert not config.telegram_enabled and not config.webhook_enabled


def test_valid_settings_are_read():
    config = load_alert_config({"ALERT_TELEGRAM_BOT_TOKEN": f" {TOKEN} ",
                                "ALERT_TELEGRAM_CHAT_ID": CHAT_ID, "ALERT_WEBHOOK_URL": WEBHOOK_URL})
    assert config == BOTH


@pytest.mark.parametrize("env, variable", [
    ({"ALERT_TELEGRAM_BOT_TOKEN": TOKEN}, "ALERT_TELEGRAM_CHAT_ID"),
    ({"ALERT_TELEGRAM_CHAT_ID": CHAT_ID}, "ALERT_TELEGRAM_BOT_TOKEN"),
    ({"ALERT_TELEGRAM_BOT_TOKEN": "AAHsecretTokenPart_xyz", "ALERT_TELEGRAM_CHAT_ID": CHAT_ID},
     "ALERT_TELEGRAM_BOT_TOKEN"),
    ({"ALERT_TELEGRAM_BOT_TOKEN": "12345:AAH secret", "ALERT_TELEGRAM_CHAT_ID": CHAT_ID},
     "ALERT_TELEGRAM_BOT_TOKEN"),
    ({"ALERT_TELEGRAM_BOT_TOKEN": TOKEN, "ALERT_TELEGRAM_CHAT_ID": "my chat"},
     "ALERT_TELEGRAM_CHAT_ID"),
    ({"ALERT_WEBHOOK_URL": "ftp://hooks.example.com/webhooksecret"}, "ALERT_WEBHOOK_URL"),
    ({"ALERT_WEBHOOK_URL": "hooks.example.com/webhooksecret"}, "ALERT_WEBHOOK_URL"),
])
def test_bad_setting_names_the_variable_and_hides_secrets(env, variable):
    with pytest.raises(AlertConfigError) as caught:
        load_alert_config(env)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")
    assert "secret" not in str(caught.value)


def test_repr_hides_token_and_webhook_path():
    text = repr(BOTH)
    assert TOKEN not in text and "AAHsecret" not in text
    assert "webhooksecret" not in text and "/services" not in text
    assert "https://hooks.example.com" in text and CHAT_ID in text


def test_repr_hides_webhook_credentials_in_the_host_part():
    text = repr(AlertConfig(webhook_url="https://user:pass@hooks.example.com/x"))
    assert "pass" not in text and "https://hooks.example.com" in text


# ---- delivery ------------------------------------------------------------------------------

def test_disabled_alerter_sends_nothing_and_starts_no_thread(rsps):
    threads_before = threading.active_count()
    alerter = make_alerter(AlertConfig())
    alerter.send("start", "started")
    alerter.condition("failures", True, "exchange reads failing")
    alerter.close()
    assert not alerter.enabled
    assert threading.active_count() == threads_before
    assert len(rsps.calls) == 0


def test_telegram_message_goes_to_the_bot_endpoint_with_chat_id_and_prefix(rsps):
    rsps.post(TELEGRAM_URL, json={"ok": True})
    alerter = make_alerter(TELEGRAM)
    alerter.send("start", "started: quoting BTC-USD")
    alerter.close()
    assert sent_bodies(rsps, TELEGRAM_URL) == [
        {"chat_id": CHAT_ID, "text": f"{PREFIX} started: quoting BTC-USD"}]


def test_webhook_body_carries_event_text_account_symbol_and_time(rsps):
    rsps.post(WEBHOOK_URL)
    alerter = make_alerter(WEBHOOK)
    alerter.send("fill", "filled: position 0.005")
    alerter.close()
    [body] = sent_bodies(rsps, WEBHOOK_URL)
    assert body.pop("time").endswith("+00:00")
    assert body == {"event": "fill", "text": f"{PREFIX} filled: position 0.005",
                    "account": ACCOUNT, "symbol": SYMBOL}


def test_both_channels_receive_each_alert(rsps):
    rsps.post(TELEGRAM_URL, json={"ok": True})
    rsps.post(WEBHOOK_URL)
    alerter = make_alerter(BOTH)
    alerter.send("mode", "mode degraded_1")
    alerter.close()
    assert [b["text"] for b in sent_bodies(rsps, TELEGRAM_URL)] == [f"{PREFIX} mode degraded_1"]
    assert [b["event"] for b in sent_bodies(rsps, WEBHOOK_URL)] == ["mode"]


def test_send_returns_at_once_and_close_is_bounded_when_the_endpoint_stalls(rsps):
    release = threading.Event()

    def stall(request):
        release.wait(2)
        return 200, {}, "{}"

    rsps.add_callback(responses.POST, TELEGRAM_URL, callback=stall)
    alerter = make_alerter(TELEGRAM)
    try:
        started = time.monotonic()
        alerter.send("stop", "stopped: SIGTERM")
        sent_after = time.monotonic() - started
        alerter.close(timeout_s=1)
        closed_after = time.monotonic() - started
    finally:
        release.set()
    assert sent_after < 0.1
    assert closed_after < 1.5


@pytest.mark.parametrize("reply, logged", [
    ({"status": 500}, "telegram alert failed: HTTP 500"),
    ({"body": requests.ConnectionError(f"cannot reach {TELEGRAM_URL}")},
     "telegram alert failed: ConnectionError"),
])
def test_failing_endpoint_logs_one_warning_without_url_or_token(rsps, caplog, reply, logged):
    rsps.post(TELEGRAM_URL, **reply)
    alerter = make_alerter(TELEGRAM)
    with caplog.at_level(logging.WARNING, logger="alerts"):
        alerter.send("start", "started")
        alerter.close()
    [record] = alert_warnings(caplog)
    assert record.getMessage() == logged
    assert record.exc_info is None
    assert TOKEN not in caplog.text and "api.telegram.org" not in caplog.text


def test_failing_webhook_does_not_stop_later_alerts(rsps, caplog):
    rsps.post(WEBHOOK_URL, body=requests.ConnectionError("refused"))
    rsps.post(WEBHOOK_URL)
    alerter = make_alerter(WEBHOOK)
    with caplog.at_level(logging.WARNING, logger="alerts"):
        alerter.send("fill", "first")
        alerter.send("fill", "second")
        alerter.close()
    assert [r.getMessage() for r in alert_warnings(caplog)] == ["webhook alert failed: ConnectionError"]
    assert len(rsps.calls) == 2


def test_full_queue_drops_alerts_with_one_warning(rsps, caplog):
    delivering, release = threading.Event(), threading.Event()

    def block_first(request):
        delivering.set()
        release.wait(2)
        return 200, {}, "{}"

    rsps.add_callback(responses.POST, TELEGRAM_URL, callback=block_first)
    alerter = make_alerter(TELEGRAM)
    alerter.send("fill", "in flight")
    assert delivering.wait(2)
    with caplog.at_level(logging.WARNING, logger="alerts"):
        for n in range(alerts.QUEUE_MAX_MESSAGES + 3):
            alerter.send("fill", f"fill {n}")
    release.set()
    alerter.close(timeout_s=2)
    assert [r.getMessage() for r in alert_warnings(caplog)] == [
        f"alert queue full ({alerts.QUEUE_MAX_MESSAGES} waiting): dropping alerts until it drains"]
    assert len(rsps.calls) == 1 + alerts.QUEUE_MAX_MESSAGES


def test_close_delivers_every_queued_alert_in_order(rsps):
    rsps.post(TELEGRAM_URL, json={"ok": True})
    alerter = make_alerter(TELEGRAM)
    for text in ("started", "filled", "stopped: SIGTERM"):
        alerter.send("event", text)
    alerter.close()
    assert [b["text"] for b in sent_bodies(rsps, TELEGRAM_URL)] == [
        f"{PREFIX} started", f"{PREFIX} filled", f"{PREFIX} stopped: SIGTERM"]


def test_send_after_close_is_ignored(rsps):
    rsps.post(TELEGRAM_URL, json={"ok": True})
    alerter = make_alerter(TELEGRAM)
    alerter.close()
    alerter.send("stop", "too late")
    assert len(rsps.calls) == 0


# ---- conditions ----------------------------------------------------------------------------

def test_condition_sends_once_when_it_begins_and_once_when_it_clears(rsps):
    rsps.post(TELEGRAM_URL, json={"ok": True})
    clock = FakeClock()
    alerter = make_alerter(TELEGRAM, clock)
    alerter.condition("failures", False, "")
    alerter.condition("failures", True, "exchange reads failing: timeout")
    clock.t += 1
    alerter.condition("failures", True, "exchange reads failing: timeout")
    clock.t += alerts.THROTTLE_S
    alerter.condition("failures", False, "")
    alerter.close()
    assert [b["text"] for b in sent_bodies(rsps, TELEGRAM_URL)] == [
        f"{PREFIX} exchange reads failing: timeout",
        f"{PREFIX} recovered: exchange reads failing: timeout"]


def test_flapping_condition_sends_one_message_per_throttle_period(rsps):
    rsps.post(TELEGRAM_URL, json={"ok": True})
    clock = FakeClock()
    alerter = make_alerter(TELEGRAM, clock)
    for n in range(10):
        alerter.condition("login", n % 2 == 0, "login failing: HTTP 503")
        clock.t += 50
    assert clock.t - 1000.0 < alerts.THROTTLE_S
    clock.t = 1000.0 + alerts.THROTTLE_S
    alerter.condition("login", False, "")
    alerter.close()
    assert [b["text"] for b in sent_bodies(rsps, TELEGRAM_URL)] == [
        f"{PREFIX} login failing: HTTP 503", f"{PREFIX} recovered: login failing: HTTP 503"]


def test_change_undone_within_the_throttle_is_never_sent(rsps):
    rsps.post(TELEGRAM_URL, json={"ok": True})
    clock = FakeClock()
    alerter = make_alerter(TELEGRAM, clock)
    alerter.condition("login", True, "login failing")
    clock.t += 10
    alerter.condition("login", False, "")
    clock.t += 10
    alerter.condition("login", True, "login failing")
    clock.t += alerts.THROTTLE_S
    alerter.condition("login", True, "login failing")
    alerter.close()
    assert [b["text"] for b in sent_bodies(rsps, TELEGRAM_URL)] == [f"{PREFIX} login failing"]


def test_conditions_are_throttled_per_key(rsps):
    rsps.post(WEBHOOK_URL)
    alerter = make_alerter(WEBHOOK)
    alerter.condition("failures", True, "exchange reads failing")
    alerter.condition("login", True, "login failing")
    alerter.close()
    assert [b["event"] for b in sent_bodies(rsps, WEBHOOK_URL)] == ["failures", "login"]


def test_recovery_event_name_tells_webhooks_it_cleared(rsps):
    rsps.post(WEBHOOK_URL)
    clock = FakeClock()
    alerter = make_alerter(WEBHOOK, clock)
    alerter.condition("failures", True, "exchange reads failing")
    clock.t += alerts.THROTTLE_S
    alerter.condition("failures", False, "")
    alerter.close()
    assert [b["event"] for b in sent_bodies(rsps, WEBHOOK_URL)] == ["failures", "failures_recovered"]
