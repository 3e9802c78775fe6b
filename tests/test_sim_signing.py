"""Body signatures on signed POSTs: v1,<id>,<ts>,<body> with the login's Ed25519 key."""
from __future__ import annotations

from nacl.signing import SigningKey
from tests.sim_helpers import compact, flat_sim, in_process_client


def test_correctly_signed_order_is_accepted():
    client = in_process_client(flat_sim())
    response = client.new_order()
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 0 and body["message"] == "success" and body["request_id"]


def test_signature_by_another_key_is_403_invalid_body_signature():
    client = in_process_client(flat_sim())
    response = client.post_signed("/api/new_order", client.order_payload(), key=SigningKey.generate())
    assert response.status_code == 403
    assert response.json() == {"code": 403, "message": "invalid body signature"}


def test_body_changed_after_signing_is_403():
    client = in_process_client(flat_sim())
    signed = compact(client.order_payload(qty="0.0010"))
    response = client.post_signed("/api/new_order", signed, sent_body=signed.replace("0.0010", "0.0020"))
    assert response.status_code == 403
    assert response.json()["message"] == "invalid body signature"


def test_body_reserialized_with_spaces_is_403():
    client = in_process_client(flat_sim())
    payload = client.order_payload()
    response = client.post_signed("/api/new_order", payload, sent_body=compact(payload).replace(",", ", "))
    assert response.status_code == 403


def test_timestamp_older_than_30_s_is_403_signature_expired():
    sim = flat_sim()
    client = in_process_client(sim)
    stale_ms = int((sim.clock.now() - 31) * 1000)
    response = client.post_signed("/api/new_order", client.order_payload(), ts_ms=stale_ms)
    assert response.status_code == 403
    assert response.json() == {"code": 403, "message": "signature has expired"}


def test_timestamp_in_seconds_instead_of_ms_is_403_signature_expired():
    sim = flat_sim()
    client = in_process_client(sim)
    response = client.post_signed("/api/new_order", client.order_payload(), ts_ms=int(sim.clock.now()))
    assert response.json()["message"] == "signature has expired"


def test_signed_post_without_signature_headers_is_403():
    client = in_process_client(flat_sim())
    response = client.http.post(f"{client.base}/api/new_order", data=compact(client.order_payload()),
                                headers=client.auth_headers())
    assert response.status_code == 403


def test_signed_post_without_bearer_is_401_before_the_signature_check():
    client = in_process_client(flat_sim())
    body = compact(client.order_payload())
    response = client.http.post(f"{client.base}/api/new_order", data=body, headers=client.signature_headers(body))
    assert response.status_code == 401


def test_header_names_are_case_insensitive():
    client = in_process_client(flat_sim())
    body = compact(client.order_payload())
    headers = {k.title(): v for k, v in {**client.auth_headers(), **client.signature_headers(body)}.items()}
    response = client.http.post(f"{client.base}/api/new_order", data=body, headers=headers)
    assert response.status_code == 200
