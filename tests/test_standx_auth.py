"""Unit tests for standx_auth: signing, login, the signed/unsigned call path, retries, errors.

HTTP is mocked with `responses`; time is a FakeClock, so nothing waits and nothing leaves
the machine.
"""
from __future__ import annotations

import base64
import email.utils
import json
import threading

import base58
import pytest
import requests
import responses
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.signing import SigningKey

import standx_auth
from standx_auth import (AuthError, RateLimitError, SignatureExpiredError, StandXAuth,
                         StandXError, UnknownOutcomeError, normalize_private_key,
                         sign_login_message, sign_request)
from tests.exchange_fakes import (AUTH, OTHER_ADDRESS, PERPS, WALLET_ADDRESS, WALLET_KEY,
                                  FakeLogin, jwt_payload, perps_calls, query_of,
                                  request_key, signin_message, verify_signed)

ORDER = {"symbol": "BTC-USD", "side": "buy", "order_type": "limit", "qty": "0.001",
         "price": "50000.1", "time_in_force": "alo", "reduce_only": False}
HTML_502 = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
            "</body>\r\n</html>\r\n")


# ---- 1. known-answer vectors -------------------------------------------------------------

KAT_SEED = bytes(range(32))
KAT_ID = "00000000-0000-4000-8000-000000000001"
KAT_TS = 1700000000123
KAT_PAYLOAD = '{"symbol":"BTC-USD","qty":"0.001"}'
KAT_SIGNATURE = ("SUXvutD9AVJ2LjfsYf7TeSoNsodx0fqVoYBMEfe0eysTU9fx+rugmsY1YIVFgf8pYbrNbFGXBOJ50"
                 "SnMDAMdAQ==")
KAT_LOGIN_MESSAGE = ("standx.com wants you to sign in with your Ethereum account:\n"
                     "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23\n\nNonce: abc123")
KAT_LOGIN_SIGNATURE = ("0x7c3200e2c34d6bd4b9ce925997303bf16cf0dcfbb618ea7861a8759830fd825d"
                       "00b5f962899f7e88a64fee961f833678cfefcb7f210ab25a21c500341bd4713c1c")


def test_sign_request_known_answer_vector():
    headers = sign_request(SigningKey(KAT_SEED), KAT_ID, KAT_TS, KAT_PAYLOAD)
    assert headers == {"x-request-sign-version": "v1", "x-request-id": KAT_ID,
                       "x-request-timestamp": "1700000000123",
                       "x-request-signature": KAT_SIGNATURE}


def test_sign_request_signature_verifies_over_v1_id_timestamp_payload():
    verify_key = SigningKey(KAT_SEED).verify_key
    message = f"v1,{KAT_ID},{KAT_TS},{KAT_PAYLOAD}".encode()
    assert verify_key.verify(message, base64.b64decode(KAT_SIGNATURE)) == message


def test_sign_login_message_known_answer_vector():
    assert sign_login_message(WALLET_KEY, KAT_LOGIN_MESSAGE) == KAT_LOGIN_SIGNATURE
    assert len(KAT_LOGIN_SIGNATURE) == 132


def test_sign_login_message_recovers_to_wallet_address():
    signature = sign_login_message(WALLET_KEY, KAT_LOGIN_MESSAGE)
    recovered = Account.recover_message(encode_defunct(text=KAT_LOGIN_MESSAGE),
                                        signature=signature)
    assert recovered == WALLET_ADDRESS


# ---- 2. login flow ------------------------------------------------------------------------

def test_prepare_signin_sends_chain_bsc_address_and_base58_public_key(auth, login):
    auth.get_token()
    request = login.prepare_requests[0]
    assert query_of(request) == {"chain": ["bsc"]}
    body = json.loads(request.body)
    assert set(body) == {"address", "requestId"}
    assert body["address"] == WALLET_ADDRESS
    assert len(base58.b58decode(body["requestId"])) == 32


def test_login_sends_recoverable_signature_same_jwt_and_seven_days(auth, login):
    auth.get_token()
    request = login.login_requests[0]
    assert query_of(request) == {"chain": ["bsc"]}
    body = json.loads(request.body)
    assert set(body) == {"signature", "signedData", "expiresSeconds"}
    assert body["signedData"] == login.signed_data[0]
    assert body["expiresSeconds"] == 604800
    assert body["signature"].startswith("0x") and len(body["signature"]) == 132
    message = jwt_payload(body["signedData"])["message"]
    assert Account.recover_message(encode_defunct(text=message),
                                   signature=body["signature"]) == WALLET_ADDRESS


