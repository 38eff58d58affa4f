"""Hearth started with the user's real Conduit deployment, driven by a real client.

The server runs with the environment of tests/clients/seed-deployment.yaml (see
conftest.py); matrix-nio's AsyncClient talks to it over HTTP like any bot or client
would, and raw HTTP (aiohttp) checks what a browser or a federating server sees.

Registration uses the spec's User-Interactive Authentication flow for
`m.login.registration_token` (spec v1.2+, MSC3231): a request without `auth` is
answered 401 with the flows and a session; the client then completes the stages of a
flow within that session, each unfinished step being answered 401 with the stages
`completed` so far.

Two clients register:

* nio's own convenience method `AsyncClient.register_with_token`, unchanged. It opens
  with an `auth` object that has neither `type` nor `session` (which Hearth, like
  Synapse, treats as no auth), sends the token stage, and expects to finish with an
  `m.login.dummy` stage, so it needs the flow `[m.login.registration_token,
  m.login.dummy]` that Hearth offers when a token is configured.
* a generic UIA client (`register_with_registration_token`) that follows whatever
  flow the server advertises, stage after stage as the 401s list them. Its requests
  are built by nio's `Api.register`, sent by nio's AsyncClient and parsed by nio's
  response classes.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from nio import AsyncClient
from nio.api import Api
from nio.responses import (
    DevicesResponse,
    LoginError,
    LoginResponse,
    RegisterErrorResponse,
    RegisterInteractiveResponse,
    RegisterResponse,
    WhoamiResponse,
)

PASSWORD = "correct horse battery staple"
REGISTRATION_TOKEN_STAGE = "m.login.registration_token"


async def http_json(method: str, url: str, body: dict | None = None, headers: dict | None = None):
    """One raw HTTP request; returns (status, headers, parsed JSON body)."""
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, json=body, headers=headers) as resp:
            text = await resp.text()
            try:
                parsed = json.loads(text)
            except ValueError:
                raise AssertionError(f"{method} {url} -> {resp.status}, body is not JSON: {text!r}") from None
            return resp.status, resp.headers, parsed


async def start_registration(client: AsyncClient, username: str, password: str) -> dict:
    """POST /register without `auth`: the spec's first UIA step. Returns the 401 body."""
    status, _, body = await http_json(
        "POST",
        f"{client.homeserver}/_matrix/client/v3/register",
        {"username": username, "password": password},
    )
    assert status == 401, f"POST /register without auth: expected 401, got {status}: {body}"
    # nio understands the challenge as a register flow description.
    challenge = RegisterInteractiveResponse.from_dict(body)
    assert isinstance(challenge, RegisterInteractiveResponse), (challenge, body)
    assert isinstance(body.get("session"), str) and body["session"], body
    assert any(REGISTRATION_TOKEN_STAGE in flow["stages"] for flow in body["flows"]), body
    return body


