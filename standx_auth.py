"""StandX login, token lifetime, request signing, and the one HTTP session.

Everything that knows about headers, signatures, retries and the wire lives here; the layers
above see Python values and typed errors (`StandXError` and its subclasses).
"""
from __future__ import annotations

import base64
import email.utils
import json
import logging
import re
import socket
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Callable, Protocol, Sequence, TypeVar

import base58
import requests
import urllib3
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.signing import SigningKey

log = logging.getLogger(__name__)

DEFAULT_AUTH_BASE_URL = "https://api.standx.com"
DEFAULT_PERPS_BASE_URL = "https://perps.standx.com"
CHAIN = "bsc"
TOKEN_LIFETIME_S = 7 * 24 * 3600
# Renew the token this long before it expires (at most a tenth of its lifetime), so no call
# ever races the expiry; a failed renewal keeps the current token in use meanwhile.
RELOGIN_MARGIN_S = 3600
# A renewal that failed is tried again after the login backoff, but never sooner than this.
RENEW_RETRY_MIN_S = 30.0
# While stopping, the login backoff is ignored: a fresh attempt at most this often.
STOP_LOGIN_SPACING_S = 1.0
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
# A whole answer must arrive within this, however slowly the server trickles it: a read
# timeout alone only bounds the wait for each next byte.
REQUEST_TOTAL_S = 8.0
BODY_CHUNK_BYTES = 65536
# The largest answer accepted, compressed or decoded (1200 open orders are ~1.5 MB of JSON).
MAX_BODY_BYTES = 8 * 1024 * 1024
READ_ATTEMPTS = 3
READ_RETRY_PAUSE_S = 0.2
# Without Retry-After, a 429 still pauses every call for this long.
DEFAULT_RATE_LIMIT_BACKOFF_S = 1.0
# After a failed login the next one waits 1, 2, 4 ... s, up to this.
LOGIN_BACKOFF_MAX_S = 300.0
# Long waits are cut into slices this long so that a stop request ends them promptly.
WAIT_SLICE_S = 0.5
# Public market data needs no token; every other call carries the Bearer token.
PUBLIC_PATHS = frozenset({"/api/query_symbol_info", "/api/query_symbol_price", "/api/health"})
CLOCK_HINT = "the server clock looks wrong: sync it (sudo timedatectl set-ntp true)"
# Our clock and the exchange's agree when the Date header (1 s resolution) allows no offset
# within this much: requests are then stamped with our own clock.
CLOCK_AGREEMENT_S = 1.0
# Only an answer whose Date pins the exchange's clock to within this much moves the offset.
MAX_CLOCK_SAMPLE_S = 3.0
KNOWN_DATE_HEADERS = 16  # Date headers remembered, parsed: a few seconds' worth
_MAX_MESSAGE_CHARS = 200
# n, the order of the secp256k1 curve: a wallet key must lie in [1, n).
SECP256K1_ORDER = 115792089237316195423570985008687907852837564279074904382605163141518161494337


T = TypeVar("T")
# Enough threads for the most requests the daemon overlaps (up to five reads in a loop).
GATHER_THREADS = 5


class Clock(Protocol):
    """Time as the daemon sees it.

    `monotonic()` measures every interval, deadline, timeout and backoff: it never steps.
    `wall()` is Unix time, used only to stamp signed requests and to read token expiry.
    """

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def gather(self, calls: Sequence[Callable[[], T]]) -> list[T]: ...

    def spawn(self, call: Callable[[], None]) -> None: ...


class RealClock:
    """The host's clocks; overlapping calls run on a small thread pool.

    The backtest swaps in a virtual clock with the same methods, whose `gather` runs the calls
    from one start time and ends at the latest of their finishes, and whose `spawn` runs the
    call at once.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def gather(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Run the calls at the same time; their results in order (an exception is re-raised)."""
        if len(calls) <= 1:
            return [call() for call in calls]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=GATHER_THREADS, thread_name_prefix="gather")
        return [future.result() for future in [self._pool.submit(call) for call in calls]]

    def spawn(self, call: Callable[[], None]) -> None:
        """Run a call in the background (a token renewal), never holding up the caller."""
        threading.Thread(target=call, name="background", daemon=True).start()


