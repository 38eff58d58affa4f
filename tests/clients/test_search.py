"""Searching a room's history with matrix-nio, as Element's search box does.

alice and bob talk in an unencrypted room; bob searches for a word in it and pages
through the results newest first (`POST /search` with `next_batch`), each answer checked
against the spec's OpenAPI schema; a message alice redacts is no longer found.
"""

from __future__ import annotations

import asyncio
import json
import time

from nio import AsyncClient
from nio.responses import JoinResponse, RoomCreateResponse, RoomRedactResponse

from spec_schema import response_schema, validate
from test_threads import register, send

SCHEMA_PATH = "/_matrix/client/v3/search"


async def search(client: AsyncClient, term: str, next_batch: str | None = None) -> dict:
    path = SCHEMA_PATH + (f"?next_batch={next_batch}" if next_batch else "")
    body = {"search_categories": {"room_events": {"search_term": term, "order_by": "recent",
                                                  "filter": {"limit": 2}}}}
    resp = await client.send("POST", path, json.dumps(body),
                             headers={"Authorization": f"Bearer {client.access_token}",
                                      "Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    answer = json.loads(await resp.text())
    validate(answer, response_schema(SCHEMA_PATH, "post"))
    return answer["search_categories"]["room_events"]


async def search_until(client: AsyncClient, term: str, count: int) -> dict:
    """The index follows the timeline a moment behind: ask until it has caught up."""
    deadline = time.monotonic() + 20
    while True:
        found = await search(client, term)
        if found["count"] >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


def test_nio_searches_and_pages_through_a_room(hearth):
    async def scenario():
        alice = await register(hearth, "alice")
        bob = await register(hearth, "bob")
        try:
            made = await alice.room_create(invite=[bob.user_id])
            assert isinstance(made, RoomCreateResponse), made
            room = made.room_id
            assert isinstance(await bob.join(room), JoinResponse)
            sent = [await send(alice, room, {"msgtype": "m.text", "body": f"the apple tree, note {i}"})
                    for i in range(5)]
            await send(bob, room, {"msgtype": "m.text", "body": "pears are better"})

            first = await search_until(bob, "apple", 5)
            assert first["count"] == 5, first
            assert [r["result"]["event_id"] for r in first["results"]] == [sent[4], sent[3]]
            assert first["highlights"] == ["apple"]
            seen = [r["result"]["event_id"] for r in first["results"]]
            token = first.get("next_batch")
            while token:
                page = await search(bob, "apple", token)
                seen += [r["result"]["event_id"] for r in page["results"]]
                token = page.get("next_batch")
            assert seen == list(reversed(sent)), seen

            redacted = await alice.room_redact(room, sent[0])
            assert isinstance(redacted, RoomRedactResponse), redacted
            deadline = time.monotonic() + 20
            while sent[0] in [r["result"]["event_id"] for r in (await search(bob, "note 0"))["results"]]:
                assert time.monotonic() < deadline, "the redacted message is still found"
                await asyncio.sleep(0.1)
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())
