"""What the simulator writes on the wire is what it always wrote, in less time: compressed answers
decode to the answer, the same answer gives the same bytes, JSON is compact, and the quick
formatting of Date headers and ISO times writes exactly what email.utils and strftime write."""
from __future__ import annotations

import gzip
import json
import math
import random
import zlib
from datetime import datetime, timezone
from email.utils import formatdate

import pytest

from standx_sim import wire
from standx_sim.api import http_date, iso_time

START_TS = 1_767_657_600.0  # 2026-01-06 00:00 UTC
ANSWER = (200, {"Content-Type": "application/json"},
          json.dumps([{"symbol": "BTC-USD", "price": "95000.1", "qty": str(k)} for k in range(100)]).encode())


@pytest.mark.parametrize("coding, decode", [("gzip", gzip.decompress), ("deflate", zlib.decompress)])
def test_a_compressed_answer_decodes_to_the_answer_with_any_decoder(coding, decode):
    status, headers, body = wire.compress(ANSWER, coding)
    assert (status, headers) == (200, {"Content-Type": "application/json", "Content-Encoding": coding})
    assert decode(body) == ANSWER[2] == wire.decompress(body, coding)
    assert body != ANSWER[2]


@pytest.mark.parametrize("coding", wire.CODINGS)
def test_the_same_answer_always_compresses_to_the_same_bytes(coding):
    assert wire.compress(ANSWER, coding) == wire.compress(ANSWER, coding)


@pytest.mark.parametrize("accept_encoding, coding", [
    ("gzip, deflate", "gzip"), ("deflate, gzip", "gzip"), ("DEFLATE;q=0.5", "deflate"), ("br, identity", None),
])
def test_the_coding_is_picked_from_accept_encoding_every_time(accept_encoding, coding):
    for _ in range(2):  # the second time from what was remembered
        assert wire.compress(ANSWER, accept_encoding)[1].get("Content-Encoding") == coding


def test_json_answers_are_compact_as_json_dumps_writes_them():
    obj = {"a": [1, 2.5, None, True], "é": "x", "n": {"k": "v"}}
    assert wire.json_response(200, obj) == (200, {"Content-Type": "application/json"},
                                            json.dumps(obj, separators=(",", ":")).encode())


def near_whole_seconds(rng: random.Random) -> list[float]:
    """Times within a few microseconds of a whole second, where rounding to the microsecond can
    carry into the next second, and the floats just below whole seconds."""
    seconds = [START_TS + rng.randrange(10**6) for _ in range(2000)]
    return ([s - k * 1e-7 for s in seconds[:200] for k in range(12)] + [math.nextafter(s, 0) for s in seconds]
            + [s - 5e-7 for s in seconds] + [0.9999995, 1.9999995, 2.9999995])


def sample_times() -> list[float]:
    rng = random.Random(11)
    return [START_TS + rng.random() * 10**7 for _ in range(20000)] + near_whole_seconds(rng)


def test_the_date_header_is_what_formatdate_writes_for_every_time():
    times = sample_times()
    assert [http_date(t) for t in times] == [formatdate(t, usegmt=True) for t in times]


def test_the_date_header_moves_on_with_the_second_it_is_in():
    assert http_date(START_TS + 0.2) == "Tue, 06 Jan 2026 00:00:00 GMT"
    assert http_date(START_TS + 1.0) == "Tue, 06 Jan 2026 00:00:01 GMT"
    assert http_date(START_TS + 0.2) == "Tue, 06 Jan 2026 00:00:00 GMT"


def test_iso_times_are_what_strftime_writes_for_every_time():
    times = sample_times()
    expected = [datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in times]
    assert [iso_time(t) for t in times] == expected
    assert iso_time(START_TS + 0.756) == "2026-01-06T00:00:00.756000Z"
