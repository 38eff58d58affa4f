"""Push notifications reach a push gateway, driven by a real client (matrix-nio).

A gateway runs on loopback inside the test (aiohttp): it records every body, checks it
against the push gateway API's OpenAPI schema (../shared/matrix-spec/push-gateway-api.json),
and answers `{"rejected": []}` or a 500, as the test asks. Hearth is started as the seed
deploys it, with loopback admitted by the outbound address policy (a self-hosted gateway
on the LAN is admitted the same way).

1. Alice registers a pusher (event_id_only, as Element does) through nio's raw API; Bob's
   message in a group room arrives with its ids, `counts.unread` 1 and `prio` low; a
   mention of Alice arrives with `prio` high; Alice's read receipt sends a badge update
   to 0; an encrypted message is pushed (high: its effect is unknown); a muted room's is
   not.
2. With the gateway failing, Bob sends three messages; Hearth is SIGKILLed and restarted;
   once the gateway answers, each arrives exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from nio import AsyncClient
from nio.api import PushRuleKind, RoomVisibility
from nio.events.account_data import PushDontNotify
from nio.responses import RegisterResponse, RoomCreateResponse, RoomSendResponse

PASSWORD = "correct horse battery staple"
REPO = Path(__file__).resolve().parents[2]
SPEC = Path(os.environ.get("MATRIX_SPEC_PUSH", REPO.parent / "shared" / "matrix-spec" / "push-gateway-api.json"))
ALLOW_LOOPBACK = {"HEARTH_IP_RANGE_ALLOWLIST": '["127.0.0.0/8"]'}


def notify_schema() -> dict[str, Any]:
    """The request body schema of POST /_matrix/push/v1/notify, references resolved."""
    if not SPEC.is_file():
        pytest.fail(f"the push gateway API's OpenAPI document is missing: {SPEC}", pytrace=False)
    spec = json.loads(SPEC.read_text())
    return spec["paths"]["/_matrix/push/v1/notify"]["post"]["requestBody"]["content"]["application/json"]["schema"]


class Gateway:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.failing = False
        self.schema = notify_schema()
        self.invalid: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/_matrix/push/v1/notify", self.notify)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 (aiohttp has no public getter)
        self.url = f"http://127.0.0.1:{port}/_matrix/push/v1/notify"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def notify(self, request: web.Request) -> web.Response:
        if self.failing:
            return web.json_response({}, status=500)
        body = await request.json()
        try:
            jsonschema.validate(body, self.schema)
        except jsonschema.ValidationError as e:
            self.invalid.append(f"{e.message} in {body}")
        self.bodies.append(body)
        return web.json_response({"rejected": []})

    async def wait_for(self, what: str, pred) -> dict[str, Any]:
        for _ in range(300):
            for body in self.bodies:
                if pred(body["notification"]):
                    return body["notification"]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no push {what}; got {self.bodies}")


async def user(hearth, name: str) -> AsyncClient:
    client = AsyncClient(hearth.url, name)
    registered = await client.register_with_token(name, PASSWORD, hearth.registration_token, device_name=f"{name}'s phone")
    assert isinstance(registered, RegisterResponse), registered
    return client


async def set_pusher(client: AsyncClient, url: str, pushkey: str) -> None:
    body = {
        "kind": "http", "app_id": "im.vector.app.android", "pushkey": pushkey,
        "app_display_name": "Element", "device_display_name": "Phone", "lang": "en",
        "data": {"url": url, "format": "event_id_only"},
    }
    method, path = "POST", f"/_matrix/client/v3/pushers/set?access_token={client.access_token}"
    resp = await client.send(method, path, json.dumps(body), headers={"Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()


async def say(client: AsyncClient, room: str, body: str, **extra) -> str:
    content = {"msgtype": "m.text", "body": body, **extra}
    sent = await client.room_send(room, "m.room.message", content)
    assert isinstance(sent, RoomSendResponse), sent
    return sent.event_id


async def group(alice: AsyncClient, *others: AsyncClient) -> str:
    created = await alice.room_create(visibility=RoomVisibility.private, name="Porch", invite=[o.user_id for o in others])
    assert isinstance(created, RoomCreateResponse), created
    for other in others:
        await other.join(created.room_id)
    return created.room_id


@pytest.mark.parametrize("hearth_extra_env", [ALLOW_LOOPBACK], ids=["loopback-gateway"])
def test_pushes_reach_the_gateway(hearth):
    async def run() -> None:
        gw = Gateway()
        await gw.start()
        alice, bob, carol = await user(hearth, "alice"), await user(hearth, "bob"), await user(hearth, "carol")
        try:
            room = await group(alice, bob, carol)
            await set_pusher(alice, gw.url, "alice-phone")

            plain = await say(bob, room, "lunch at noon")
            n = await gw.wait_for("for the plain message", lambda n: n.get("event_id") == plain)
            assert n["room_id"] == room and n["counts"]["unread"] == 1, n
            assert n.get("prio") == "low", n
            assert "content" not in n and "sender" not in n, f"event_id_only carries ids only: {n}"
            device = n["devices"][0]
            assert device["pushkey"] == "alice-phone" and device["data"] == {"format": "event_id_only"}, device

            mention = await say(bob, room, "alice?", **{"m.mentions": {"user_ids": [alice.user_id]}})
            n = await gw.wait_for("for the mention", lambda n: n.get("event_id") == mention)
            assert n.get("prio") == "high" and n["devices"][0]["tweaks"].get("highlight") is True, n

            receipt = await alice.room_read_markers(room, mention, mention)
            assert receipt.__class__.__name__ == "RoomReadMarkersResponse", receipt
            await gw.wait_for("with the badge at zero", lambda n: n.get("counts", {}).get("unread") == 0)

            cipher = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA", "sender_key": "k", "session_id": "s", "device_id": "D"}
            sent = await bob.room_send(room, "m.room.encrypted", cipher)
            assert isinstance(sent, RoomSendResponse), sent
            n = await gw.wait_for("for the encrypted message", lambda n: n.get("event_id") == sent.event_id)
            assert n.get("prio") == "high", n

            muted = await group(bob, alice)
            mute = await alice.set_pushrule("global", PushRuleKind.room, muted, actions=[PushDontNotify()])
            assert mute.__class__.__name__ == "SetPushRuleResponse", mute
            hushed = await say(bob, muted, "you will not hear this")
            loud = await say(bob, room, "but this")
            await gw.wait_for("after the muted one", lambda n: n.get("event_id") == loud)
            assert not any(b["notification"].get("event_id") == hushed for b in gw.bodies), "a muted room rang"
            assert not gw.invalid, gw.invalid
        finally:
            for c in (alice, bob, carol):
                await c.close()
            await gw.stop()

    asyncio.run(run())


@pytest.mark.parametrize("hearth_extra_env", [ALLOW_LOOPBACK], ids=["loopback-gateway"])
def test_pending_pushes_survive_sigkill_in_order_and_once(hearth):
    gw = Gateway()

    async def before() -> tuple[list[str], str]:
        await gw.start()
        gw.failing = True
        alice, bob = await user(hearth, "alice"), await user(hearth, "bob")
        try:
            room = await group(alice, bob)
            await set_pusher(alice, gw.url, "alice-phone")
            sent = [await say(bob, room, f"while the gateway is down {i}") for i in range(3)]
            await asyncio.sleep(0.5)  # let Hearth try (and fail) at least once
            return sent, room
        finally:
            await alice.close()
            await bob.close()

    async def after(sent: list[str]) -> None:
        gw.failing = False
        try:
            await gw.wait_for("for the last of the backlog", lambda n: n.get("event_id") == sent[-1])
            await asyncio.sleep(0.5)
            got = [b["notification"].get("event_id") for b in gw.bodies if b["notification"].get("event_id")]
            assert got == sent, f"each once, in order: {got}"
            assert not gw.invalid, gw.invalid
        finally:
            await gw.stop()

    loop = asyncio.new_event_loop()
    try:
        sent, _ = loop.run_until_complete(before())
        hearth.crash()
        hearth.start()
        loop.run_until_complete(after(sent))
    finally:
        loop.close()
