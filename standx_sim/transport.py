"""The in-process transport: a requests adapter that hands each request to the simulator's handler.

Mount it on the Session a client already uses (``session.mount("http://standx.sim", adapter)``)
and point the client's base URLs at that prefix: signing, serialization and error handling run
exactly as over the network, while the clock (virtual in a backtest) pays the modelled latency.

InProcessSession is a requests Session for such a client that prepares each request without
the per-call work requests does for real networks (environment, cookie jars, parsing the same
URLs again) and hands it to the adapter directly: the same request reaches the adapter and the
same answer the client, in less time (backtests).
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from functools import lru_cache
from http import HTTPStatus
from itertools import chain
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.cookies import RequestsCookieJar
from requests.hooks import default_hooks
from requests.models import REDIRECT_STATI
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
# The headers by which the handler marks a faulty answer for the transport (standx_sim.faults).
_FAULT_MARKS = frozenset({DROP_HEADER, STALL_HEADER, SLOW_HEADERS_HEADER})


def _read_timeout(timeout: RequestTimeout) -> float | None:
    """How long one read may wait. requests passes a number, a (connect, read) tuple, a urllib3
    Timeout or None. urllib3 caps a Timeout's reads by what is left of its total once connected,
    and connecting in-process takes no time: the read timeout is then min(read, total)."""
    if isinstance(timeout, Timeout):
        try:
            read = timeout.read_timeout  # the read part alone, since no connect has started
        except TimeoutStateError:  # a total and no read part
            read = None
        total = timeout.total
        return total if read is None else read if total is None else min(read, total)
    if isinstance(timeout, tuple):
        return timeout[1]
    return timeout


# A client calls a handful of URLs (path and query), sends a few sets of headers (its session's
# and its token, or none) and gets answers of a few content types: each is parsed or prepared
# once. Each signed write sends a set of headers of its own, which passes through.
KNOWN_URLS = 1024
KNOWN_CONTENT_TYPES = 64
KNOWN_HEADER_SETS = 256


@lru_cache(maxsize=KNOWN_URLS)
def _target(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The path of a request URL and its query's (name, value) pairs, as the handler takes them."""
    parts = urlsplit(url)
    return parts.path, tuple(parse_qsl(parts.query, keep_blank_values=True))


@lru_cache(maxsize=None)  # HTTP has a few dozen statuses
def _reason(status: int) -> str:
    """The reason phrase of a status (ValueError for one HTTP does not define)."""
    return HTTPStatus(status).phrase


@lru_cache(maxsize=KNOWN_CONTENT_TYPES)
def _encoding(content_type: str | None) -> str | None:
    """What requests takes for the text encoding of an answer of this Content-Type."""
    return get_encoding_from_headers({"content-type": content_type})


# requests' CaseInsensitiveDict keeps its entries in _store, lowercase name -> (name, value), and
# reads and writes it only by key and in order: a dict does all that its OrderedDict does there.
# Filling it through its constructor or update() goes through MutableMapping's generic methods,
# one lookup after another: that cost a request more than anything else here.

Store = dict[str, tuple[Any, Any]]


def _header_pairs(headers: Mapping) -> Iterable[tuple[Any, Any]]:
    """The (name, value) pairs of a mapping of headers, in its order, names as it keeps them."""
    if type(headers) is CaseInsensitiveDict:
        return headers._store.values()
    return headers.items()


def _store_of(pairs: Iterable[tuple[str, Any]]) -> Store:
    """The store of CaseInsensitiveDict(pairs): a name that comes again, in any case, keeps its
    first place and takes its last spelling and value, as there."""
    return {name.lower(): (name, value) for name, value in pairs}


def _case_insensitive(store: Store) -> CaseInsensitiveDict:
    """A CaseInsensitiveDict holding `store`, made without its constructor's generic filling."""
    headers = CaseInsensitiveDict.__new__(CaseInsensitiveDict)
    headers._store = store
    return headers


def _header(headers: CaseInsensitiveDict, lower_name: str) -> Any:
    """headers.get(name), without MutableMapping's generic get."""
    entry = headers._store.get(lower_name)
    return None if entry is None else entry[1]


