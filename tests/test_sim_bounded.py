"""A simulator served for days keeps its memory flat, whatever its clients send."""
from __future__ import annotations

import uuid

from tests.sim_helpers import SimClient, flat_sim, in_process_client


def test_requests_to_paths_that_do_not_exist_share_one_counter():
    sim = flat_sim()
    client = in_process_client(sim)
    for _ in range(300):
        assert client.get(f"/api/{uuid.uuid4().hex}").status_code == 404
    assert len(sim.api.request_counts) < 20
    assert sim.api.request_counts["(unknown path)"] == 300
    assert len(sim.exchange.metrics(client.address.lower())["requests"]) < 20


def test_expired_sessions_are_forgotten_at_the_next_login():
    sim = flat_sim()
    sim.set_max_token_lifetime(60)
    clients = [in_process_client(sim) for _ in range(5)]
    sim.clock.sleep(61)
    SimClient(clients[0].http, sim.clock, clients[0].base).login()
    assert len(sim.api._sessions) == 1
