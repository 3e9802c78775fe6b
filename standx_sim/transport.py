"""The in-process transport: a requests adapter that hands each request to the simulator's handler.

Mount it on the Session a client already uses (``session.mount("http://standx.sim", adapter)``)
and point the client's base URLs at that prefix: signing, serialization and error handling run
exactly as over the network, while the clock (virtual in a backtest) pays the modelled latency.

InProcessSession is a requests Session for such a client that prepares each request without
the per-call work requests does for real networks (environment, cookie jars, parsing the same
URLs again): the same request reaches the adapter, in less time (backtests).
"""
from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from datetime import timedelta
from functools import lru_cache
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.cookies import RequestsCookieJar
from requests.structures import CaseInsensitiveDict
from requests.utils import check_header_validity, get_encoding_from_headers, to_native_string
from urllib3.exceptions import TimeoutStateError
from urllib3.util import Timeout

from .clock import Clock
from .faults import DROP_HEADER, SLOW_HEADERS_HEADER, STALL_HEADER
from .ratelimit import LOCAL_CLIENT
from .wire import decompress

# handler(method, path, query, headers, body, client address)
Handler = Callable[[str, str, dict, dict, bytes, str], tuple[int, dict, bytes]]
RequestTimeout = float | tuple[float | None, float | None] | Timeout | None


def _read_timeout(timeout: RequestTimeout) -> float | None:
    """How long one read may wait. requests passes a number, a (connect, read) tuple, a urllib3
    Timeout or None. urllib3 caps a Timeout's reads by what is left of its total once connected,
    and connecting in-process takes no time: the read timeout is then min(read, total)."""
    if isinstance(timeout, Timeout):
        try:
            read = timeout.read_timeout  # the read part alone, since no connect has started
        except TimeoutStateError:  # a total and no read part
            read = None
        return min((t for t in (read, timeout.total) if t is not None), default=None)
    if isinstance(timeout, tuple):
        return timeout[1]
    return timeout


# A client calls a handful of URLs (path and query) and sends mostly the same headers (its
# session's, its token): each is parsed, prepared or checked once.
KNOWN_URLS = 1024
KNOWN_HEADERS = 1024


