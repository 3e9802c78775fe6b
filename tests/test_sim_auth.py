"""The simulator's login and token checks (contract Part 1, steps 1-6)."""
from __future__ import annotations

from eth_account import Account
from tests.sim_helpers import BASE_URL, compact, flat_sim, in_process_client, jwt_payload

from standx_sim.api import SIGNIN_TTL_S


def test_full_login_gives_a_token_that_reads_the_balance():
    sim = flat_sim()
    client = in_process_client(sim)
    response = client.get("/api/query_balance")
    assert response.status_code == 200
    assert response.json()["balance"] == "1000"


def test_login_answer_has_the_documented_fields():
    client = in_process_client(flat_sim(), login=False)
    signed_data = client.prepare().json()["signedData"]
    body = client.send_login(client.sign_message(signed_data), signed_data).json()
    assert set(body) == {"token", "address", "alias", "chain", "perpsAlpha"}
    assert body["address"].lower() == client.address.lower()
    assert body["chain"] == "bsc" and body["perpsAlpha"] is True


def test_signed_data_names_the_wallet_and_the_request_id_and_lives_180_s():
    client = in_process_client(flat_sim(), login=False)
    response = client.prepare()
    assert response.json()["success"] is True
    payload = jwt_payload(response.json()["signedData"])
    assert payload["address"] == client.address
    assert payload["requestId"] == client.request_id
    assert payload["chainId"] == 56
    assert payload["exp"] - payload["iat"] == 180
    assert payload["message"].startswith(
        f"standx.com wants you to sign in with your Ethereum account:\n{client.address}\n")
    assert client.request_id in payload["message"]


def test_token_expiry_claim_follows_expires_seconds():
    client = in_process_client(flat_sim(), login=False)
    signed_data = client.prepare().json()["signedData"]
    token = client.send_login(client.sign_message(signed_data), signed_data, expiresSeconds=3600).json()["token"]
    claims = jwt_payload(token)
    assert claims["exp"] - claims["iat"] == 3600


def test_token_expiry_defaults_to_seven_days():
    client = in_process_client(flat_sim())
    claims = jwt_payload(client.token)
    assert claims["exp"] - claims["iat"] == 604800


def test_token_stops_working_after_its_expiry():
    sim = flat_sim()
    client = in_process_client(sim, login=False)
    signed_data = client.prepare().json()["signedData"]
    client.token = client.send_login(client.sign_message(signed_data), signed_data, expiresSeconds=60).json()["token"]
    sim.clock.sleep(61)
    assert client.get("/api/query_balance").status_code == 401


def test_login_signed_by_another_wallet_is_refused():
    client = in_process_client(flat_sim(), login=False)
    signed_data = client.prepare().json()["signedData"]
    response = client.send_login(client.sign_message(signed_data, wallet=Account.create()), signed_data)
    assert response.status_code == 401
    assert "token" not in response.json()


def test_reused_signed_data_is_refused():
    client = in_process_client(flat_sim(), login=False)
    signed_data = client.prepare().json()["signedData"]
    signature = client.sign_message(signed_data)
    assert client.send_login(signature, signed_data).status_code == 200
    assert client.send_login(signature, signed_data).status_code == 401


def test_expired_signed_data_is_refused():
    sim = flat_sim()
    client = in_process_client(sim, login=False)
    signed_data = client.prepare().json()["signedData"]
    sim.clock.sleep(SIGNIN_TTL_S + 1)
    response = client.send_login(client.sign_message(signed_data), signed_data)
    assert response.status_code == 401
    assert "expired" in response.json()["message"]


def test_wrong_chain_is_refused():
    client = in_process_client(flat_sim(), login=False)
    response = client.http.post(f"{BASE_URL}/v1/offchain/prepare-signin", params={"chain": "solana"},
                                data=compact({"address": client.address, "requestId": client.request_id}))
    assert response.status_code == 400
    assert response.json()["code"] == 400


def test_login_with_a_body_that_is_not_json_is_refused():
    client = in_process_client(flat_sim(), login=False)
    response = client.http.post(f"{BASE_URL}/v1/offchain/login", params={"chain": "bsc"}, data="{not json")
    assert response.status_code == 400


def test_prepare_signin_without_request_id_is_refused():
    client = in_process_client(flat_sim(), login=False)
    response = client.http.post(f"{BASE_URL}/v1/offchain/prepare-signin", params={"chain": "bsc"},
                                data=compact({"address": client.address}))
    assert response.status_code == 400
    assert "requestId" in response.json()["message"]


def test_login_signature_without_0x_prefix_is_refused():
    client = in_process_client(flat_sim(), login=False)
    signed_data = client.prepare().json()["signedData"]
    assert client.send_login(client.sign_message(signed_data)[2:], signed_data).status_code == 400


def test_private_call_without_bearer_token_is_401():
    client = in_process_client(flat_sim())
    response = client.http.get(f"{BASE_URL}/api/query_balance")
    assert response.status_code == 401
    assert response.json()["code"] == 401


def test_private_call_with_unknown_bearer_token_is_401():
    client = in_process_client(flat_sim())
    client.token = client.token[:-4] + "AAAA"
    assert client.get("/api/query_positions").status_code == 401


def test_public_endpoints_need_no_token():
    client = in_process_client(flat_sim(), login=False)
    assert client.http.get(f"{BASE_URL}/api/query_symbol_info", params={"symbol": "BTC-USD"}).status_code == 200
    assert client.http.get(f"{BASE_URL}/api/query_symbol_price", params={"symbol": "BTC-USD"}).status_code == 200
    health = client.http.get(f"{BASE_URL}/api/health")
    assert health.status_code == 200 and health.text == "OK"