def test_get_token_returns_login_token_and_reuses_it(auth, login):
    first = auth.get_token()
    assert first == login.tokens[0]
    assert auth.get_token() == first
    assert login.logins == 1


def test_signed_post_uses_key_whose_public_key_was_the_request_id(auth, login, rsps):
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    verify_signed(perps_calls(rsps)[0].request, request_key(login))


def test_current_token_is_none_before_login_and_never_logs_in(auth, login):
    assert auth.current_token() is None
    assert login.logins == 0
    token = auth.get_token()
    assert auth.current_token() == token


def test_last_request_id_is_the_x_request_id_this_thread_sent(auth, login, rsps):
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    assert auth.last_request_id() is None
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    sent = perps_calls(rsps)[0].request.headers["x-request-id"]
    assert auth.last_request_id() == sent
    seen = []
    thread = threading.Thread(target=lambda: seen.append(auth.last_request_id()))
    thread.start()
    thread.join()
    assert seen == [None]  # another thread's request is not this one's


# ---- 3. refusals before signing ---------------------------------------------------------

@pytest.mark.parametrize("overrides, prepare_answer", [
    ({"address": OTHER_ADDRESS, "message": signin_message(OTHER_ADDRESS)}, None),
    ({"requestId": base58.b58encode(bytes(SigningKey(KAT_SEED).verify_key)).decode()}, None),
    ({"message": signin_message(OTHER_ADDRESS)}, None),
    ({"message": ""}, None),
    ({}, lambda jwt: {"success": False, "signedData": jwt}),
    ({}, lambda jwt: {"success": True}),
    ({}, lambda jwt: {"signedData": jwt}),
    ({}, lambda jwt: {"success": True, "signedData": "not-a-jwt"}),
], ids=["other-wallet", "other-signing-key", "message-without-our-address", "empty-message",
        "success-false", "no-signed-data", "success-missing", "malformed-jwt"])
def test_login_refuses_suspicious_prepare_signin_without_sending_login(
        auth, rsps, clock, overrides, prepare_answer):
    login = FakeLogin(rsps, clock, payload_overrides=overrides, prepare_answer=prepare_answer)
    with pytest.raises(AuthError):
        auth.get_token()
    assert len(login.prepare_requests) == 1
    assert login.login_requests == []


@pytest.mark.parametrize("answer", [lambda t: {"address": WALLET_ADDRESS},
                                    lambda t: {"token": ""}, lambda t: {"token": None}],
                         ids=["missing", "empty", "null"])
def test_login_answer_without_token_raises_auth_error(auth, rsps, clock, answer):
    FakeLogin(rsps, clock, login_answer=answer)
    with pytest.raises(AuthError):
        auth.get_token()


# ---- 4. signed POSTs ----------------------------------------------------------------------

def test_signed_post_body_is_byte_identical_to_the_signed_string(auth, login, rsps):
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    request = perps_calls(rsps)[0].request
    verify_signed(request, request_key(login))  # signature over exactly the bytes sent
    assert json.loads(request.body) == ORDER


def test_signed_post_body_is_compact_json(auth, login, rsps):
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    assert perps_calls(rsps)[0].request.body == json.dumps(ORDER, separators=(",", ":")).encode()


def test_signed_post_sends_signature_headers_content_type_and_bearer(auth, login, rsps):
    rsps.add(responses.POST, f"{PERPS}/api/cancel_order", json={"code": 0})
    auth.make_api_call("/api/cancel_order", method="POST", data={"order_id": 7})
    h = perps_calls(rsps)[0].request.headers
    assert h["x-request-sign-version"] == "v1"
    assert h["x-request-id"] and h["x-request-timestamp"].isdigit()
    assert len(base64.b64decode(h["x-request-signature"], validate=True)) == 64
    assert h["Content-Type"] == "application/json"
    assert h["Authorization"] == f"Bearer {login.tokens[0]}"


def test_each_signed_post_gets_fresh_request_id_and_timestamp(auth, login, rsps, clock):
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    clock.advance(0.25)
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    first, second = (c.request.headers for c in perps_calls(rsps))
    assert first["x-request-id"] != second["x-request-id"]
    assert int(second["x-request-timestamp"]) - int(first["x-request-timestamp"]) == 250


def test_request_timestamp_is_clock_ms_plus_time_offset(auth, login, rsps, clock):
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    auth.time_offset_s = 2.5
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    sent = perps_calls(rsps)[0].request.headers["x-request-timestamp"]
    assert sent == str(int(clock.now() * 1000) + 2500)


# ---- 5. GETs ------------------------------------------------------------------------------

