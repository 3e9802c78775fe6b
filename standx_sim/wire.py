"""The shape of an answer on the wire, shared by the API, the faults and the control endpoints,
and the compression a CDN in front of the exchange applies to it."""
from __future__ import annotations

import gzip
import json
import zlib

Response = tuple[int, dict[str, str], bytes]  # (HTTP status, response headers, body)
CODINGS = ("gzip", "deflate")  # in order of preference, as the CDN picks them


def json_response(status: int, obj) -> Response:
    return status, {"Content-Type": "application/json"}, json.dumps(obj, separators=(",", ":")).encode()


def error_response(status: int, message: str) -> Response:
    """StandX's error body: {"code": <http status>, "message": "..."}."""
    return json_response(status, {"code": status, "message": message})


def rate_limited_response(retry_after_s: int) -> Response:
    """HTTP 429 in StandX's error shape, with the whole seconds to wait in Retry-After."""
    status, headers, body = error_response(429, "too many requests")
    return status, {**headers, "Retry-After": str(retry_after_s)}, body


def compress(response: Response, accept_encoding: str) -> Response:
    """The answer gzip-compressed if the client accepts gzip, else deflate-compressed if it
    accepts deflate, else unchanged; an empty body is never compressed."""
    status, headers, body = response
    accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}
    coding = next((c for c in CODINGS if c in accepted), None)
    if coding is None or not body:
        return response
    # mtime=0: the same answer compresses to the same bytes, so runs stay reproducible.
    packed = gzip.compress(body, mtime=0) if coding == "gzip" else zlib.compress(body)
    return status, {**headers, "Content-Encoding": coding}, packed


def decompress(body: bytes, content_encoding: str | None) -> bytes:
    """The body a client reads once it undoes Content-Encoding (gzip or deflate)."""
    if content_encoding == "gzip":
        return gzip.decompress(body)
    if content_encoding == "deflate":
        return zlib.decompress(body)
    return body
