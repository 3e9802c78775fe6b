"""Optional alerts to Telegram and/or a webhook: start, stop, fills, closes, mode changes, and
conditions (failing reads, failing login) sent once when they begin and once when they clear.

Alerts are off unless configured. Delivery happens on one daemon thread so the trading loop
never waits on a chat service: `send` only enqueues, a failed delivery is logged and dropped,
and nothing here ever raises into the caller.
"""
from __future__ import annotations

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Mapping
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

TELEGRAM_API_URL = "https://api.telegram.org"
# (connect, read) seconds for each delivery: a stalled service delays the next alert, not the loop.
HTTP_TIMEOUT_S = (3, 5)
# A given condition sends at most one message per this many seconds, so a flapping one is quiet.
THROTTLE_S = 600.0
# Enough for a burst of fills; beyond this, the service is down or slow and alerts are dropped.
QUEUE_MAX_MESSAGES = 100
# Telegram refuses messages over 4096 characters.
MAX_TEXT_CHARS = 4000
TELEGRAM_TOKEN_PATTERN = re.compile(r"\d+:[A-Za-z0-9_-]+")
# A numeric chat id (negative for groups and channels) or a public @channelname.
TELEGRAM_CHAT_PATTERN = re.compile(r"-?\d+|@[A-Za-z0-9_]+")
URL_PATTERN = re.compile(r"https?://[^\s/]+(/\S*)?")


class AlertConfigError(Exception):
    """A bad alert setting, shaped like market_maker.ConfigError: names the variable and the
    problem, never the secret value."""

    def __init__(self, variable: str, problem: str):
        self.variable = variable
        super().__init__(f"{variable}: {problem}")


@dataclass(frozen=True)
class AlertConfig:
    telegram_bot_token: str = field(default="", repr=False)
    telegram_chat_id: str = ""
    # The full URL may carry a secret in its path or query (Slack, Discord): repr shows the origin.
    webhook_url: str = field(default="", repr=False)
    webhook_origin: str = field(init=False, default="")

    def __post_init__(self) -> None:
        parts = urlsplit(self.webhook_url)
        # hostname, not netloc: netloc would include any user:password@.
        origin = f"{parts.scheme}://{parts.hostname}" if self.webhook_url else ""
        object.__setattr__(self, "webhook_origin", origin)

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_bot_token)

    @property
    def webhook_enabled(self) -> bool:
        return bool(self.webhook_url)


def load_alert_config(env: Mapping[str, str]) -> AlertConfig:
    """Read the optional alert settings; the first bad one raises AlertConfigError."""
    token = env.get("ALERT_TELEGRAM_BOT_TOKEN", "").strip()
    chat_id = env.get("ALERT_TELEGRAM_CHAT_ID", "").strip()
    webhook_url = env.get("ALERT_WEBHOOK_URL", "").strip()
    if token and not chat_id:
        raise AlertConfigError("ALERT_TELEGRAM_CHAT_ID",
                               "is not set (ALERT_TELEGRAM_BOT_TOKEN needs it)")
    if chat_id and not token:
        raise AlertConfigError("ALERT_TELEGRAM_BOT_TOKEN",
                               "is not set (ALERT_TELEGRAM_CHAT_ID needs it)")
    if token and not TELEGRAM_TOKEN_PATTERN.fullmatch(token):
        raise AlertConfigError("ALERT_TELEGRAM_BOT_TOKEN",
                               "must look like <digits>:<letters, digits, _ or -> as given by "
                               "@BotFather (value not shown)")
    if chat_id and not TELEGRAM_CHAT_PATTERN.fullmatch(chat_id):
        raise AlertConfigError("ALERT_TELEGRAM_CHAT_ID",
                               f"must be a numeric chat id or @channelname (got {chat_id!r})")
    if webhook_url and not URL_PATTERN.fullmatch(webhook_url):
        raise AlertConfigError("ALERT_WEBHOOK_URL", "must be an http(s) URL (value not shown)")
    return AlertConfig(telegram_bot_token=token, telegram_chat_id=chat_id, webhook_url=webhook_url)


def short_account(account: str) -> str:
    """0x1234…abcd: enough to tell accounts apart in a chat."""
    return account if len(account) <= 12 else f"{account[:6]}…{account[-4:]}"


@dataclass(frozen=True)
class _Alert:
    event: str
    text: str
    time: str


@dataclass
class _ConditionState:
    reported_active: bool = False
    reported_text: str = ""
    reported_at: float | None = None


