"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest
import responses

from standx_auth import StandXAuth
from tests.exchange_fakes import AUTH, PERPS, WALLET_KEY, FakeClock, FakeLogin
from tests.sim_process import serve_simulator


@pytest.fixture
def sim_server():
    """A simulator served over HTTP on 127.0.0.1 for the test; yields its base URL."""
    process, url = serve_simulator()
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---- a StandXAuth against `responses` mocks, on a fake clock (client unit tests) ----------------

@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def login(rsps, clock):
    return FakeLogin(rsps, clock)


@pytest.fixture
def auth(clock):
    return StandXAuth(WALLET_KEY, auth_base_url=AUTH, perps_base_url=PERPS, clock=clock)
