"""The in-process transport: a requests adapter that hands each request to the simulator's handler.

Mount it on the Session a client already uses (``session.mount("http://standx.sim", adapter)``)
and point the client's base URLs at that prefix: signing, serialization and error handling run
exactly as over the network, while the clock (virtual in a backtest) pays the modelled latency.
"""
from __future__ import annotations

import io
from datetime import timedelta
from http import HTTPStatus
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.exceptions import TimeoutStateError
from urllib3.util import Timeout

from .clock import Clock
from .faults import DROP_HEADER, SLOW_HEADERS_HEADER, STALL_HEADER
from .wire import decompress

Handler = Callable[[str, str, dict, dict, bytes], tuple[int, dict, bytes]]
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


class InProcessAdapter(BaseAdapter):
    """Calls handler(method, path, query, headers, body) in-process; see the module docstring.

    Half the latency passes on the clock before the handler runs and half after. A stall fault
    holds the answer: if it is longer than the request's read timeout, the clock advances by
    the timeout and ReadTimeout is raised (the request was processed, the answer is lost). Slow
    headers trickle in, so no per-read timeout ever fires: only a urllib3 Timeout's total
    shorter than them ends the wait (the clock advances by the total, then ReadTimeout). A
    dropped connection raises ConnectionError (the request was not processed).

    A compressed answer (Content-Encoding) reaches the client as a real one does: its raw bytes
    in ``response.raw`` (``read1`` returns them still compressed), decoded in ``content``.
    """

    def __init__(self, handler: Handler, clock: Clock, latency_s: float = 0.0) -> None:
        super().__init__()
        self._handler = handler
        self._clock = clock
        self._latency_s = latency_s

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: RequestTimeout = None,
             verify=True, cert=None, proxies=None) -> requests.Response:
        started = self._clock.now()
        parts = urlsplit(request.url)
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        self._clock.sleep(self._latency_s / 2)
        status, headers, content = self._handler(request.method, parts.path,
                                                 dict(parse_qsl(parts.query, keep_blank_values=True)),
                                                 dict(request.headers), body)
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
        response = requests.Response()
        response.status_code = status
        response.reason = HTTPStatus(status).phrase
        response.headers = CaseInsensitiveDict({**headers, "Content-Length": str(len(content))})
        response.encoding = get_encoding_from_headers(response.headers)
        response._content = decompress(content, headers.get("Content-Encoding"))
        response._content_consumed = True  # the body is already in memory; iter_content must reuse it
        response.raw = io.BytesIO(content)  # the bytes as sent: a client reading raw decodes them itself
        response.url = request.url
        response.request = request
        response.connection = self
        response.elapsed = timedelta(seconds=elapsed_s)
        return response

    def close(self) -> None:
        """Nothing to release: there is no connection pool."""
