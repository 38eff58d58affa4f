"""A space with a room restricted to its members, driven through matrix-nio.

alice builds a space holding a public room and a room restricted to the space's members.
bob, outside the space, walks it (`/hierarchy`, checked against the spec's OpenAPI
schema) and sees the space and the public room only, and cannot join the restricted one;
once he joins the space, the walk shows it and nio's own `join` gets him in.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse

from nio import AsyncClient
from nio.responses import JoinError, JoinResponse, RoomCreateResponse

from spec_schema import response_schema, validate
from test_threads import register


async def walk(client: AsyncClient, space: str) -> list[str]:
    path = f"/_matrix/client/v1/rooms/{urllib.parse.quote(space)}/hierarchy"
    resp = await client.send("GET", path, headers={"Authorization": f"Bearer {client.access_token}"})
    assert resp.status == 200, await resp.text()
    body = json.loads(await resp.text())
    validate(body, response_schema("/_matrix/client/v1/rooms/{roomId}/hierarchy", "get"))
    return [r["room_id"] for r in body["rooms"]]


def test_nio_walks_a_space_and_joins_a_restricted_room(hearth):
    async def scenario():
        alice = await register(hearth, "alice")
        bob = await register(hearth, "bob")
        try:
            made = await alice.room_create(name="Family", space=True, initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "public"}},
            ])
            assert isinstance(made, RoomCreateResponse), made
            space = made.room_id
            public = await alice.room_create(name="Photos", initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "public"}},
            ])
            rule = {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}
            club = await alice.room_create(name="Club", initial_state=[
                {"type": "m.room.join_rules", "state_key": "", "content": rule},
            ])
            for child in (public.room_id, club.room_id):
                sent = await alice.room_put_state(space, "m.space.child", {"via": [hearth.server_name]},
                                                  state_key=child)
                assert sent.__class__.__name__ == "RoomPutStateResponse", sent

            assert await walk(bob, space) == [space, public.room_id]
            assert isinstance(await bob.join(club.room_id), JoinError)

            assert isinstance(await bob.join(space), JoinResponse)
            assert await walk(bob, space) == [space, public.room_id, club.room_id]
            joined = await bob.join(club.room_id)
            assert isinstance(joined, JoinResponse), joined
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())