class StandXError(Exception):
    """A failed call: HTTP status (None when no answer came), exchange code, short message.

    Never carries a token, a key, a signature or request headers.
    """

    def __init__(self, message: str, status: int | None = None, code: int | None = None):
        self.status = status
        self.code = code
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{where}: {self.message}"


class AuthError(StandXError):
    """Login failed, or the exchange refused our credentials."""


class SignatureExpiredError(StandXError):
    """403 'signature has expired': our request timestamp is outside the exchange's window."""


class RateLimitError(StandXError):
    """429: the exchange asks us to slow down for `retry_after_s` seconds."""

    def __init__(self, message: str, status: int | None = 429, code: int | None = None,
                 retry_after_s: float = DEFAULT_RATE_LIMIT_BACKOFF_S):
        self.retry_after_s = retry_after_s
        super().__init__(message, status, code)


class UnknownOutcomeError(StandXError):
    """A signed write may or may not have been applied (timeout, 5xx, garbled answer).

    It must not be re-sent blindly: look for its cl_ord_id instead.
    """


def sleep_until(clock: Clock, until: float, stop: Callable[[], bool]) -> None:
    """Sleep until `until` on the monotonic clock, waking early once `stop()` is true."""
    while (now := clock.monotonic()) < until and not stop():
        clock.sleep(min(until - now, WAIT_SLICE_S))


def decode_jwt_payload(jwt: str) -> dict[str, Any]:
    """The JSON payload (middle segment) of a JWT, without verifying it."""
    try:
        segment = jwt.split(".")[1]
        padded = segment + "=" * (-len(segment) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded))
    except (IndexError, ValueError) as exc:
        raise AuthError(f"malformed JWT ({type(exc).__name__})") from None
    if not isinstance(payload, dict):
        raise AuthError("malformed JWT (payload is not an object)")
    return payload


def normalize_private_key(raw: str) -> str:
    """The wallet key as 0x + 64 lowercase hex digits; ValueError (naming no value) otherwise."""
    key = (raw or "").strip()
    if key[:2].lower() == "0x":
        key = key[2:]
    if not re.fullmatch(r"[0-9a-fA-F]{64}", key) or not 0 < int(key, 16) < SECP256K1_ORDER:
        raise ValueError("must be 64 hex digits (with or without 0x)")
    return "0x" + key.lower()


def sign_request(signing_key: SigningKey, request_id: str, timestamp_ms: int,
                 payload: str) -> dict[str, str]:
    """The four x-request-* headers for a body, signed over `v1,<id>,<ts>,<payload>`."""
    message = f"v1,{request_id},{timestamp_ms},{payload}".encode("utf-8")
    signature = signing_key.sign(message).signature
    return {
        "x-request-sign-version": "v1",
        "x-request-id": request_id,
        "x-request-timestamp": str(timestamp_ms),
        "x-request-signature": base64.b64encode(signature).decode("ascii"),
    }


def sign_login_message(private_key: str, message: str) -> str:
    """EIP-191 personal_sign of the sign-in text, as 0x-prefixed hex."""
    signed = Account.sign_message(encode_defunct(text=message), private_key=private_key)
    return "0x" + signed.signature.hex().removeprefix("0x")


def check_signin_payload(payload: dict[str, Any], address: str, request_id: str) -> str:
    """The sign-in text to sign, after checking it is for this wallet and this key."""
    message = payload.get("message")
    if not isinstance(message, str) or not message:
        raise AuthError("prepare-signin answer has no message to sign")
    if str(payload.get("address", "")).lower() != address.lower():
        raise AuthError("sign-in message is for another wallet address; refusing to sign it")
    if payload.get("requestId") != request_id:
        raise AuthError("sign-in message is for another signing key; refusing to sign it")
    if address.lower() not in message.lower():
        raise AuthError("sign-in message does not name our wallet address; refusing to sign it")
    return message


def is_html(response: requests.Response) -> bool:
    content_type = response.headers.get("Content-Type", "")
    return "html" in content_type.lower() or response.text.lstrip()[:1] == "<"