def test_private_get_carries_bearer_and_no_body_signature(auth, login, rsps):
    rsps.add(responses.GET, f"{PERPS}/api/query_positions", json=[])
    assert auth.make_api_call("/api/query_positions") == []
    h = perps_calls(rsps)[0].request.headers
    assert h["Authorization"] == f"Bearer {login.tokens[0]}"
    assert "x-request-signature" not in h


@pytest.mark.parametrize("endpoint", ["/api/query_symbol_info", "/api/query_symbol_price"])
def test_public_get_sends_no_authorization_and_needs_no_login(auth, login, rsps, endpoint):
    rsps.add(responses.GET, f"{PERPS}{endpoint}", json={"symbol": "BTC-USD"})
    auth.make_api_call(endpoint, params={"symbol": "BTC-USD"})
    assert "Authorization" not in perps_calls(rsps)[0].request.headers
    assert login.prepare_requests == []


# ---- 6. retry rule (truth table) ----------------------------------------------------------

NEW_ORDER = ("POST", "/api/new_order")
POSITIONS = ("GET", "/api/query_positions")


@pytest.mark.parametrize("call, answer, expected, calls", [
    (POSITIONS, {"body": requests.exceptions.ReadTimeout()}, StandXError, 3),
    (POSITIONS, {"body": requests.exceptions.ConnectTimeout()}, StandXError, 3),
    (POSITIONS, {"body": requests.exceptions.ConnectionError()}, StandXError, 3),
    (POSITIONS, {"body": "{not json", "status": 200}, StandXError, 1),
    (NEW_ORDER, {"body": requests.exceptions.ReadTimeout()}, UnknownOutcomeError, 1),
    (NEW_ORDER, {"body": requests.exceptions.ConnectionError()}, UnknownOutcomeError, 1),
    (NEW_ORDER, {"json": {"code": 500, "message": "internal"}, "status": 500},
     UnknownOutcomeError, 1),
    (NEW_ORDER, {"body": HTML_502, "status": 502, "content_type": "text/html"},
     UnknownOutcomeError, 1),
    (NEW_ORDER, {"body": "{not json", "status": 200}, UnknownOutcomeError, 1),
    (NEW_ORDER, {"body": requests.exceptions.ConnectTimeout()}, StandXError, 1),
    (NEW_ORDER, {"json": {"code": 400, "message": "invalid qty"}, "status": 400},
     StandXError, 1),
], ids=["get-read-timeout", "get-connect-timeout", "get-connection-error", "get-bad-json",
        "post-read-timeout", "post-connection-error", "post-500", "post-502-html",
        "post-200-bad-json", "post-connect-timeout", "post-400"])
def test_retry_rule(auth, login, rsps, call, answer, expected, calls):
    method, endpoint = call
    rsps.add(method, f"{PERPS}{endpoint}", **answer)
    with pytest.raises(StandXError) as info:
        auth.make_api_call(endpoint, method=method, data=ORDER if method == "POST" else None)
    assert type(info.value) is expected
    assert len(perps_calls(rsps)) == calls


def test_read_succeeds_on_third_attempt_after_pausing_on_the_clock(auth, login, rsps, clock):
    url = f"{PERPS}/api/query_positions"
    rsps.add(responses.GET, url, body=requests.exceptions.ReadTimeout())
    rsps.add(responses.GET, url, body=requests.exceptions.ConnectionError())
    rsps.add(responses.GET, url, json=[{"symbol": "BTC-USD", "qty": "0"}])
    assert auth.make_api_call("/api/query_positions") == [{"symbol": "BTC-USD", "qty": "0"}]
    assert len(perps_calls(rsps)) == 3
    assert len(clock.sleeps) == 2 and all(s > 0 for s in clock.sleeps)


# ---- 7. 401 -------------------------------------------------------------------------------

def test_401_logs_in_again_once_and_retries_the_call_once(auth, login, rsps):
    url = f"{PERPS}/api/query_positions"
    rsps.add(responses.GET, url, json={"code": 401, "message": "unauthorized"}, status=401)
    rsps.add(responses.GET, url, json=[])
    auth.get_token()
    assert auth.make_api_call("/api/query_positions") == []
    assert login.logins == 2
    calls = perps_calls(rsps)
    assert len(calls) == 2
    assert calls[1].request.headers["Authorization"] == f"Bearer {login.tokens[1]}"


def test_401_on_post_retries_once_signed_with_the_new_login_key(auth, login, rsps):
    url = f"{PERPS}/api/new_order"
    rsps.add(responses.POST, url, json={"code": 401, "message": "unauthorized"}, status=401)
    rsps.add(responses.POST, url, json={"code": 0})
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    retry = perps_calls(rsps)[1].request
    assert len(perps_calls(rsps)) == 2
    verify_signed(retry, request_key(login, 1))
    assert retry.headers["Authorization"] == f"Bearer {login.tokens[1]}"