@lru_cache(maxsize=KNOWN_URLS)
def _target(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The path of a request URL and its query's (name, value) pairs, as the handler takes them."""
    parts = urlsplit(url)
    return parts.path, tuple(parse_qsl(parts.query, keep_blank_values=True))


@lru_cache(maxsize=None)  # HTTP has a few dozen statuses
def _reason(status: int) -> str:
    """The reason phrase of a status (ValueError for one HTTP does not define)."""
    return HTTPStatus(status).phrase


@lru_cache(maxsize=KNOWN_HEADERS)
def _encoding(content_type: str | None) -> str | None:
    """What requests takes for the text encoding of an answer of this Content-Type."""
    return get_encoding_from_headers({"content-type": content_type})


class _WireResponse(requests.Response):
    """A Response whose body is decoded from its Content-Encoding when something first reads it
    (content, text, json, iter_content): a client that reads the raw bytes and decodes them
    itself, as the daemon does, never pays for a second decoding. requests keeps the body in
    _content, which its content and iter_content read and such a client sets: the decoding
    waits behind that attribute."""

    _encoded: tuple[bytes, str | None] | None = None  # the body as sent and its coding, until decoded

    def __init__(self, body: bytes, content_encoding: str | None) -> None:
        super().__init__()
        self._encoded = (body, content_encoding)

    @property
    def _content(self) -> bytes | bool | None:
        if self._encoded is not None:
            body, coding = self._encoded
            self._content = decompress(body, coding)
        return self._decoded

    @_content.setter
    def _content(self, value: bytes | bool | None) -> None:
        self._encoded = None
        self._decoded = value


class InProcessAdapter(BaseAdapter):
    """Calls handler(method, path, query, headers, body, client_address) in-process, as a client
    at that IP address (the rate limits count per IP); see the module docstring.

    Half the latency passes on the clock before the handler runs and half after. A stall fault
    holds the answer: if it is longer than the request's read timeout, the clock advances by
    the timeout and ReadTimeout is raised (the request was processed, the answer is lost). Slow
    headers trickle in, so no per-read timeout ever fires: only a urllib3 Timeout's total
    shorter than them ends the wait (the clock advances by the total, then ReadTimeout). A
    dropped connection raises ConnectionError (the request was not processed).

    A compressed answer (Content-Encoding) reaches the client as a real one does: its raw bytes
    in ``response.raw`` (``read1`` returns them still compressed), decoded in ``content``.
    """

    def __init__(self, handler: Handler, clock: Clock, latency_s: float = 0.0,
                 client_address: str = LOCAL_CLIENT) -> None:
        super().__init__()
        self._handler = handler
        self._clock = clock
        self._latency_s = latency_s
        self._client_address = client_address

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: RequestTimeout = None,
             verify=True, cert=None, proxies=None) -> requests.Response:
        started = self._clock.now()
        path, query = _target(request.url)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        self._clock.sleep(self._latency_s / 2)
        status, headers, content = self._handler(request.method, path, dict(query), dict(request.headers), body,
                                                 self._client_address)
        headers = dict(headers)
        if headers.pop(DROP_HEADER, None):
            raise requests.exceptions.ConnectionError("connection dropped (simulated)", request=request)
        stall_s = float(headers.pop(STALL_HEADER, 0))
        slow_s = float(headers.pop(SLOW_HEADERS_HEADER, 0))
        read_timeout = _read_timeout(timeout)
        if read_timeout is not None and stall_s > read_timeout:
            self._clock.sleep(read_timeout)
            raise requests.exceptions.ReadTimeout(f"read timed out after {read_timeout} s (simulated stall)",
                                                  request=request)
        total = timeout.total if isinstance(timeout, Timeout) else None
        if total is not None and slow_s > total:
            self._clock.sleep(total)
            raise requests.exceptions.ReadTimeout(f"no answer within the total timeout of {total} s "
                                                  "(simulated slow headers)", request=request)
        self._clock.sleep(stall_s + slow_s + self._latency_s / 2)
        return self._build_response(request, status, headers, content, self._clock.now() - started)

    def _build_response(self, request: requests.PreparedRequest, status: int, headers: dict, content: bytes,
                        elapsed_s: float) -> requests.Response:
        response = _WireResponse(content, headers.get("Content-Encoding"))
        response.status_code = status
        response.reason = _reason(status)
        response.headers = CaseInsensitiveDict({**headers, "Content-Length": str(len(content))})
        response.encoding = _encoding(response.headers.get("Content-Type"))
        response._content_consumed = True  # the body is in memory; iter_content must reuse it
        response.raw = io.BytesIO(content)  # the bytes as sent: a client reading raw decodes them itself
        response.url = request.url
        response.request = request
        response.connection = self
        response.elapsed = timedelta(seconds=elapsed_s)
        return response

    def close(self) -> None:
        """Nothing to release: there is no connection pool."""