class Alerter:
    """Sends alerts in the background; a no-op, with no thread, when alerts are not configured.

    Call `send` and `condition` from one thread (the daemon's loop), not from a signal handler:
    the queue takes a lock that a handler interrupting `send` would wait on forever.
    """

    def __init__(self, config: AlertConfig, *, account: str, symbol: str,
                 session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.account = account
        self.symbol = symbol
        self.clock = clock
        self._prefix = f"[{short_account(account)} {symbol}]"
        self._conditions: dict[str, _ConditionState] = {}
        self._dropped = 0
        self._closed = False
        if not self.enabled:
            return
        self._session = session or requests.Session()
        self._queue: queue.Queue[_Alert | None] = queue.Queue(maxsize=QUEUE_MAX_MESSAGES)
        # Messages enqueued and not yet through delivery: close() waits for this to reach 0.
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._deliver_forever, name="alerts", daemon=True)
        self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.config.telegram_enabled or self.config.webhook_enabled

    def send(self, event: str, text: str) -> None:
        """Queue one alert and return at once. When the queue is full the alert is dropped: one
        WARNING for a run of drops, and an INFO with the count once an alert fits again."""
        if not self.enabled or self._closed:
            return
        alert = _Alert(event, f"{self._prefix} {text}"[:MAX_TEXT_CHARS],
                       datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self._settle_one()
            if self._dropped == 0:
                log.warning("alert queue full (%d waiting): dropping alerts until it drains",
                            QUEUE_MAX_MESSAGES)
            self._dropped += 1
            return
        if self._dropped:
            log.info("alert queue has room again: %d alert(s) were dropped", self._dropped)
            self._dropped = 0

    def condition(self, key: str, active: bool, text: str) -> None:
        """Report a condition's state, edge-triggered and throttled; call it every loop.

        Rule: a message is sent when `active` differs from the state last reported for `key`
        (initially inactive) and no message was sent for `key` in the last THROTTLE_S seconds.
        Becoming active sends `text` (event `key`); clearing sends "recovered: <the text last
        reported as active>" (event `<key>_recovered`). A change during the throttle is not
        queued: a later call, once the throttle has passed, sends it only if the state then
        still differs from the one last reported. So a flapping condition sends at most one
        message per THROTTLE_S, and a clear is never lost as long as calls keep coming.
        """
        if not self.enabled:
            return
        state = self._conditions.setdefault(key, _ConditionState())
        if active == state.reported_active:
            return
        now = self.clock()
        if state.reported_at is not None and now - state.reported_at < THROTTLE_S:
            return
        if active:
            self.send(key, text)
            state.reported_text = text
        else:
            self.send(f"{key}_recovered", f"recovered: {state.reported_text}")
        state.reported_active = active
        state.reported_at = now

    def close(self, timeout_s: float = 1.0) -> None:
        """Wait up to timeout_s for queued alerts (the stop message) to go out, then return.
        Later sends are ignored; an alert still in flight is abandoned with the daemon thread."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        try:
            self._queue.put_nowait(None)  # lets the thread end once it has delivered the rest
        except queue.Full:
            pass
        with self._idle:
            if not self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s):
                log.warning("%d alert(s) not delivered before exit", self._pending)

    # -- background delivery --

    def _deliver_forever(self) -> None:
        while (alert := self._queue.get()) is not None:
            try:
                self._deliver(alert)
            finally:
                self._settle_one()

    def _settle_one(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _deliver(self, alert: _Alert) -> None:
        if self.config.telegram_enabled:
            self._post("telegram", f"{TELEGRAM_API_URL}/bot{self.config.telegram_bot_token}/sendMessage",
                       {"chat_id": self.config.telegram_chat_id, "text": alert.text})
        if self.config.webhook_enabled:
            self._post("webhook", self.config.webhook_url,
                       {"event": alert.event, "text": alert.text, "account": self.account,
                        "symbol": self.symbol, "time": alert.time})

    def _post(self, channel: str, url: str, body: dict[str, str]) -> None:
        """One attempt, no retry: an alert late by minutes is worth less than a quiet log.
        Only the status or the exception's class is logged: request errors quote the URL, and
        the Telegram URL holds the bot token."""
        try:
            response = self._session.post(url, json=body, timeout=HTTP_TIMEOUT_S)
        except Exception as exc:  # the thread must survive anything the transport raises
            log.warning("%s alert failed: %s", channel, type(exc).__name__)
            return
        if not 200 <= response.status_code < 300:
            log.warning("%s alert failed: HTTP %d", channel, response.status_code)