def test_second_401_raises_auth_error_without_looping(auth, login, rsps):
    rsps.add(responses.GET, f"{PERPS}/api/query_balance", json={"code": 401, "message": "no"},
             status=401)
    with pytest.raises(AuthError) as info:
        auth.make_api_call("/api/query_balance")
    assert info.value.status == 401
    assert len(perps_calls(rsps)) == 2
    assert login.logins == 2


# ---- 8. token lifetime --------------------------------------------------------------------

def test_relogin_when_clock_passes_token_exp_minus_margin(auth, rsps, clock):
    login = FakeLogin(rsps, clock, token_ttl_s=2 * 86400)  # exchange grants 2 d, not the 7 d asked
    auth.get_token()
    margin = standx_auth.RELOGIN_MARGIN_S
    clock.advance(2 * 86400 - margin - 1)
    auth.get_token()
    assert login.logins == 1
    clock.advance(1)
    assert auth.get_token() == login.tokens[0]  # the call that starts the renewal is not held up
    assert login.logins == 2
    assert auth.get_token() == login.tokens[1]


def test_token_without_exp_falls_back_to_expires_seconds(auth, rsps, clock):
    login = FakeLogin(rsps, clock, token_exp=False)
    auth.get_token()
    margin = standx_auth.RELOGIN_MARGIN_S
    clock.advance(604800 - margin - 1)
    auth.get_token()
    assert login.logins == 1
    clock.advance(1)
    auth.get_token()
    assert login.logins == 2


def test_eight_day_run_keeps_sending_unexpired_tokens(auth, login, rsps, clock):
    sent = []

    def positions(request):
        token = request.headers["Authorization"].removeprefix("Bearer ")
        sent.append((clock.now(), jwt_payload(token)["exp"]))
        return 200, {}, "[]"

    rsps.add_callback(responses.GET, f"{PERPS}/api/query_positions", callback=positions)
    for _ in range(8 * 24):
        auth.make_api_call("/api/query_positions")
        clock.advance(3600)
    assert len(sent) == 8 * 24
    assert all(exp > now for now, exp in sent)
    assert login.logins >= 2


def test_short_lived_token_is_not_renewed_on_every_call(auth, rsps, clock):
    login = FakeLogin(rsps, clock, token_ttl_s=1800)
    auth.get_token()
    auth.get_token()
    auth.get_token()
    assert login.logins == 1


# ---- 9. errors ----------------------------------------------------------------------------

def test_html_502_on_read_is_short_exchange_unavailable_error(auth, login, rsps):
    rsps.add(responses.GET, f"{PERPS}/api/query_positions", body=HTML_502, status=502,
             content_type="text/html")
    with pytest.raises(StandXError) as info:
        auth.make_api_call("/api/query_positions")
    text = str(info.value)
    assert "exchange unavailable" in text
    assert "<" not in text and "Bad Gateway" not in text and len(text) < 100
    assert info.value.status == 502


def test_long_error_message_is_truncated(auth, login, rsps):
    rsps.add(responses.GET, f"{PERPS}/api/query_positions",
             json={"code": 400, "message": "x" * 5000}, status=400)
    with pytest.raises(StandXError) as info:
        auth.make_api_call("/api/query_positions")
    assert len(info.value.message) <= 200


def test_typed_error_carries_status_code_and_message(auth, login, rsps):
    rsps.add(responses.POST, f"{PERPS}/api/new_order",
             json={"code": 400, "message": "invalid qty"}, status=400)
    with pytest.raises(StandXError) as info:
        auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    assert (info.value.status, info.value.code, info.value.message) == (400, 400, "invalid qty")


def test_403_signature_expired_raises_with_ntp_hint(auth, login, rsps):
    rsps.add(responses.POST, f"{PERPS}/api/new_order",
             json={"code": 403, "message": "signature has expired"}, status=403)
    with pytest.raises(SignatureExpiredError) as info:
        auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    assert info.value.status == 403
    assert "timedatectl set-ntp true" in str(info.value)