def _prepare_url(url: str, params: Any) -> str:
    """The URL requests sends for `url` and `params` (PreparedRequest.prepare_url: params encoded
    with None values dropped, IDNA, quoting; an invalid URL raises as it does)."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(url, params)
    return prepared.url


_known_url = lru_cache(maxsize=KNOWN_URLS)(_prepare_url)


# What params may be remembered by: values equal only when requests encodes them alike (unlike
# 1 == 1.0 == True, which it writes as 1, 1.0 and True).
_STRINGS = (str, bytes, type(None))
# The types of a dict's names and values that it may be remembered by: among these, equal means
# written alike (ints, but never a bool or a float, which could equal one; no subclasses).
_PLAIN_PARTS = frozenset({str, bytes, type(None), int})


def _url(url: str, params: Any) -> str:
    """_prepare_url, once per URL and params when the params are strings (a dict of strings and
    ints is remembered by its (name, value) pairs, which requests encodes alike); others every time."""
    if isinstance(params, _STRINGS):
        return _known_url(url, params)
    if isinstance(params, dict) and all(type(part) in _PLAIN_PARTS for pair in params.items() for part in pair):
        return _known_url(url, tuple(params.items()))
    return _prepare_url(url, params)


@lru_cache(maxsize=KNOWN_HEADERS)
def _checked_known_header(name: str | bytes, value: str | bytes) -> str:
    """_checked_header, once per header a client sends again and again (a valid one is
    remembered; an invalid one raises InvalidHeader every time)."""
    check_header_validity((name, value))
    return to_native_string(name)


def _checked_header(name: Any, value: Any) -> str:
    """The name requests files a header under, once check_header_validity has passed it
    (InvalidHeader if not); remembered for strings."""
    if not (isinstance(name, (str, bytes)) and isinstance(value, (str, bytes))):
        check_header_validity((name, value))  # refuses what is not a string (which may not be hashable)
    return _checked_known_header(name, value)


def _prepared_headers(session_headers: Mapping, headers: Mapping) -> CaseInsensitiveDict:
    """What requests makes of a call's headers (merge_setting, then prepare_headers), in one pass:
    the call's override the session's whatever their case (in the session's order), a header set
    to None is dropped, and each is checked as requests checks it (InvalidHeader)."""
    merged = {name.lower(): (name, value) for name, value in session_headers.items()}
    merged.update((name.lower(), (name, value)) for name, value in headers.items())
    prepared = CaseInsensitiveDict()
    for name, value in merged.values():
        if value is not None:
            prepared[_checked_header(name, value)] = value
    return prepared


class InProcessSession(requests.Session):
    """A requests Session whose request() leaves out what an in-process exchange never needs.

    requests.Session.request spends most of its time per call on the environment (proxies,
    netrc, CA bundles), cookie jars that stay empty here (an in-process answer sets none:
    requests takes cookies only from a socket's response) and parsing the same few URLs again.
    This one prepares a call from exactly what requests would use: the session's headers merged
    with the call's as requests merges them (a header set to None is dropped, an invalid one
    raises InvalidHeader), the URL with its params (requests' prepare_url, once per URL and
    params), the body (requests' prepare_body: Content-Length and Content-Type as it sets them);
    then Session.send as always: the mounted adapter, response hooks, redirects, stream. The
    adapter receives the request requests.Session would have built, header for header.

    A call that needs what is left out takes requests' full path: cookies or auth (the call's,
    the session's, or user:password in the URL), hooks, session params, trust_env turned on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False  # nothing to look up: proxies and netrc never apply in-process

    def request(self, method: str | bytes, url: str | bytes, params: Any = None, data: Any = None,
                headers: Any = None, cookies: Any = None, files: Any = None, auth: Any = None,
                timeout: RequestTimeout = None, allow_redirects: bool = True, proxies: Any = None,
                hooks: Any = None, stream: bool | None = None, verify: Any = None, cert: Any = None,
                json: Any = None) -> requests.Response:
        if not self._lean_applies(url, headers, cookies, auth, hooks):
            return super().request(method, url, params, data, headers, cookies, files, auth, timeout,
                                   allow_redirects, proxies, hooks, stream, verify, cert, json)
        prepared = requests.PreparedRequest()
        prepared.prepare_method(method.upper())
        prepared.url = _url(url, params)
        prepared.headers = _prepared_headers(self.headers, {} if headers is None else headers)
        prepared._cookies = RequestsCookieJar()  # prepare_cookies with an empty jar adds no header
        prepared.prepare_body(data or {}, files, json)
        # no auth (_lean_applies); the hooks stay the defaults PreparedRequest starts with
        settings = self.merge_environment_settings(prepared.url, proxies or {}, stream, verify, cert)
        return self.send(prepared, timeout=timeout, allow_redirects=allow_redirects, **settings)

    def resolve_redirects(self, resp: requests.Response, req: requests.PreparedRequest, *args: Any,
                          **kwargs: Any) -> Iterator:
        """requests' own redirect-following (Session.send asks after every answer, and once more
        when redirects are not followed), which for an answer that is no redirect yields nothing,
        here without parsing the request's URL first."""
        if self.get_redirect_target(resp) is None:
            return iter(())
        return super().resolve_redirects(resp, req, *args, **kwargs)

    def _lean_applies(self, url: Any, headers: Any, cookies: Any, auth: Any, hooks: Any) -> bool:
        """Whether the call needs nothing the lean preparation leaves out (the class docstring)."""
        return (not self.trust_env and not self.params and not any(self.hooks.values())
                and not cookies and not self.cookies and not auth and not self.auth and not hooks
                and isinstance(url, str) and "@" not in url
                and isinstance(self.headers, Mapping) and (headers is None or isinstance(headers, Mapping)))