class _WireResponse(requests.Response):
    """A real Response for an in-process answer, made with its final attributes at once: every
    one Response.__init__ sets (a test pins the list against requests' own), without the
    defaults that one fills in first, an empty CaseInsensitiveDict among them. Three are made
    only when something first reads them, and are plain attributes from then on:

    - _content, the body decoded from its Content-Encoding, which content, text, json and
      iter_content read: a client that reads the raw bytes and decodes them itself, as the
      daemon does, and sets _content, never pays for a second decoding;
    - cookies, an empty jar: an in-process answer sets none, as no socket carried it;
    - elapsed, the time the request took on the clock.
    """

    def __init__(self, request: requests.PreparedRequest, status: int, headers: CaseInsensitiveDict, body: bytes,
                 elapsed_s: float, connection: BaseAdapter) -> None:
        self._encoded = (body, _header(headers, "content-encoding"))
        self._elapsed_s = elapsed_s
        self._content_consumed = True  # the body is in memory; iter_content must reuse it
        self._next = None
        self.status_code = status
        self.headers = headers
        self.raw = io.BytesIO(body)  # the bytes as sent: a client reading raw decodes them itself
        self.url = request.url
        self.encoding = _encoding(_header(headers, "content-type"))
        self.history = []
        self.reason = _reason(status)
        self.request = request
        self.connection = connection

    def __getattr__(self, name: str) -> Any:
        # Python asks here only for an attribute not set: one of the three made when first read.
        if name == "_content":
            value = decompress(*self._encoded)
        elif name == "cookies":
            value = RequestsCookieJar()
        elif name == "elapsed":
            value = timedelta(seconds=self._elapsed_s)
        else:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        setattr(self, name, value)
        return value


class _LeanRequest(requests.PreparedRequest):
    """A real PreparedRequest, made with every attribute PreparedRequest.__init__ sets (a test
    pins the list against requests' own) at its final value. Its cookie jar, empty (an
    in-process call carries no cookie) and read only when a redirect is followed, is made
    when first read."""

    def __init__(self, method: str | bytes, url: str, headers: CaseInsensitiveDict) -> None:
        self.prepare_method(method)  # in capitals
        self.url = url
        self.headers = headers
        self.body = None
        self.hooks = default_hooks()
        self._body_position = None

    def __getattr__(self, name: str) -> Any:
        # Python asks here only for an attribute not set: the jar, made when first read.
        if name != "_cookies":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self._cookies = RequestsCookieJar()
        return self._cookies


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
        status, headers, content = self._handler(request.method, path, dict(query),
                                                 dict(_header_pairs(request.headers)), body, self._client_address)
        held_s = 0.0
        if not _FAULT_MARKS.isdisjoint(headers):
            headers = dict(headers)
            held_s = self._held_s(request, headers, timeout)
        self._clock.sleep(held_s + self._latency_s / 2)
        return self._build_response(request, status, headers, content, self._clock.now() - started)

    def _held_s(self, request: requests.PreparedRequest, headers: dict, timeout: RequestTimeout) -> float:
        """How long a faulty answer is held (a stall, slow headers), once its fault marks are
        taken out of `headers`: ConnectionError for a dropped connection, ReadTimeout once the
        clock has passed the timeout the hold outlasts."""
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
        return stall_s + slow_s

    def _build_response(self, request: requests.PreparedRequest, status: int, headers: dict, content: bytes,
                        elapsed_s: float) -> requests.Response:
        wire_headers = _case_insensitive(_store_of([*headers.items(), ("Content-Length", str(len(content)))]))
        return _WireResponse(request, status, wire_headers, content, elapsed_s, self)

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
    if isinstance(params, dict):
        pairs = tuple(params.items())
        if _PLAIN_PARTS.issuperset(map(type, chain.from_iterable(pairs))):
            return _known_url(url, pairs)
    return _prepare_url(url, params)


def _header_store(session_pairs: Iterable[tuple[Any, Any]], pairs: Iterable[tuple[Any, Any]]) -> Store:
    """What requests makes of a call's headers (merge_setting, then prepare_headers), as the
    store of a CaseInsensitiveDict: the call's override the session's whatever their case (in
    the session's order), a header set to None is dropped, and each is checked as requests
    checks it (InvalidHeader)."""
    merged = {name.lower(): (name, value) for name, value in session_pairs}
    merged.update((name.lower(), (name, value)) for name, value in pairs)
    checked = []
    for name, value in merged.values():
        if value is not None:
            check_header_validity((name, value))
            checked.append((to_native_string(name), value))
    return _store_of(checked)


_known_header_store = lru_cache(maxsize=KNOWN_HEADER_SETS)(_header_store)


def _prepared_headers(session_headers: Mapping, headers: Mapping) -> CaseInsensitiveDict:
    """_header_store, once per set of session and call headers that are all hashable (equal
    sets make equal headers); the headers of the PreparedRequest, its own copy."""
    pairs = (tuple(_header_pairs(session_headers)), tuple(_header_pairs(headers)))
    try:
        store = _known_header_store(*pairs)
    except TypeError:  # an unhashable value: no header requests accepts, refused below
        store = _header_store(*pairs)
    return _case_insensitive(dict(store))  # prepare_body may add to it: not to the one remembered