def error_from_response(response: requests.Response) -> StandXError:
    """A typed error for a non-2xx answer, with a short message (never an HTML dump)."""
    status = response.status_code
    code: int | None = None
    if is_html(response):
        message = "exchange unavailable (HTML error page)"
    else:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            code = body.get("code") if isinstance(body.get("code"), int) else None
            message = str(body.get("message") or body.get("msg") or "no message")
        else:
            message = response.text.strip() or "empty body"
    message = message[:_MAX_MESSAGE_CHARS]
    if status == 401:
        return AuthError(message, status, code)
    if status == 403 and "expired" in message.lower():
        return SignatureExpiredError(f"{message}; {CLOCK_HINT}", status, code)
    if status == 429:
        return RateLimitError(message, status, code, retry_after_seconds(response))
    return StandXError(message, status, code)


def refusal_in_body(body: Any, status: int) -> StandXError | None:
    """An answer with a 2xx status whose body carries a non-zero `code` is a refusal."""
    code = body.get("code") if isinstance(body, dict) else None
    if not isinstance(code, int) or isinstance(code, bool) or code == 0:
        return None
    message = str(body.get("message") or body.get("msg") or "no message")[:_MAX_MESSAGE_CHARS]
    return StandXError(f"refused (code {code}): {message}", status, code)


def retry_after_seconds(response: requests.Response) -> float:
    try:
        return max(float(response.headers.get("Retry-After", "")), 0.0)
    except ValueError:
        return DEFAULT_RATE_LIMIT_BACKOFF_S


def server_time_bounds(response: requests.Response, sent_wall: float,
                       received_wall: float) -> tuple[float, float] | None:
    """The range of (exchange time - our wall time) that the answer's Date header allows: the
    exchange stamped it, to the second, between our sending and our receiving. None without
    a usable Date header."""
    stamped = date_header_time(response.headers.get("Date") or "")
    if stamped is None or received_wall < sent_wall:  # no Date, or our clock stepped meanwhile
        return None
    return stamped - received_wall, stamped + 1.0 - sent_wall


@lru_cache(maxsize=KNOWN_DATE_HEADERS)
def date_header_time(text: str) -> float | None:
    """The Unix time a Date header names (None: not a usable date), read once per header text:
    answers within one second carry the same one."""
    parsed = email.utils.parsedate_tz(text)
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))  # a zone missing or -0000 counts as UTC
    except (TypeError, ValueError, OverflowError):
        return None


def next_time_offset(current: float, low: float, high: float) -> float:
    """The offset to stamp requests with after an answer that allows [low, high]: none when our
    clock agrees with the exchange's, the current one while it still fits, else the middle."""
    if low - CLOCK_AGREEMENT_S <= 0.0 <= high + CLOCK_AGREEMENT_S:
        return 0.0
    if low <= current <= high:
        return current
    return (low + high) / 2


def decode_body(raw: bytes, encoding: str | None) -> bytes:
    """The body as sent before compression (gzip or deflate, as a CDN may apply), never more
    than MAX_BODY_BYTES; ContentDecodingError for a garbled, cut or oversized one."""
    name = (encoding or "").strip().lower()
    if name in ("", "identity"):
        return raw
    if name in ("gzip", "x-gzip"):
        formats = [16 + zlib.MAX_WBITS]
    elif name == "deflate":
        formats = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # zlib-wrapped as the RFC says, or raw
    else:
        raise requests.exceptions.ContentDecodingError(f"unsupported Content-Encoding {name!r}")
    for wbits in formats:
        decoder = zlib.decompressobj(wbits)
        try:
            body = decoder.decompress(raw, MAX_BODY_BYTES + 1)
        except zlib.error:
            continue
        if len(body) > MAX_BODY_BYTES or decoder.unconsumed_tail:
            raise requests.exceptions.ContentDecodingError("answer too large once decompressed")
        if decoder.eof:
            return body
    raise requests.exceptions.ContentDecodingError(f"{name} answer cannot be decoded")


# ---- bounding a whole request in time ---------------------------------------------------------