async def register_with_registration_token(
    client: AsyncClient,
    username: str,
    password: str,
    token: str,
    device_name: str,
) -> RegisterResponse | RegisterErrorResponse:
    """Registers through UIA with `m.login.registration_token`, as a generic client does:
    it picks the first advertised flow that offers that stage, then sends, one after the
    other, the stages of that flow that the server has not yet listed as `completed`
    (so `[m.login.registration_token, m.login.dummy]` takes two requests, a single-stage
    flow one), until the server answers something other than "stage passed, go on".

    The stage requests go through nio (`AsyncClient._send` is what `AsyncClient.register`
    itself uses); a 200 is parsed into a `RegisterResponse` and logs the client in, an
    error (including a 401 naming an errcode) into a `RegisterErrorResponse`.
    """
    challenge = await start_registration(client, username, password)
    session = challenge["session"]
    flow = next(f["stages"] for f in challenge["flows"] if REGISTRATION_TOKEN_STAGE in f["stages"])
    stage_auth = {
        REGISTRATION_TOKEN_STAGE: {"type": REGISTRATION_TOKEN_STAGE, "token": token},
        "m.login.dummy": {"type": "m.login.dummy"},
    }
    unknown = [s for s in flow if s not in stage_auth]
    assert not unknown, f"the registration-token flow needs stages this test cannot do: {flow}"

    completed = list(challenge.get("completed") or [])
    body = challenge
    for _ in range(len(flow)):
        pending = [s for s in flow if s not in completed]
        assert pending, f"every stage of {flow} is completed, yet the server still answers 401: {body}"
        stage = pending[0]
        method, path, data = Api.register(
            user=username,
            password=password,
            device_name=device_name,
            device_id=client.device_id,
            auth_dict={**stage_auth[stage], "session": session},
        )
        response = await client._send(RegisterResponse, method, path, data)
        if isinstance(response, RegisterResponse):
            return response
        # A stage passed but the flow is unfinished: a 401 without errcode, which nio
        # turns into an error without status_code. Anything else is the final answer.
        if response.transport_response.status != 401 or response.status_code is not None:
            return response
        body = await response.transport_response.json()
        # The spec's answer to a passed stage: the same session, the stage now completed.
        assert body.get("session") == session, f"stage {stage}: session changed from {session!r}: {body}"
        assert stage in (body.get("completed") or []), (
            f"stage {stage} passed (401 without errcode) but is not listed as completed: {body}"
        )
        completed = list(body["completed"])
    raise AssertionError(f"sent every stage of {flow}; the server still answers 401: {body}")


def test_register_with_seed_token_and_list_two_devices(hearth):
    alice = f"@alice:{hearth.server_name}"
    assert alice == "@alice:choppa.xyz"

    async def scenario():
        first = AsyncClient(hearth.url, "alice")
        second = AsyncClient(hearth.url, "alice")
        try:
            registered = await register_with_registration_token(
                first, "alice", PASSWORD, hearth.registration_token, device_name="Hearth e2e: registration"
            )
            assert isinstance(registered, RegisterResponse), f"registration failed: {registered!r}"
            assert registered.user_id == alice
            assert registered.device_id
            assert registered.access_token
            # nio took the registration's credentials: the first client is logged in.
            assert first.logged_in
            assert first.user_id == alice
            assert first.device_id == registered.device_id
            assert first.access_token == registered.access_token

            logged_in = await second.login(PASSWORD, device_name="Hearth e2e: second device")
            assert isinstance(logged_in, LoginResponse), f"login failed: {logged_in!r}"
            assert logged_in.user_id == alice
            assert logged_in.device_id
            assert logged_in.access_token
            assert logged_in.device_id != registered.device_id
            assert logged_in.access_token != registered.access_token

            expected_ids = {registered.device_id, logged_in.device_id}
            names = {
                registered.device_id: "Hearth e2e: registration",
                logged_in.device_id: "Hearth e2e: second device",
            }
            for client in (first, second):
                listed = await client.devices()
                assert isinstance(listed, DevicesResponse), f"devices() failed for {client.device_id}: {listed!r}"
                ids = [d.id for d in listed.devices]
                assert len(ids) == 2, f"expected exactly two devices, got {listed.devices}"
                assert set(ids) == expected_ids, listed.devices
                for device in listed.devices:
                    assert device.display_name == names[device.id], listed.devices
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_nio_register_with_token(hearth):
    """nio's own `AsyncClient.register_with_token`, unchanged, against the Secret's token."""
    bob = f"@bob:{hearth.server_name}"
    assert bob == "@bob:choppa.xyz"
    device_name = "Hearth e2e: nio register_with_token"

    async def scenario():
        client = AsyncClient(hearth.url, "bob")
        try:
            registered = await client.register_with_token(
                "bob", PASSWORD, hearth.registration_token, device_name=device_name
            )
            assert isinstance(registered, RegisterResponse), f"register_with_token failed: {registered!r}"
            assert registered.user_id == bob
            assert registered.access_token
            assert registered.device_id
            # nio took the registration's credentials.
            assert client.logged_in
            assert client.user_id == bob
            assert client.access_token == registered.access_token
            assert client.device_id == registered.device_id

            me = await client.whoami()
            assert isinstance(me, WhoamiResponse), f"whoami() failed: {me!r}"
            assert me.user_id == bob
            assert me.device_id == registered.device_id

            # The final (dummy) stage carried initial_device_display_name.
            listed = await client.devices()
            assert isinstance(listed, DevicesResponse), f"devices() failed: {listed!r}"
            assert [(d.id, d.display_name) for d in listed.devices] == [(registered.device_id, device_name)]
        finally:
            await client.close()

    asyncio.run(scenario())


