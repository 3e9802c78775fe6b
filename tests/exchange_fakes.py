"""Test doubles for the StandX client tests: a fake clock and a scripted login server.

Nothing here touches the network: the login endpoints are `responses` callbacks.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import base58
import responses
from nacl.signing import VerifyKey

from standx_sim.clock import VirtualClock

AUTH = "https://auth.test"
PERPS = "https://perps.test"
# A well-known test wallet (never funded anywhere that matters).
WALLET_KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
WALLET_ADDRESS = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
OTHER_ADDRESS = "0x000000000000000000000000000000000000dEaD"
START_TIME = 1_700_000_000.0


class FakeClock(VirtualClock):
    """A virtual clock that also records every pause asked of it."""

    def __init__(self, start: float = START_TIME):
        super().__init__(start)
        self.sleeps: list[float] = []

    @property
    def t(self) -> float:
        return self.now()

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)

    def advance(self, seconds: float) -> None:
        super().sleep(seconds)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def make_jwt(payload: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A JWT-shaped string (unsigned: the client never verifies the signature segment)."""
    head = b64url(json.dumps(header or {"alg": "ES256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    return f"{head}.{body}.{b64url(b'not-a-real-signature')}"


def jwt_payload(jwt: str) -> dict[str, Any]:
    segment = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def signin_message(address: str) -> str:
    return ("standx.com wants you to sign in with your Ethereum account:\n"
            f"{address}\n\nSign in with Ethereum to access more StandX features.\n\n"
            "URI: https://standx.com\nVersion: 1\nChain ID: 56\nNonce: n0nce42")


def query_of(request) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.url).query)


def request_key(login: "FakeLogin", n: int = -1) -> VerifyKey:
    """The Ed25519 public key sent as requestId in the n-th prepare-signin."""
    return VerifyKey(base58.b58decode(json.loads(login.prepare_requests[n].body)["requestId"]))


def verify_signed(request, verify_key: VerifyKey) -> None:
    """Raises nacl BadSignatureError unless the request's body signature checks out."""
    h = request.headers
    message = f"v1,{h['x-request-id']},{h['x-request-timestamp']},".encode() + request.body
    verify_key.verify(message, base64.b64decode(h["x-request-signature"]))


class FakeLogin:
    """prepare-signin and login on `auth_base`, answering from the request body.

    prepare-signin echoes the posted address/requestId into the signedData payload (with a
    sign-in message naming that address); `payload_overrides` / `prepare_answer` tamper
    with it. login answers `login_answer(token)` with `login_status` when given, else a fresh
    access token per call: a JWT whose `exp` is
    clock.now() + token_ttl_s (or no exp when `token_exp` is False).
    """

    def __init__(self, rsps: responses.RequestsMock, clock: FakeClock, *,
                 auth_base: str = AUTH, token_ttl_s: float | None = None,
                 token_exp: bool = True,
                 payload_overrides: dict[str, Any] | None = None,
                 prepare_answer: Callable[[str], dict[str, Any]] | None = None,
                 login_answer: Callable[[str], dict[str, Any]] | None = None,
                 login_status: int = 200):
        self.clock = clock
        self.token_ttl_s = token_ttl_s
        self.token_exp = token_exp
        self.payload_overrides = payload_overrides or {}
        self.prepare_answer = prepare_answer
        self.login_answer = login_answer
        self.login_status = login_status
        self.prepare_requests: list[Any] = []
        self.login_requests: list[Any] = []
        self.signed_data: list[str] = []
        self.tokens: list[str] = []
        rsps.add_callback(responses.POST, f"{auth_base}/v1/offchain/prepare-signin",
                          callback=self._prepare, content_type="application/json")
        rsps.add_callback(responses.POST, f"{auth_base}/v1/offchain/login",
                          callback=self._login, content_type="application/json")

    @property
    def logins(self) -> int:
        return len(self.tokens)

    def _prepare(self, request):
        self.prepare_requests.append(request)
        body = json.loads(request.body)
        payload = {
            "domain": "standx.com", "uri": "https://standx.com", "version": "1",
            "chainId": 56, "nonce": "n0nce42", "address": body["address"],
            "requestId": body["requestId"], "message": signin_message(body["address"]),
            "iat": int(self.clock.now()), "exp": int(self.clock.now()) + 180,
        }
        payload.update(self.payload_overrides)
        signed_data = make_jwt(payload)
        self.signed_data.append(signed_data)
        answer = {"success": True, "signedData": signed_data}
        if self.prepare_answer is not None:
            answer = self.prepare_answer(signed_data)
        return 200, {}, json.dumps(answer)

    def _login(self, request):
        self.login_requests.append(request)
        body = json.loads(request.body)
        ttl = self.token_ttl_s if self.token_ttl_s is not None else body["expiresSeconds"]
        claims: dict[str, Any] = {"sub": "bsc_" + WALLET_ADDRESS.lower(),
                                  "n": len(self.tokens) + 1, "iat": int(self.clock.now())}
        if self.token_exp:
            claims["exp"] = int(self.clock.now() + ttl)
        token = make_jwt(claims, {"alg": "HS256", "typ": "JWT"})
        if self.login_answer is not None:
            return self.login_status, {}, json.dumps(self.login_answer(token))
        self.tokens.append(token)
        return 200, {}, json.dumps({"token": token, "address": WALLET_ADDRESS, "alias": "t",
                                    "chain": "bsc", "perpsAlpha": True})


def perps_calls(rsps) -> list:
    """The calls a `responses` mock saw on the perps host."""
    return [c for c in rsps.calls if c.request.url.startswith(PERPS)]
