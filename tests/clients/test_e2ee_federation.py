"""End-to-end encryption across servers, with real cryptography (matrix-nio + vodozemac).

Hearth federates over TLS on loopback (a throw-away CA, as in tests/federation) with a
peer: a second Hearth, or a real Synapse (from the federation tests' venv). alice is on
Hearth, bob on the peer. Everything crosses servers: alice's encrypted DM
invites bob through his server (`invite` v2); bob joins through hers; each client's
`/keys/query` and `/keys/claim` for the other reach the other's server
(`user/keys/query`, `user/keys/claim`); room keys travel as Olm-encrypted to-device
messages (`m.direct_to_device` EDUs); the Megolm messages arrive through transactions.
Each side decrypts the other's message. Then bob logs in on a phone: his server sends
`m.device_list_update`, alice's sync lists bob as changed, her client queries his keys
again (from his server) and shares the next room key with the phone too, which decrypts
her next message.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from pathlib import Path

import pytest
from nio import AsyncClient, AsyncClientConfig
from nio.api import RoomPreset
from nio.events import RoomMemberEvent
from nio.responses import JoinResponse, LoginResponse, RegisterResponse, RoomCreateResponse, SyncResponse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "federation"))
from interop import HEARTH_REGISTRATION_TOKEN, make_pki, register_on_synapse, start_hearth, start_synapse  # noqa: E402
from test_e2ee import (  # noqa: E402
    MEGOLM,
    PASSWORD,
    assert_decrypted,
    e2e_sync,
    has_event,
    housekeeping,
    send_encrypted,
    sync_until,
    the_event,
    timeline,
)


SYNAPSE_PYTHON = Path(os.environ.get("HEARTH_SYNAPSE_VENV", Path.home() / ".cache" / "hearth-synapse-venv")) / "bin" / "python"


@pytest.fixture(scope="module", params=["hearth", "synapse"])
def servers(request, tmp_path_factory: pytest.TempPathFactory):
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    started = []
    try:
        started.append(start_hearth(tmp_path_factory.mktemp("hearth-a"), pki, kind="hearth-a"))
        if request.param == "hearth":
            started.append(start_hearth(tmp_path_factory.mktemp("hearth-b"), pki, kind="hearth-b"))
        else:
            started.append(start_synapse(tmp_path_factory.mktemp("synapse"), pki, str(SYNAPSE_PYTHON)))
        yield started[0], started[1], pki
    finally:
        for server in started:
            server.stop()


async def sign_up(c: AsyncClient, server) -> None:
    """Registers on Hearth (registration token), or on Synapse (its admin API) and logs in."""
    if server.kind == "synapse":
        register_on_synapse(server, c.user)
        logged_in = await c.login(PASSWORD, device_name=f"{c.user}'s laptop")
        assert isinstance(logged_in, LoginResponse), logged_in
        return
    registered = await c.register_with_token(c.user, PASSWORD, HEARTH_REGISTRATION_TOKEN)
    assert isinstance(registered, RegisterResponse), registered


def client(server, pki, tmp_path: Path, name: str) -> AsyncClient:
    store = tmp_path / "nio-stores" / name
    store.mkdir(parents=True)
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    return AsyncClient(server.url, name.split("-")[0], store_path=str(store), config=config, ssl=context)


def test_encrypted_dm_across_servers_with_a_later_device(servers, tmp_path):
    a, b, pki = servers

    async def scenario():
        alice = client(a, pki, tmp_path, "alice")
        bob = client(b, pki, tmp_path, "bob")
        phone = None
        try:
            for c, server in ((alice, a), (bob, b)):
                await sign_up(c, server)
                await e2e_sync(c)
            created = await alice.room_create(
                is_direct=True,
                preset=RoomPreset.trusted_private_chat,
                invite=[bob.user_id],
                initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
            )
            assert isinstance(created, RoomCreateResponse), created
            room_id = created.room_id
            await sync_until(bob, lambda r: room_id in r.rooms.invite, "the invite from the other server")
            joined = await bob.join(room_id)
            assert isinstance(joined, JoinResponse), joined

            def bob_joined(resp: SyncResponse) -> bool:
                return any(
                    isinstance(e, RoomMemberEvent) and e.state_key == bob.user_id and e.membership == "join"
                    for e in timeline(resp, room_id)
                )

            await sync_until(alice, bob_joined, "bob's join from his server")
            await sync_until(bob, lambda r: room_id in r.rooms.join, "the DM among his joined rooms")
            for c in (alice, bob):
                assert c.rooms[room_id].encrypted
                await housekeeping(c)

            hello = "Hi Bob, across servers and encrypted"
            hello_id = await send_encrypted(alice, room_id, hello, ignore_unverified_devices=True)
            syncs = await sync_until(bob, has_event(room_id, hello_id), "alice's message")
            assert_decrypted(the_event(syncs, room_id, hello_id), alice.user_id, hello, "bob")

            reply = "Hi Alice, I read you from my server"
            reply_id = await send_encrypted(bob, room_id, reply, ignore_unverified_devices=True)
            syncs = await sync_until(alice, has_event(room_id, reply_id), "bob's reply")
            assert_decrypted(the_event(syncs, room_id, reply_id), bob.user_id, reply, "alice")

            # bob's phone: his server announces the new device to alice's.
            phone = client(b, pki, tmp_path, "bob-phone")
            logged_in = await phone.login(PASSWORD, device_name="bob's phone")
            assert isinstance(logged_in, LoginResponse), logged_in
            await e2e_sync(phone)
            await sync_until(alice, lambda r: bob.user_id in r.device_list.changed, "bob's device change")
            await housekeeping(alice)
            known = {d.id for d in alice.device_store.active_user_devices(bob.user_id)}
            assert phone.device_id in known, f"alice's client does not know bob's phone: {known}"

            later = "This one is for your phone too"
            later_id = await send_encrypted(alice, room_id, later, ignore_unverified_devices=True)
            syncs = await sync_until(phone, has_event(room_id, later_id), "alice's later message on the phone")
            assert_decrypted(the_event(syncs, room_id, later_id), alice.user_id, later, "bob's phone")
        finally:
            for c in (alice, bob, phone):
                if c is not None:
                    await c.close()

    asyncio.run(scenario())