class InProcessSession(requests.Session):
    """A requests Session whose request() leaves out what an in-process exchange never needs.

    requests.Session.request spends most of its time per call on the environment (proxies,
    netrc, CA bundles), cookie jars that stay empty here (an in-process answer sets none:
    requests takes cookies only from a socket's response) and parsing the same few URLs again.
    This one prepares a call from exactly what requests would use: the session's headers merged
    with the call's as requests merges them (a header set to None is dropped, an invalid one
    raises InvalidHeader), the URL with its params (requests' prepare_url, once per URL and
    params), the body (requests' prepare_body: Content-Length and Content-Type as it sets them).
    The adapter receives the request requests.Session would have built, header for header.

    A call to an InProcessAdapter then goes to it directly, without Session.send's steps that
    have nothing to do for it: response hooks (none, see below), taking cookies from the answer
    (an in-process one has none), following redirects (only when the answer is one: then as
    Session.send does). An answer that is not streamed is read at once, as there. Its elapsed
    stays the adapter's, the time the request took on the clock (Session.send would write over
    it the host's time spent in the adapter, which nothing in a backtest means). Calls to any
    other adapter go through Session.send as always.

    A call that needs what is left out takes requests' full path: cookies or auth (the call's,
    the session's, or user:password in the URL), hooks, session params, trust_env turned on.
    """

    _adapters_by_url: dict[Any, BaseAdapter] | None = None  # get_adapter's answers since the last mount

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False  # nothing to look up: proxies and netrc never apply in-process

    def mount(self, prefix: str, adapter: BaseAdapter) -> None:
        super().mount(prefix, adapter)
        self._adapters_by_url = None

    def get_adapter(self, url: str) -> BaseAdapter:
        """Session.get_adapter, once per URL until the next mount (adapters change by mount()):
        a client asks for every request, here twice (the daemon, then request())."""
        known = self._adapters_by_url
        if known is None or len(known) >= KNOWN_URLS:
            known = self._adapters_by_url = {}
        adapter = known.get(url)
        if adapter is None:
            adapter = known[url] = super().get_adapter(url)
        return adapter

    def request(self, method: str | bytes, url: str | bytes, params: Any = None, data: Any = None,
                headers: Any = None, cookies: Any = None, files: Any = None, auth: Any = None,
                timeout: RequestTimeout = None, allow_redirects: bool = True, proxies: Any = None,
                hooks: Any = None, stream: bool | None = None, verify: Any = None, cert: Any = None,
                json: Any = None) -> requests.Response:
        if not self._lean_applies(url, headers, cookies, auth, hooks):
            return super().request(method, url, params, data, headers, cookies, files, auth, timeout,
                                   allow_redirects, proxies, hooks, stream, verify, cert, json)
        prepared = self._prepared(method, url, params, data, headers, files, json)
        adapter = self.get_adapter(prepared.url)
        if not isinstance(adapter, InProcessAdapter):
            settings = self.merge_environment_settings(prepared.url, proxies or {}, stream, verify, cert)
            return self.send(prepared, timeout=timeout, allow_redirects=allow_redirects, **settings)
        streamed = self.stream if stream is None else stream  # merge_setting's choice for a flag
        response = adapter.send(prepared, stream=streamed, timeout=timeout)  # it has no use for verify, cert, proxies
        if response.status_code in REDIRECT_STATI and self.get_redirect_target(response) is not None:
            settings = self.merge_environment_settings(prepared.url, proxies or {}, stream, verify, cert)
            response = self._redirected(response, prepared, allow_redirects, timeout=timeout, **settings)
        if not streamed:
            response.content  # read now, as Session.send does
        return response

    def _prepared(self, method: str | bytes, url: str, params: Any, data: Any, headers: Mapping | None, files: Any,
                  json: Any) -> requests.PreparedRequest:
        """The PreparedRequest Session.prepare_request makes of a call _lean_applies to."""
        # prepare_cookies adds no header for an empty jar; there is no auth (_lean_applies), and
        # the hooks stay the defaults a PreparedRequest starts with
        prepared = _LeanRequest(method, _url(url, params),
                                _prepared_headers(self.headers, {} if headers is None else headers))
        if data or files or json is not None:
            prepared.prepare_body(data, files, json)
        else:  # prepare_body without a body comes down to this (the body stays None)
            prepared.prepare_content_length(None)
        return prepared

    def _redirected(self, response: requests.Response, prepared: requests.PreparedRequest, allow_redirects: bool,
                    **settings: Any) -> requests.Response:
        """What Session.send makes of an answer that redirects: followed, the last answer with
        the earlier ones as its history; not followed, the answer with the next request in
        `next`."""
        if not allow_redirects:
            response._next = next(self.resolve_redirects(response, prepared, yield_requests=True, **settings), None)
            return response
        *history, last = [response, *self.resolve_redirects(response, prepared, **settings)]
        last.history = history
        return last

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
                and _is_mapping(self.headers) and (headers is None or _is_mapping(headers)))


def _is_mapping(headers: Any) -> bool:
    """isinstance(headers, Mapping), at once for the kinds a client passes."""
    return type(headers) in (dict, CaseInsensitiveDict) or isinstance(headers, Mapping)
