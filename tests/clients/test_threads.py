"""Threads and edits as Element shows them, driven through matrix-nio.

alice starts a thread and bob replies; alice edits a message. A fresh login of bob's then
sees, on first load, what Element needs without fetching more: the thread in
`/threads` with its summary (`unsigned.m.relations.m.thread`), and the edit bundled on the
original in `/messages` (`m.replace`). The responses are checked against the spec's
OpenAPI schemas for these endpoints.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse

from nio import AsyncClient
from nio.responses import JoinResponse, RegisterResponse, RoomCreateResponse, RoomMessagesResponse, RoomSendResponse

from spec_schema import response_schema, validate

PASSWORD = "correct horse battery staple"


async def register(hearth, name: str) -> AsyncClient:
    client = AsyncClient(hearth.url, name)
    registered = await client.register_with_token(name, PASSWORD, hearth.registration_token, device_name=name)
    assert isinstance(registered, RegisterResponse), registered
    return client


async def send(client: AsyncClient, room: str, content: dict) -> str:
    sent = await client.room_send(room, "m.room.message", content)
    assert isinstance(sent, RoomSendResponse), sent
    return sent.event_id


def test_threads_and_edits_show_on_first_load(hearth):
    async def scenario():
        alice = await register(hearth, "alice")
        bob = await register(hearth, "bob")
        fresh = AsyncClient(hearth.url, f"@bob:{hearth.server_name}")
        try:
            created = await alice.room_create(invite=[bob.user_id])
            assert isinstance(created, RoomCreateResponse), created
            room = created.room_id
            assert isinstance(await bob.join(room), JoinResponse)

            root = await send(alice, room, {"msgtype": "m.text", "body": "shall we meet?"})
            thread = {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                      "m.in_reply_to": {"event_id": root}}
            await send(bob, room, {"msgtype": "m.text", "body": "tuesday?", "m.relates_to": thread})
            latest = await send(alice, room, {"msgtype": "m.text", "body": "tuesday.", "m.relates_to": thread})
            typo = await send(alice, room, {"msgtype": "m.text", "body": "see yuo"})
            edit = await send(alice, room, {
                "msgtype": "m.text", "body": "* see you",
                "m.new_content": {"msgtype": "m.text", "body": "see you"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": typo},
            })

            await fresh.login(PASSWORD, device_name="bob's new phone")
            path = f"/_matrix/client/v1/rooms/{urllib.parse.quote(room)}/threads"
            resp = await fresh.send("GET", path, headers={"Authorization": f"Bearer {fresh.access_token}"})
            assert resp.status == 200, await resp.text()
            threads = json.loads(await resp.text())
            validate(threads, response_schema("/_matrix/client/v1/rooms/{roomId}/threads", "get"))
            assert [e["event_id"] for e in threads["chunk"]] == [root], threads
            summary = threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
            assert summary["count"] == 2 and summary["latest_event"]["event_id"] == latest, summary
            assert summary["current_user_participated"] is True, summary

            page = await fresh.room_messages(room, start="", limit=50)
            assert isinstance(page, RoomMessagesResponse), page
            original = next(e for e in page.chunk if e.event_id == typo)
            bundled = original.source["unsigned"]["m.relations"]["m.replace"]
            assert bundled["event_id"] == edit, bundled
            assert bundled["content"]["m.new_content"]["body"] == "see you"
            root_event = next(e for e in page.chunk if e.event_id == root)
            assert root_event.source["unsigned"]["m.relations"]["m.thread"]["count"] == 2
        finally:
            for c in (alice, bob, fresh):
                await c.close()

    asyncio.run(scenario())