def test_403_signature_expired_learns_clock_offset_from_date_header(auth, login, rsps, clock):
    url = f"{PERPS}/api/new_order"
    server_date = email.utils.formatdate(clock.now() + 120, usegmt=True)
    rsps.add(responses.POST, url, json={"code": 403, "message": "signature has expired"},
             status=403, headers={"Date": server_date})
    rsps.add(responses.POST, url, json={"code": 0})
    with pytest.raises(SignatureExpiredError):
        auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    assert auth.time_offset_s == pytest.approx(120, abs=1)
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    sent_ms = int(perps_calls(rsps)[1].request.headers["x-request-timestamp"])
    assert sent_ms == pytest.approx((clock.now() + 120) * 1000, abs=1000)


def test_429_raises_rate_limit_error_with_retry_after(auth, login, rsps):
    rsps.add(responses.GET, f"{PERPS}/api/query_positions",
             json={"code": 429, "message": "too many requests"}, status=429,
             headers={"Retry-After": "3"})
    with pytest.raises(RateLimitError) as info:
        auth.make_api_call("/api/query_positions")
    assert info.value.retry_after_s == 3
    assert info.value.status == 429 and info.value.code == 429


def test_call_after_429_first_sleeps_retry_after_on_the_clock(auth, login, rsps, clock):
    url = f"{PERPS}/api/query_positions"
    sent_at = []

    def answer(request):
        sent_at.append(clock.now())
        if len(sent_at) == 1:
            return 429, {"Retry-After": "3"}, '{"code":429,"message":"slow down"}'
        return 200, {}, "[]"

    rsps.add_callback(responses.GET, url, callback=answer)
    with pytest.raises(RateLimitError):
        auth.make_api_call("/api/query_positions")
    auth.make_api_call("/api/query_positions")
    assert sent_at[1] - sent_at[0] >= 3
    assert sum(clock.sleeps) >= 3


def test_429_on_login_makes_next_call_wait_retry_after(auth, rsps, clock):
    sent_at = []

    def prepare(request):
        sent_at.append(clock.now())
        return 429, {"Retry-After": "5"}, '{"code":429,"message":"too many requests"}'

    rsps.add_callback(responses.POST, f"{AUTH}/v1/offchain/prepare-signin", callback=prepare)
    for _ in range(12):
        with pytest.raises(StandXError):
            auth.get_token()
        clock.advance(1)
    assert len(sent_at) >= 2
    assert all(later - earlier >= 5 for earlier, later in zip(sent_at, sent_at[1:]))


def test_failing_login_backs_off_and_says_why(auth, rsps, clock, caplog):
    rsps.add(responses.POST, f"{AUTH}/v1/offchain/prepare-signin", status=500,
             json={"code": 500, "message": "internal server error"})
    for _ in range(40):
        with pytest.raises(AuthError):
            auth.get_token()
        clock.advance(0.5)
    attempts = [c for c in rsps.calls if "prepare-signin" in c.request.url]
    assert len(attempts) <= 5  # 1, 2, 4, 8 s apart over 20 s, not one per call
    assert "login failed (HTTP 500: /v1/offchain/prepare-signin failed: internal server error)" in caplog.text


def test_successful_login_resets_the_backoff(auth, login, rsps, clock):
    auth._next_login_at, auth._login_failures = clock.now() + 100, 5
    clock.advance(100)
    auth.get_token()
    assert (auth._login_failures, auth._next_login_at) == (0, 0.0)


# ---- 10. secrets --------------------------------------------------------------------------

class RecordingSigningKey(SigningKey):
    made: list[SigningKey] = []

    @classmethod
    def generate(cls):
        key = SigningKey.generate()
        cls.made.append(key)
        return key


def secrets_seen(login, rsps) -> set[str]:
    """Every secret the client held or sent: wallet key, Ed25519 keys, tokens, signatures."""
    hex_key = WALLET_KEY[2:]
    found = {hex_key, str(int(hex_key, 16))}
    for key in RecordingSigningKey.made:
        seed = bytes(key)
        full = seed + bytes(key.verify_key)
        found |= {seed.hex(), base64.b64encode(seed).decode(), base58.b58encode(seed).decode(),
                  full.hex(), base58.b58encode(full).decode(), base64.b64encode(full).decode()}
    found |= set(login.tokens)
    for request in login.login_requests:
        signature = json.loads(request.body)["signature"]
        found |= {signature, signature[2:]}
    for call in rsps.calls:
        if "x-request-signature" in call.request.headers:
            found.add(call.request.headers["x-request-signature"])
    return found


def assert_no_secret(objects, secrets):
    for obj in objects:
        for text in (str(obj), repr(obj)):
            for secret in secrets:
                assert secret.lower() not in text.lower(), f"secret leaked into {type(obj)}"


def exception_chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _get(answer):
    def run(auth, rsps):
        auth.get_token()
        rsps.add(responses.GET, f"{PERPS}/api/query_positions", **answer)
        auth.make_api_call("/api/query_positions")
    return run


