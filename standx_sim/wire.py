"""The shape of an answer on the wire, shared by the API, the faults and the control endpoints."""
from __future__ import annotations

import json

Response = tuple[int, dict[str, str], bytes]  # (HTTP status, response headers, body)


def json_response(status: int, obj) -> Response:
    return status, {"Content-Type": "application/json"}, json.dumps(obj, separators=(",", ":")).encode()


def error_response(status: int, message: str) -> Response:
    """StandX's error body: {"code": <http status>, "message": "..."}."""
    return json_response(status, {"code": status, "message": message})
