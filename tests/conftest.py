"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

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