class _RequestWatch:
    """The socket one request is using, so that its time limit can cut it off wherever it
    waits: a server that sends its status line and headers a byte at a time never trips a
    per-read timeout, so only shutting the socket from outside bounds the whole exchange."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._done = False
        self.expired = False

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            if sock is None or self._done:
                return
            self._sock = sock
            if self.expired:
                _shut_down(sock)

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            if self._sock is not None:
                _shut_down(self._sock)

    def finish(self) -> None:
        """The request is over: a late expiry must not touch a connection back in the pool."""
        with self._lock:
            self._done, self._sock = True, None


def _shut_down(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread
    except OSError:
        pass


_current_watch = threading.local()


def _watch_socket(sock: socket.socket | None) -> None:
    watch = getattr(_current_watch, "value", None)
    if watch is not None:
        watch.attach(sock)


class _WatchedConnectionMixin:
    """Hands the request's socket to the watch of the thread sending it: at connect for a new
    connection, at the request for a reused one (the answer keeps the socket even after the
    connection lets go of it)."""

    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _watch_socket(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        _watch_socket(self.sock)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class BoundedHTTPAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections a time limit can cut off (see _RequestWatch)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


def bounded_session() -> requests.Session:
    session = requests.Session()
    adapter = BoundedHTTPAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class StandXAuth:
    """The logged-in client: token, Ed25519 request key, one requests.Session.

    `make_api_call` is the only way to the exchange. Reads are retried on network errors;
    signed writes never are (an unanswered write raises UnknownOutcomeError). Any call refused
    with 401 (so not applied) is sent once more after a new login. Every request, headers
    included, ends within REQUEST_TOTAL_S and within the stop deadline.
    """

    def __init__(self, private_key: str, *, auth_base_url: str = DEFAULT_AUTH_BASE_URL,
                 perps_base_url: str = DEFAULT_PERPS_BASE_URL, clock: Clock | None = None,
                 session: requests.Session | None = None,
                 token_lifetime_s: int = TOKEN_LIFETIME_S, read_only: bool = False):
        self._private_key = normalize_private_key(private_key)
        # A read-only client (--status) refuses every POST to the exchange: no order is possible.
        self.read_only = read_only
        self.address: str = Account.from_key(self._private_key).address
        self.auth_base_url = auth_base_url.rstrip("/")
        self.perps_base_url = perps_base_url.rstrip("/")
        self.clock: Clock = clock or RealClock()
        self.session = session or bounded_session()
        self.token_lifetime_s = token_lifetime_s
        self._token: str | None = None
        # Token times are on the monotonic clock, converted once from the token's `exp`.
        self._token_expires_at = 0.0
        self._token_renew_at = 0.0
        self._renewing = False
        self._next_renewal_at = 0.0
        self._signing_key: SigningKey | None = None
        # Exchange time minus our wall time, as every answer's Date header measures it, and the
        # offset requests are stamped with: that one, unless the exchange refused it (a proxy's
        # Date can be off while the exchange's own clock is right): then our own clock.
        self.measured_offset_s = 0.0
        self.time_offset_s = 0.0
        self._date_distrusted = False
        # Set when stopping (monotonic): every request ends by then; logins ignore the backoff.
        self.deadline: float | None = None
        self.backoff_until = 0.0
        self.requests_sent = 0
        self._login_failures = 0
        self._next_login_at = 0.0
        self._last_login_attempt_at = float("-inf")
        self.login_failure: str | None = None  # why the last login failed, until one succeeds
        # Calls may overlap (Clock.gather): `_lock` guards the token and the counters and is
        # never held across a request; `_login_lock` lets one login run at a time.
        self._lock = threading.RLock()
        self._login_lock = threading.Lock()
        # The x-request-id of each thread's latest signed request: the order response stream
        # reports a REST order's outcome under that id.
        self._sent = threading.local()

    def __repr__(self) -> str:
        return f"StandXAuth(address={self.address!r}, logged_in={self._token is not None})"

    # ---- login -------------------------------------------------------------------------

    def authenticate(self) -> None:
        """Log in with the wallet: new Ed25519 key, prepare-signin, checks, EIP-191, login."""
        with self._login_lock:
            self._log_in()

    def _log_in(self) -> None:
        """Sign in, or refuse at once while the backoff after a failed login runs, so that a
        login that keeps failing is not retried on every call. A stop ignores the backoff: it
        needs a token to cancel our orders, and only its own deadline limits it."""
        now = self.clock.monotonic()
        not_before = self._next_login_at
        if self.deadline is not None:
            not_before = self._last_login_attempt_at + STOP_LOGIN_SPACING_S
        if not_before > now:
            raise AuthError(f"login failed recently; next attempt in {not_before - now:.0f} s")
        self._last_login_attempt_at = now
        try:
            token, signing_key = self._sign_in()
        except StandXError as exc:
            with self._lock:
                self._login_failures += 1
                backoff_s = min(2.0 ** (self._login_failures - 1), LOGIN_BACKOFF_MAX_S)
                if isinstance(exc, RateLimitError):
                    backoff_s = max(backoff_s, exc.retry_after_s)
                self._next_login_at = self.clock.monotonic() + backoff_s
                self.login_failure = str(exc)
            log.error("login failed (%s): next attempt in %.0f s", exc, backoff_s)
            raise
        lifetime_s = self._token_lifetime(token)
        now = self.clock.monotonic()
        with self._lock:
            self._token, self._signing_key = token, signing_key
            self._token_expires_at = now + lifetime_s
            # Renew ahead of expiry, by at most a tenth of the lifetime actually granted.
            self._token_renew_at = self._token_expires_at - min(RELOGIN_MARGIN_S, lifetime_s / 10)
            self._login_failures, self._next_login_at, self.login_failure = 0, 0.0, None
        log.info("logged in as %s (token valid for %.1f days)", self.address, lifetime_s / 86400)

    def _sign_in(self) -> tuple[str, SigningKey]:
        signing_key = SigningKey.generate()
        request_id = base58.b58encode(bytes(signing_key.verify_key)).decode("ascii")
        prepared = self._auth_post("/v1/offchain/prepare-signin",
                                   {"address": self.address, "requestId": request_id})
        signed_data = prepared.get("signedData")
        if prepared.get("success") is not True or not isinstance(signed_data, str):
            raise AuthError("prepare-signin refused (no signedData)")
        message = check_signin_payload(decode_jwt_payload(signed_data), self.address, request_id)
        login = self._auth_post("/v1/offchain/login", {
            "signature": sign_login_message(self._private_key, message),
            "signedData": signed_data,
            "expiresSeconds": self.token_lifetime_s,
        })
        token = login.get("token")
        if not isinstance(token, str) or not token:
            raise AuthError("login answer has no token")
        return token, signing_key

    def _token_lifetime(self, token: str) -> float:
        """Seconds the token has left: its `exp` against the exchange's clock when it has one,
        else our requested lifetime."""
        try:
            exp = decode_jwt_payload(token).get("exp")
        except AuthError:
            exp = None
        exchange_now = self.clock.wall() + self.time_offset_s
        if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp > exchange_now:
            return float(exp) - exchange_now
        return float(self.token_lifetime_s)

    def _auth_post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = self._send("POST", self.auth_base_url + path, params={"chain": CHAIN},
                              data=json.dumps(payload, separators=(",", ":")),
                              headers={"Content-Type": "application/json"}, is_write=False)
        try:
            body = self._decode(response, is_write=False)
        except RateLimitError:
            raise  # its Retry-After is already recorded: the next attempt waits it out
        except StandXError as exc:
            raise AuthError(f"{path} failed: {exc.message}", exc.status) from None
        if not isinstance(body, dict):
            raise AuthError(f"{path} answered something other than an object", 200)
        return body

    def current_token(self) -> str | None:
        """The token in use, or None; never logs in (the streams' thread must not block on a login)."""
        with self._lock:
            return self._token

    def last_request_id(self) -> str | None:
        """The x-request-id of this thread's latest signed request, if any."""
        return getattr(self._sent, "request_id", None)

    def get_token(self) -> str:
        """A valid access token, logging in first when there is none or it has expired."""
        return self._usable_credentials()[0]

    def _usable_credentials(self) -> tuple[str, SigningKey | None]:
        """The token and the signing key bound to it, taken together (another thread's login
        must not pair an old token with a new key). A token due for renewal stays in use while
        a renewal runs in the background; only a missing or expired one makes the caller wait
        for a login."""
        renew = False
        with self._lock:
            now = self.clock.monotonic()
            if self._token is not None and now < self._token_expires_at:
                renew = (now >= self._token_renew_at and now >= self._next_renewal_at
                         and not self._renewing and self.deadline is None)
                self._renewing = self._renewing or renew
                credentials = (self._token, self._signing_key)
            else:
                credentials = None
        if renew:
            self.clock.spawn(self._renew)
        if credentials is not None:
            return credentials
        with self._login_lock:
            with self._lock:  # another thread may have logged in while we waited
                if self._token is not None and self.clock.monotonic() < self._token_expires_at:
                    return self._token, self._signing_key
            self._log_in()
            with self._lock:
                assert self._token is not None
                return self._token, self._signing_key

    def _renew(self) -> None:
        """A new token ahead of expiry; on failure the current one stays in use, and the next
        attempt waits the login backoff, at least RENEW_RETRY_MIN_S."""
        try:
            with self._login_lock:
                if self.clock.monotonic() >= self._next_login_at:
                    self._log_in()
                    return
                raise AuthError("login failed recently")
        except StandXError as exc:
            with self._lock:
                self._next_renewal_at = max(self._next_login_at,
                                            self.clock.monotonic() + RENEW_RETRY_MIN_S)
                left_s = self._token_expires_at - self.clock.monotonic()
            log.warning("token renewal failed (%s): the current token stays in use (%.0f s left)",
                        exc, left_s)
        finally:
            with self._lock:
                self._renewing = False

    def _token_refused(self, refused: str) -> None:
        """After a 401, log in again, unless another call already replaced the refused token."""
        with self._lock:
            if self._token == refused:
                log.warning("token refused (HTTP 401): logging in again")
                self._token = None

    # ---- signing -----------------------------------------------------------------------

    def _body_signature_headers(self, payload_str: str, signing_key: SigningKey | None,
                                offset_s: float) -> dict[str, str]:
        """Fresh id and timestamp for every call, signed with the key bound to our token; the
        timestamp is our wall clock corrected by `offset_s` to the exchange's."""
        signing_key = signing_key or self._signing_key
        if signing_key is None:
            raise AuthError("not logged in: no request signing key yet")
        timestamp_ms = int((self.clock.wall() + offset_s) * 1000)
        self._sent.request_id = str(uuid.uuid4())
        return sign_request(signing_key, self._sent.request_id, timestamp_ms, payload_str)

    # ---- calls -------------------------------------------------------------------------

    def make_api_call(self, endpoint: str, method: str = "GET", data: Any = None,
                      params: dict[str, Any] | None = None,
                      headers_extra: dict[str, str] | None = None,
                      raw_body: str | None = None) -> Any:
        """Call an endpoint of the perps host and return its decoded JSON body.

        POSTs are signed; GETs carry the Bearer token unless the endpoint is public.
        On 401 the client logs in again once and retries the call once.
        """
        method = method.upper()
        if self.read_only and method != "GET":
            raise StandXError(f"read-only client: {method} {endpoint} refused")
        public = endpoint in PUBLIC_PATHS
        credentials = None if public else self._usable_credentials()
        try:
            return self._call_once(endpoint, method, data, params, headers_extra, raw_body, credentials)
        except AuthError as exc:
            if exc.status != 401 or credentials is None:
                raise
            self._token_refused(credentials[0])
            return self._call_once(endpoint, method, data, params, headers_extra, raw_body,
                                   self._usable_credentials())

    def _call_once(self, endpoint: str, method: str, data: Any, params: dict[str, Any] | None,
                   headers_extra: dict[str, str] | None, raw_body: str | None,
                   credentials: tuple[str, SigningKey | None] | None) -> Any:
        headers = dict(headers_extra or {})
        body: str | None = None
        token, signing_key = credentials or (None, None)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        stamped_offset_s = self.time_offset_s
        if method == "POST":
            # Serialize once and send exactly the signed string: any re-encoding breaks the signature.
            body = raw_body if raw_body is not None else json.dumps(data or {}, separators=(",", ":"))
            headers["Content-Type"] = "application/json"
            headers.update(self._body_signature_headers(body, signing_key, stamped_offset_s))
        response = self._send(method, self.perps_base_url + endpoint, params=params, data=body,
                              headers=headers, is_write=method == "POST")
        try:
            return self._decode(response, is_write=method == "POST")
        except SignatureExpiredError:
            self._refused_as_expired(stamped_offset_s)
            raise

    def _decode(self, response: requests.Response, is_write: bool) -> Any:
        status = response.status_code
        if status >= 500 and is_write:
            raise UnknownOutcomeError(error_from_response(response).message, status)
        if status >= 400:
            error = error_from_response(response)
            if isinstance(error, RateLimitError):
                self.backoff_until = max(self.backoff_until,
                                         self.clock.monotonic() + error.retry_after_s)
            raise error
        try:
            body = self._json_body(response)
        except StandXError as exc:
            if is_write:
                raise UnknownOutcomeError(exc.message, status) from None
            raise
        refusal = refusal_in_body(body, status)
        if refusal is not None:
            # HTTP 200 whose body says it failed: a refusal, not a success. A server-side
            # failure code on a write leaves its outcome unknown.
            if is_write and refusal.code is not None and refusal.code >= 500:
                raise UnknownOutcomeError(refusal.message, status)
            raise refusal
        return body

    @staticmethod
    def _json_body(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise StandXError("malformed JSON in answer", response.status_code) from None

    def _follow_exchange_clock(self, response: requests.Response, sent_wall: float,
                               received_wall: float) -> None:
        """Keep the signing offset on the exchange's clock, both ways: after the operator fixes
        a wrong clock the offset returns to zero; after a step it follows at once."""
        bounds = server_time_bounds(response, sent_wall, received_wall)
        if bounds is None or bounds[1] - bounds[0] > MAX_CLOCK_SAMPLE_S:
            return  # no Date, or a round trip too slow to say anything precise
        with self._lock:
            self.measured_offset_s = next_time_offset(self.measured_offset_s, *bounds)
            if self._date_distrusted:
                return
            before, self.time_offset_s = self.time_offset_s, self.measured_offset_s
            after = self.time_offset_s
        if abs(after - before) >= CLOCK_AGREEMENT_S:
            if after == 0.0:
                log.warning("our clock agrees with the exchange's again: signing with it as is")
            else:
                log.error("exchange clock differs from ours by %.1f s: signing with that offset; %s",
                          after, CLOCK_HINT)

    def _refused_as_expired(self, stamped_offset_s: float) -> None:
        """A signature refused as expired: the clock it was stamped with is not the exchange's.
        Two candidates are left, the Date headers' and our own: a request refused on the Date
        headers' clock makes the next ones use our own, and one refused on our own clock the
        Date headers' again, so a proxy's wrong Date cannot lock every write out."""
        with self._lock:
            dated = stamped_offset_s != 0.0 and abs(stamped_offset_s - self.measured_offset_s) < CLOCK_AGREEMENT_S
            self._date_distrusted = dated
            self.time_offset_s = 0.0 if dated else self.measured_offset_s
            source = ("our own clock (the exchange refused the Date headers' clock)" if dated
                      else f"the Date headers' clock ({self.measured_offset_s:+.1f} s from ours)")
        log.error("request signature expired: stamping with %s; %s", source, CLOCK_HINT)

    def _send(self, method: str, url: str, *, params: dict[str, Any] | None, data: str | None,
              headers: dict[str, str], is_write: bool) -> requests.Response:
        """One HTTP exchange. Reads retry network errors; writes raise UnknownOutcomeError."""
        self._wait_out_rate_limit()
        # Writes are never re-sent; once stopping, the time left goes to cancelling, not retries.
        attempts = 1 if is_write or self.deadline is not None else READ_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                with self._lock:
                    self.requests_sent += 1
                sent_wall = self.clock.wall()
                response = self._exchange(method, url, params, data, headers)
                if url.startswith(self.perps_base_url):
                    self._follow_exchange_clock(response, sent_wall, self.clock.wall())
                return response
            except requests.exceptions.ConnectTimeout:
                # Nothing reached the exchange: safe to report as a plain failure, even for a write.
                failure = "connect timeout"
                if is_write:
                    raise StandXError(failure) from None
            except requests.exceptions.RequestException as exc:
                failure = type(exc).__name__
                if is_write:
                    raise UnknownOutcomeError(f"{failure}: the order request may have been applied") from None
            if attempt == attempts or self._past_deadline():
                break
            log.debug("read failed (%s), attempt %d of %d", failure, attempt, attempts)
            self.clock.sleep(READ_RETRY_PAUSE_S * attempt)
            if self._past_deadline():
                break
        raise StandXError(f"exchange unreachable ({failure})")

    def _exchange(self, method: str, url: str, params: dict[str, Any] | None, data: str | None,
                  headers: dict[str, str]) -> requests.Response:
        """Send the request and read the whole answer within the time budget, whatever the
        server does: connect, headers and body together end by then."""
        budget_s = self._time_budget()
        timeout = urllib3.util.Timeout(connect=min(CONNECT_TIMEOUT_S, budget_s),
                                       read=min(READ_TIMEOUT_S, budget_s), total=budget_s)
        watch = _RequestWatch()
        # Only our own adapter hands the watch its socket; a timer is a thread's worth of
        # objects, so one is made only for a request it can cut off.
        timer = threading.Timer(budget_s, watch.expire) if self._watched(url) else None
        if timer is not None:
            timer.daemon = True
            _current_watch.value = watch
            timer.start()
        try:
            response = self.session.request(method, url, params=params, headers=headers,
                                            data=data.encode("utf-8") if data is not None else None,
                                            timeout=timeout, stream=True)
            self._receive(response)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if watch.expired:
                raise requests.exceptions.ReadTimeout(f"no whole answer within {budget_s:.1f} s") from None
            if isinstance(exc, requests.exceptions.RequestException):
                raise
            raise requests.exceptions.ConnectionError(type(exc).__name__) from None
        finally:
            if timer is not None:
                _current_watch.value = None
                timer.cancel()
            watch.finish()
        if watch.expired:  # the socket was shut mid-answer: what arrived may be cut short
            raise requests.exceptions.ReadTimeout(f"no whole answer within {budget_s:.1f} s")
        return response

    def _watched(self, url: str) -> bool:
        """Whether the adapter serving url is ours, which gives the request watch its socket."""
        return isinstance(self.session.get_adapter(url), BoundedHTTPAdapter)

    @staticmethod
    def _receive(response: requests.Response) -> None:
        """Read the whole body, at most MAX_BODY_BYTES, and undo any compression."""
        chunks, size = [], 0
        if isinstance(response.raw, urllib3.response.BaseHTTPResponse):
            response.raw.decode_content = False  # raw bytes: decode_body undoes compression, bounded
        try:
            while chunk := response.raw.read1(BODY_CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise requests.exceptions.ContentDecodingError("answer too large")
                chunks.append(chunk)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.exceptions.ConnectionError(f"answer cut off ({type(exc).__name__})") from None
        finally:
            response.close()
        response._content = decode_body(b"".join(chunks), response.headers.get("Content-Encoding"))

    def _time_budget(self) -> float:
        """REQUEST_TOTAL_S, shortened to what is left of a stop deadline."""
        if self.deadline is None:
            return REQUEST_TOTAL_S
        return max(min(REQUEST_TOTAL_S, self.deadline - self.clock.monotonic()), 0.1)

    def _past_deadline(self) -> bool:
        return self.deadline is not None and self.clock.monotonic() >= self.deadline

    def _wait_out_rate_limit(self) -> None:
        """After a 429, every call waits until the exchange's Retry-After has passed."""
        wait_s = self.backoff_until - self.clock.monotonic()
        if wait_s > 0:
            log.info("rate limited: waiting %.1f s before the next request", wait_s)
            # A stop request ends the wait: cancelling our orders matters more than the pause.
            sleep_until(self.clock, self.backoff_until, lambda: self.deadline is not None)
