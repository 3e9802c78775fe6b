"""The shape of an answer on the wire, shared by the API, the faults and the control endpoints,
and the compression a CDN in front of the exchange applies to it."""
from __future__ import annotations

import json
import zlib
from functools import lru_cache

Response = tuple[int, dict[str, str], bytes]  # (HTTP status, response headers, body)
CODINGS = ("gzip", "deflate")  # in order of preference, as the CDN picks them
# What is modelled is that answers come with a Content-Encoding the client must undo, not how
# hard the CDN compresses them: level 0 writes the body in stored blocks of a valid gzip or zlib
# stream, which every decoder undoes like any other, at about a third of level 1's cost on each
# side (a backtest's answers are short and many: level 1 would add ~8 % to its run time). zlib's
# smallest window (512 bytes) is the quickest to set up; decoders accept every window size.
LEVEL = 0
WINDOW_BITS = 9
GZIP_WRAPPED = 16  # added to the window bits: a gzip header and trailer instead of zlib's
KNOWN_ACCEPT_ENCODINGS = 64  # clients send one or two Accept-Encoding values: each is parsed once
# json.dumps(obj, separators=(",", ":")) builds this very encoder on every call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def json_response(status: int, obj) -> Response:
    return status, {"Content-Type": "application/json"}, _COMPACT_JSON.encode(obj).encode()


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
    coding = _coding(accept_encoding)
    if coding is None or not body:
        return response
    return status, {**headers, "Content-Encoding": coding}, _deflate(body, gzip_wrapped=coding == "gzip")


@lru_cache(maxsize=KNOWN_ACCEPT_ENCODINGS)
def _coding(accept_encoding: str) -> str | None:
    """The coding the CDN picks for an Accept-Encoding header (None: the answer goes plain)."""
    accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}
    return next((c for c in CODINGS if c in accepted), None)


def _deflate(body: bytes, gzip_wrapped: bool) -> bytes:
    """body in the gzip format or in the zlib format ("deflate" in HTTP), at LEVEL. The same body
    always gives the same bytes: zlib writes a gzip header with no time and no name."""
    # compressobj, not zlib.compress(body, level, wbits): that form needs Python 3.11.
    packer = zlib.compressobj(LEVEL, zlib.DEFLATED, WINDOW_BITS + GZIP_WRAPPED * gzip_wrapped)
    return packer.compress(body) + packer.flush()


def decompress(body: bytes, content_encoding: str | None) -> bytes:
    """The body a client reads once it undoes Content-Encoding (gzip or deflate; one gzip
    member, as compress writes)."""
    if content_encoding == "gzip":
        return zlib.decompress(body, GZIP_WRAPPED + zlib.MAX_WBITS)
    if content_encoding == "deflate":
        return zlib.decompress(body)
    return body
