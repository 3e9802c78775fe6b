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

from .clock import Clock
from .faults import DROP_HEADER, STALL_HEADER

Handler = Callable[[str, str, dict, dict, bytes], tuple[int, dict, bytes]]


def _read_timeout(timeout) -> float | None:
    """requests passes a number, a (connect, read) tuple or None."""
    if isinstance(timeout, tuple):
        return timeout[1]
    return timeout


class InProcessAdapter(BaseAdapter):
    """Calls handler(method, path, query, headers, body) in-process; see the module docstring.

    Half the latency passes on the clock before the handler runs and half after. A stall fault
    holds the answer: if it is longer than the request's read timeout, the clock advances by
    the timeout and ReadTimeout is raised (the request was processed, the answer is lost). A
    dropped connection raises ConnectionError (the request was not processed).
    """

    def __init__(self, handler: Handler, clock: Clock, latency_s: float = 0.0) -> None:
        super().__init__()
        self._handler = handler
        self._clock = clock
        self._latency_s = latency_s

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout=None, verify=True,
             cert=None, proxies=None) -> requests.Response:
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
        read_timeout = _read_timeout(timeout)
        if read_timeout is not None and stall_s > read_timeout:
            self._clock.sleep(read_timeout)
            raise requests.exceptions.ReadTimeout(f"read timed out after {read_timeout} s (simulated stall)",
                                                  request=request)
        self._clock.sleep(stall_s + self._latency_s / 2)
        return self._build_response(request, status, headers, content, self._clock.now() - started)

    def _build_response(self, request: requests.PreparedRequest, status: int, headers: dict, content: bytes,
                        elapsed_s: float) -> requests.Response:
        response = requests.Response()
        response.status_code = status
        response.reason = HTTPStatus(status).phrase
        response.headers = CaseInsensitiveDict({**headers, "Content-Length": str(len(content))})
        response.encoding = get_encoding_from_headers(response.headers)
        response._content = content
        response._content_consumed = True  # the body is already in memory; iter_content must reuse it
        response.raw = io.BytesIO(content)
        response.url = request.url
        response.request = request
        response.connection = self
        response.elapsed = timedelta(seconds=elapsed_s)
        return response

    def close(self) -> None:
        """Nothing to release: there is no connection pool."""