def _post(answer):
    def run(auth, rsps):
        auth.get_token()
        rsps.add(responses.POST, f"{PERPS}/api/new_order", **answer)
        auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    return run


ERROR_PATHS = {
    "post-read-timeout": _post({"body": requests.exceptions.ReadTimeout()}),
    "post-connect-timeout": _post({"body": requests.exceptions.ConnectTimeout()}),
    "post-500": _post({"json": {"code": 500, "message": "boom"}, "status": 500}),
    "post-502-html": _post({"body": HTML_502, "status": 502, "content_type": "text/html"}),
    "post-200-bad-json": _post({"body": "{", "status": 200}),
    "post-400": _post({"json": {"code": 400, "message": "bad"}, "status": 400}),
    "post-403-expired": _post({"json": {"code": 403, "message": "signature has expired"},
                               "status": 403}),
    "post-twice-401": _post({"json": {"code": 401, "message": "no"}, "status": 401}),
    "get-429": _get({"json": {"code": 429, "message": "slow"}, "status": 429,
                     "headers": {"Retry-After": "3"}}),
    "get-timeouts": _get({"body": requests.exceptions.ReadTimeout()}),
    "get-bad-json": _get({"body": "<", "status": 200}),
}


@pytest.mark.parametrize("path", sorted(ERROR_PATHS))
def test_raised_errors_and_client_repr_carry_no_secret(auth, login, rsps, monkeypatch, path):
    monkeypatch.setattr(RecordingSigningKey, "made", [])
    monkeypatch.setattr(standx_auth, "SigningKey", RecordingSigningKey)
    with pytest.raises(StandXError) as info:
        ERROR_PATHS[path](auth, rsps)
    secrets = secrets_seen(login, rsps)
    assert login.tokens and RecordingSigningKey.made  # the path did log in and sign
    assert_no_secret([*exception_chain(info.value), auth], secrets)


@pytest.mark.parametrize("overrides, answer, status", [
    ({"address": OTHER_ADDRESS}, None, 200),
    ({}, lambda t: {"address": WALLET_ADDRESS}, 200),
    ({}, lambda t: {"code": 400, "message": "invalid signature"}, 400),
    ({}, lambda t: {"code": 500, "message": "internal"}, 500),
], ids=["refused-signin", "login-without-token", "login-http-400", "login-http-500"])
def test_login_errors_carry_no_secret(auth, rsps, clock, monkeypatch, overrides, answer,
                                      status):
    monkeypatch.setattr(RecordingSigningKey, "made", [])
    monkeypatch.setattr(standx_auth, "SigningKey", RecordingSigningKey)
    login = FakeLogin(rsps, clock, payload_overrides=overrides, login_answer=answer,
                      login_status=status)
    with pytest.raises(AuthError) as info:
        auth.get_token()
    assert_no_secret([*exception_chain(info.value), auth], secrets_seen(login, rsps))


@pytest.mark.parametrize("key", [WALLET_KEY, WALLET_KEY[2:], WALLET_KEY.upper(),
                                 WALLET_KEY[2:].upper(), f"  {WALLET_KEY}\n"],
                         ids=["0x-lower", "bare-lower", "0X-upper", "bare-upper", "padded"])
def test_client_repr_never_shows_key_seed_or_token(rsps, clock, monkeypatch, key):
    monkeypatch.setattr(RecordingSigningKey, "made", [])
    monkeypatch.setattr(standx_auth, "SigningKey", RecordingSigningKey)
    login = FakeLogin(rsps, clock)
    auth = StandXAuth(key, auth_base_url=AUTH, perps_base_url=PERPS, clock=clock)
    assert_no_secret([auth], {WALLET_KEY[2:]})
    auth.get_token()
    assert auth.address == WALLET_ADDRESS
    assert_no_secret([auth], secrets_seen(login, rsps))


@pytest.mark.parametrize("raw", [WALLET_KEY, WALLET_KEY[2:], WALLET_KEY.upper(),
                                 "0x" + WALLET_KEY[2:].upper(), f" {WALLET_KEY} ",
                                 f"{WALLET_KEY}\n", f"\t{WALLET_KEY[2:]}\r\n"])
def test_normalize_private_key_accepts_prefix_case_and_whitespace_variants(raw):
    assert normalize_private_key(raw) == WALLET_KEY