def test_wrong_registration_token_is_refused(hearth):
    wrong_token = hearth.registration_token + "-wrong"

    async def scenario():
        # What the protocol says: the token stage is refused with a 401 that names
        # M_FORBIDDEN and still carries the flows and the session to retry in.
        url = f"{hearth.url}/_matrix/client/v3/register"
        challenge = await start_registration(AsyncClient(hearth.url), "mallory", PASSWORD)
        status, _, body = await http_json(
            "POST",
            url,
            {
                "username": "mallory",
                "password": PASSWORD,
                "auth": {"type": REGISTRATION_TOKEN_STAGE, "token": wrong_token, "session": challenge["session"]},
            },
        )
        assert status == 401, f"wrong token: expected 401, got {status}: {body}"
        assert body.get("errcode") == "M_FORBIDDEN", body
        assert REGISTRATION_TOKEN_STAGE not in body.get("completed", []), body
        assert any(REGISTRATION_TOKEN_STAGE in f["stages"] for f in body["flows"]), body
        assert body.get("session"), body

        # What nio sees when it goes through the whole flow with the wrong token.
        client = AsyncClient(hearth.url, "mallory")
        try:
            refused = await register_with_registration_token(
                client, "mallory", PASSWORD, wrong_token, device_name="Hearth e2e: refused"
            )
            assert isinstance(refused, RegisterErrorResponse), f"registered with a wrong token: {refused!r}"
            assert refused.status_code == "M_FORBIDDEN", refused
            assert refused.transport_response.status == 401, refused
            assert not client.logged_in
        finally:
            await client.close()

        # No account was created: the name is still free and the password does not log in.
        status, _, body = await http_json("GET", f"{hearth.url}/_matrix/client/v3/register/available?username=mallory")
        assert status == 200 and body == {"available": True}, (status, body)

        client = AsyncClient(hearth.url, "mallory")
        try:
            login = await client.login(PASSWORD, device_name="Hearth e2e: should not exist")
            assert isinstance(login, LoginError), f"logged in as an account that should not exist: {login!r}"
            assert login.status_code == "M_FORBIDDEN", login
            assert login.transport_response.status == 403, login
            assert not client.logged_in
        finally:
            await client.close()

    asyncio.run(scenario())


def test_well_known_from_configmap(hearth, seed):
    # The ConfigMap's values, as delegation documents.
    assert seed.configmap["CONDUIT_WELL_KNOWN_CLIENT"] == "https://talk.choppa.xyz"
    assert seed.configmap["CONDUIT_WELL_KNOWN_SERVER"] == "talk.choppa.xyz:443"
    expected = {
        "/.well-known/matrix/client": {"m.homeserver": {"base_url": "https://talk.choppa.xyz"}},
        "/.well-known/matrix/server": {"m.server": "talk.choppa.xyz:443"},
    }

    async def scenario():
        for path, document in expected.items():
            status, headers, body = await http_json(
                "GET", f"{hearth.url}{path}", headers={"Origin": "https://app.element.io"}
            )
            assert status == 200, f"GET {path}: {status} {body}"
            assert body == document, f"GET {path}: {body}"
            assert headers.get("Access-Control-Allow-Origin") == "*", f"GET {path}: headers {dict(headers)}"

    asyncio.run(scenario())