@pytest.mark.parametrize("raw", [
    "", "   \n", "0x", WALLET_KEY[:-1], WALLET_KEY + "a", WALLET_KEY[:-1] + "g",
    "0x" + "0" * 64, WALLET_KEY[:10] + " " + WALLET_KEY[10:], "0x0x" + WALLET_KEY[2:],
    "0x" + WALLET_KEY[4:] + "xz",
], ids=["empty", "blank", "prefix-only", "63-digits", "65-digits", "non-hex", "zero",
        "inner-space", "double-prefix", "garbage-tail"])
def test_normalize_private_key_rejects_bad_input_without_echoing_it(raw):
    with pytest.raises(ValueError) as info:
        normalize_private_key(raw)
    text = str(info.value) + repr(info.value)
    body = raw.strip().removeprefix("0x")
    if len(body) >= 8:
        assert body[2:10].lower() not in text.lower()


# ---- 11. timeouts -------------------------------------------------------------------------

def test_every_request_passes_explicit_short_timeouts(auth, login, rsps):
    rsps.add(responses.GET, f"{PERPS}/api/query_positions", json=[])
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    auth.make_api_call("/api/query_positions")
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    assert len(rsps.calls) == 4  # prepare-signin, login, GET, POST
    for call in rsps.calls:
        timeout = call.request.req_kwargs["timeout"]
        assert 0 < timeout.connect_timeout <= 5 and 0 < timeout.read_timeout <= 10
        assert timeout.total == standx_auth.REQUEST_TOTAL_S  # headers included


def test_deadline_shortens_the_timeout(auth, login, rsps, clock):
    auth.get_token()
    rsps.add(responses.GET, f"{PERPS}/api/query_positions", json=[])
    auth.deadline = clock.now() + 2.0
    auth.make_api_call("/api/query_positions")
    timeout = perps_calls(rsps)[0].request.req_kwargs["timeout"]
    assert (timeout.connect_timeout, timeout.read_timeout, timeout.total) == (2.0, 2.0, 2.0)


def test_reached_deadline_stops_read_retries(auth, login, rsps, clock):
    auth.get_token()
    rsps.add(responses.GET, f"{PERPS}/api/query_positions",
             body=requests.exceptions.ReadTimeout())
    auth.deadline = clock.now()
    with pytest.raises(StandXError):
        auth.make_api_call("/api/query_positions")
    assert len(perps_calls(rsps)) == 1
    assert clock.sleeps == []


def test_no_read_retry_is_sent_after_the_deadline(auth, login, rsps, clock):
    auth.get_token()
    sent_at = []

    def refuse(request):
        sent_at.append(clock.now())
        raise requests.exceptions.ConnectionError()

    rsps.add_callback(responses.GET, f"{PERPS}/api/query_positions", callback=refuse)
    auth.deadline = clock.now() + 0.1
    with pytest.raises(StandXError):
        auth.make_api_call("/api/query_positions")
    assert all(t < auth.deadline for t in sent_at)


# ---- 12. money-losing defects of issue 9 --------------------------------------------------------

def dated(clock, offset_s: float) -> dict[str, str]:
    """A Date header for an exchange whose clock is `offset_s` ahead of the true time."""
    return {"Date": email.utils.formatdate(clock.now() + offset_s, usegmt=True)}


@pytest.mark.parametrize("text", [
    "Tue, 06 Jan 2026 14:00:00 GMT", "Tue, 06 Jan 2026 14:00:00 +0130", "06 Jan 2026 14:00:00 -0000",
    "Tue, 06 Jan 2026 14:00:00", "Tue, 06 Jan 99999999999 14:00:00 GMT", "not a date", "",
])
def test_a_date_header_names_the_time_email_utils_reads_every_time_it_comes(text):
    parsed = email.utils.parsedate_tz(text)
    try:
        expected = float(email.utils.mktime_tz(parsed)) if parsed is not None else None
    except (TypeError, ValueError, OverflowError):  # a year no clock reaches
        expected = None
    assert [standx_auth.date_header_time(text) for _ in range(2)] == [expected, expected]


def test_clock_offset_returns_to_zero_once_the_clocks_agree_again(auth, login, rsps, clock):
    url = f"{PERPS}/api/new_order"
    rsps.add(responses.POST, url, json={"code": 403, "message": "signature has expired"},
             status=403, headers=dated(clock, 45))
    with pytest.raises(SignatureExpiredError):
        auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    assert auth.time_offset_s == pytest.approx(45, abs=1)
    rsps.replace(responses.POST, url, json={"code": 0}, headers=dated(clock, 0))  # clock fixed
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    assert auth.time_offset_s == 0.0
    auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    sent_ms = int(perps_calls(rsps)[-1].request.headers["x-request-timestamp"])
    assert sent_ms == int(clock.wall() * 1000)


def test_clock_offset_follows_a_step_of_our_wall_clock_either_way(auth, login, rsps, clock):
    rsps.add(responses.GET, f"{PERPS}/api/query_positions", json=[])
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 0})
    for step_s in (-60, +60, +90):
        clock.step_wall(step_s)
        rsps.replace(responses.GET, f"{PERPS}/api/query_positions", json=[], headers=dated(clock, 0))
        auth.make_api_call("/api/query_positions")
        auth.make_api_call("/api/new_order", method="POST", data=ORDER)
        sent_ms = int(perps_calls(rsps)[-1].request.headers["x-request-timestamp"])
        assert sent_ms == pytest.approx(clock.now() * 1000, abs=1500)  # the exchange's time


def test_a_failed_early_renewal_keeps_the_valid_token_in_use(auth, rsps, clock):
    login = FakeLogin(rsps, clock, token_ttl_s=86400)
    rsps.add(responses.GET, f"{PERPS}/api/query_positions", json=[])
    auth.get_token()
    rsps.replace(responses.POST, f"{AUTH}/v1/offchain/prepare-signin", status=500,
                 json={"code": 500, "message": "internal server error"})
    clock.advance(86400 - standx_auth.RELOGIN_MARGIN_S + 1)  # renewal due, token still valid
    for _ in range(120):  # a minute of calls while every login fails
        assert auth.make_api_call("/api/query_positions") == []
        clock.advance(0.5)
    sent = [c.request.headers["Authorization"] for c in perps_calls(rsps)]
    assert set(sent) == {f"Bearer {login.tokens[0]}"}
    attempts = [c for c in rsps.calls if "prepare-signin" in c.request.url]
    assert 1 <= len(attempts) <= 60 / standx_auth.RENEW_RETRY_MIN_S + 1  # spaced, not per call


def test_a_short_lived_token_is_renewed_once_per_lifetime_not_per_call(auth, rsps, clock):
    login = FakeLogin(rsps, clock, token_ttl_s=60)
    rsps.add(responses.GET, f"{PERPS}/api/query_positions", json=[])
    for _ in range(600):  # five minutes of calls
        auth.make_api_call("/api/query_positions")
        clock.advance(0.5)
    assert login.logins <= 300 / (60 * 0.9) + 2


def test_a_stop_logs_in_afresh_despite_the_login_backoff(auth, rsps, clock):
    failing = rsps.add(responses.POST, f"{AUTH}/v1/offchain/prepare-signin", status=500,
                       json={"code": 500, "message": "internal server error"})
    for _ in range(9):  # the backoff grows to minutes
        with pytest.raises(AuthError):
            auth.get_token()
        clock.advance(auth._next_login_at - clock.monotonic())
    with pytest.raises(AuthError):
        auth.get_token()
    assert auth._next_login_at - clock.monotonic() >= 200
    rsps.remove(failing)  # the exchange recovers, well inside the backoff
    login = FakeLogin(rsps, clock)
    clock.advance(standx_auth.STOP_LOGIN_SPACING_S)
    auth.deadline = clock.monotonic() + 13
    assert auth.get_token() == login.tokens[0]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_answer_is_decoded(auth, login, rsps, encoding):
    import gzip
    import zlib
    body = json.dumps({"page_size": 1, "result": [], "total": 0}).encode()
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    rsps.add(responses.GET, f"{PERPS}/api/query_open_orders", body=packed,
             headers={"Content-Encoding": encoding}, content_type="application/json")
    assert auth.make_api_call("/api/query_open_orders") == {"page_size": 1, "result": [], "total": 0}


def test_a_compressed_answer_too_large_once_decoded_is_refused(auth, login, rsps, monkeypatch):
    import gzip
    monkeypatch.setattr(standx_auth, "MAX_BODY_BYTES", 1000)
    rsps.add(responses.GET, f"{PERPS}/api/query_open_orders",
             body=gzip.compress(b'{"pad":"' + b"x" * 5000 + b'"}'), headers={"Content-Encoding": "gzip"})
    with pytest.raises(StandXError, match="ContentDecodingError"):
        auth.make_api_call("/api/query_open_orders")


def test_http_200_whose_body_carries_a_non_zero_code_is_a_refusal(auth, login, rsps):
    rsps.add(responses.POST, f"{PERPS}/api/new_order", json={"code": 400, "message": "invalid qty"})
    with pytest.raises(StandXError) as info:
        auth.make_api_call("/api/new_order", method="POST", data=ORDER)
    assert not isinstance(info.value, UnknownOutcomeError)
    assert (info.value.status, info.value.code) == (200, 400)
    assert "invalid qty" in str(info.value)
