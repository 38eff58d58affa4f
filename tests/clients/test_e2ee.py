"""End-to-end encryption through Hearth with real cryptography.

Issue: "End-to-end encryption: Element's encrypted DMs and verification work". What an
Element user does is played by matrix-nio with its `e2e` extra (Olm/Megolm from
vodozemac's Python bindings), each device with its own crypto store in a pytest tmp dir;
what nio does not implement (cross-signing, fallback keys, server-side key backup) is
played over raw HTTP with real keys and real ciphertexts made with vodozemac. The
server only relays and stores: every key and signature it hands back is checked with
real cryptography on the client side, and every message is decrypted by the receiver.

On each storage engine (the ConfigMap's RocksDB, and SQLite):

test_encrypted_dm_with_a_new_and_a_deleted_device
  a. alice and bob register; nio uploads their device and one-time keys. alice creates an
     encrypted DM (m.room.encryption, m.megolm.v1.aes-sha2) inviting bob, bob joins;
     they query each other's device keys (nio checks the device signatures), alice's
     room key reaches bob in an Olm-encrypted to-device message (claiming one of his
     one-time keys, which his sync's count shows), and bob's client decrypts alice's
     message, and alice's bob's reply. The server only ever holds m.room.encrypted.
  b. bob logs in on a phone (new device, new store): alice's and bob's syncs list bob in
     device_lists.changed (so does /keys/changes), alice's client queries his keys again
     and shares a new room key with both of his devices: the phone decrypts alice's next
     message (and, correctly, not the one from before it existed).
  c. from the phone bob deletes his first device (user-interactive auth with his
     password): alice sees the change, the server's /keys/query no longer lists the
     device, alice's client marks it deleted and her next room key goes to the phone
     only; the deleted device's access token is refused.

test_sas_verification_over_to_device
  alice verifies bob's device interactively (SAS: m.key.verification.* to-device
  messages both ways, through long-polling syncs); both clients see the same emoji and
  end up with the other's device verified; alice then sends without ignoring anything.

test_fallback_keys_over_raw_http
  a device made of a bare vodozemac Account uploads device keys, one one-time key and a
  fallback key; claims first hand out the one-time key, then the fallback key (again and
  again, without consuming it); /sync reports device_one_time_keys_count and
  device_unused_fallback_key_types accordingly.

test_cross_signing_and_key_backup_over_raw_http
  bob uploads cross-signing keys (master, self-signing, user-signing: real ed25519 keys)
  through /keys/device_signing/upload, then replaces them, which takes user-interactive
  auth with his password; he signs his device and his master key with
  /keys/signatures/upload (a forged signature is refused with M_INVALID_SIGNATURE);
  /keys/query shows bob and alice what each may see, every signature checking out, and
  alice's sync lists bob as changed; alice signs bob's master key with her user-signing
  key, a signature only she is shown. Then bob's key backup: /room_keys/version create/read/update/delete
  and /room_keys/keys put/get/delete at all three levels, with real Megolm sessions
  encrypted to the backup key (m.megolm_backup.v1.curve25519-aes-sha2), restored and used
  to decrypt a real Megolm message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import vodozemac
from nio import AsyncClient, AsyncClientConfig
from nio.api import RoomPreset
from nio.events import (
    InviteMemberEvent,
    KeyVerificationAccept,
    KeyVerificationKey,
    KeyVerificationMac,
    KeyVerificationStart,
    MegolmEvent,
    RoomKeyEvent,
    RoomMemberEvent,
    RoomMessageText,
)
from nio.responses import (
    DeleteDevicesAuthResponse,
    DeleteDevicesResponse,
    JoinResponse,
    KeysClaimResponse,
    KeysQueryResponse,
    KeysUploadResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomSendResponse,
    SyncError,
    SyncResponse,
    ToDeviceResponse,
)

PASSWORD = "correct horse battery staple"
MEGOLM = "m.megolm.v1.aes-sha2"
OLM = "m.olm.v1.curve25519-aes-sha2"
BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
SYNC_POLL_MS = 10_000

pytestmark = pytest.mark.parametrize("backend", ["rocksdb", "sqlite"])


# ------------------------------------------------------------------ nio clients


def store_dir(tmp_path: Path, name: str) -> str:
    """A fresh directory for one device's nio crypto store."""
    path = tmp_path / "nio-stores" / name
    path.mkdir(parents=True)
    return str(path)


def e2e_client(hearth, tmp_path: Path, username: str, device: str) -> AsyncClient:
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    return AsyncClient(
        hearth.url, username, store_path=store_dir(tmp_path, f"{username}-{device}"), config=config
    )


async def register(hearth, tmp_path: Path, username: str) -> AsyncClient:
    client = e2e_client(hearth, tmp_path, username, "first")
    registered = await client.register_with_token(
        username, PASSWORD, hearth.registration_token, device_name=f"Hearth e2ee: {username}"
    )
    assert isinstance(registered, RegisterResponse), f"registering {username} failed: {registered!r}"
    assert client.olm is not None, "nio did not load its crypto store after registering"
    return client


async def e2e_sync(client: AsyncClient, timeout: int = 0) -> SyncResponse:
    """One /sync, then what nio's sync_forever does between syncs: send queued to-device
    messages, upload keys, query keys and claim one-time keys when nio says so."""
    resp = await client.sync(timeout=timeout)
    assert isinstance(resp, SyncResponse), f"{client.user_id}: sync failed: {resp!r}"
    assert resp.next_batch, resp
    for sent in await client.send_to_device_messages():
        assert isinstance(sent, ToDeviceResponse), f"{client.user_id}: sendToDevice failed: {sent!r}"
    await housekeeping(client)
    return resp


async def housekeeping(client: AsyncClient) -> None:
    if client.should_upload_keys:
        up = await client.keys_upload()
        assert isinstance(up, KeysUploadResponse), f"{client.user_id}: keys/upload failed: {up!r}"
    if client.should_query_keys:
        query = await client.keys_query()
        assert isinstance(query, KeysQueryResponse), f"{client.user_id}: keys/query failed: {query!r}"
    if client.should_claim_keys:
        claim = await client.keys_claim(client.get_users_for_key_claiming())
        assert isinstance(claim, KeysClaimResponse), f"{client.user_id}: keys/claim failed: {claim!r}"


async def sync_until(
    client: AsyncClient,
    done: Callable[[SyncResponse], bool],
    what: str,
    rounds: int = 10,
) -> list[SyncResponse]:
    """Long-polling e2e_syncs until a response satisfies `done`; returns them all."""
    seen: list[SyncResponse] = []
    for _ in range(rounds):
        resp = await e2e_sync(client, timeout=SYNC_POLL_MS)
        seen.append(resp)
        if done(resp):
            return seen
    raise AssertionError(f"{client.user_id}: after {rounds} syncs, still no {what}; got {seen!r}")


def timeline(resp: SyncResponse, room_id: str) -> list:
    joined = resp.rooms.join.get(room_id)
    return list(joined.timeline.events) if joined is not None else []


def has_event(room_id: str, event_id: str) -> Callable[[SyncResponse], bool]:
    return lambda resp: any(e.event_id == event_id for e in timeline(resp, room_id))


def the_event(resps: list[SyncResponse], room_id: str, event_id: str):
    found = [e for r in resps for e in timeline(r, room_id) if e.event_id == event_id]
    assert found, f"{event_id} is not in the syncs' timelines"
    return found[-1]


def assert_decrypted(event, sender: str, body: str, who: str) -> None:
    assert not isinstance(event, MegolmEvent), (
        f"{who} could not decrypt {event.event_id} from {sender}: still a MegolmEvent {event!r} "
        f"(the room key did not arrive before the message, or was not for this device)"
    )
    assert isinstance(event, RoomMessageText), f"{who} got {event!r}, not a text message"
    assert event.decrypted, f"{who}'s copy of {event.event_id} was never encrypted: {event!r}"
    assert (event.sender, event.body) == (sender, body), event


async def send_encrypted(client: AsyncClient, room_id: str, body: str, **kwargs) -> str:
    resp = await client.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": body}, **kwargs
    )
    assert isinstance(resp, RoomSendResponse), f"{client.user_id}: sending {body!r} failed: {resp!r}"
    return resp.event_id


# ------------------------------------------------------------------- raw HTTP


def b64(data: bytes) -> str:
    """Unpadded standard base64, as Matrix uses for keys and ciphertexts."""
    return base64.b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def canonical(obj: dict) -> bytes:
    """Matrix canonical JSON of an object to sign: without `signatures` and `unsigned`."""
    stripped = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return json.dumps(stripped, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(account: vodozemac.Account, obj: dict) -> str:
    return account.sign(canonical(obj)).to_base64()


def verify(public_key: str, obj: dict, signature: str) -> None:
    """Raises unless `signature` is `public_key`'s ed25519 signature of `obj`."""
    vodozemac.Ed25519PublicKey.from_base64(public_key).verify_signature(
        canonical(obj), vodozemac.Ed25519Signature.from_base64(signature)
    )


def q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


class Raw:
    """Client-server API calls as plain JSON, recording each exchange for failure messages."""

    def __init__(self, hearth, session: aiohttp.ClientSession):
        self.base = f"{hearth.url}/_matrix/client/v3"
        self.session = session

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        params: dict[str, str] | None = None,
        expect: int | None = 200,
    ) -> tuple[int, Any, str]:
        """(status, parsed JSON, a description of the exchange). Asserts `expect` unless None."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs: dict[str, Any] = {"headers": headers, "params": params}
        if body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            text = await resp.text()
            status = resp.status
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        exchange = (
            f"{method} /_matrix/client/v3{path}{query}\nrequest: {json.dumps(body)}\n"
            f"response: HTTP {status} {text}"
        )
        if expect is not None:
            assert status == expect, f"expected HTTP {expect}:\n{exchange}"
            assert isinstance(parsed, dict), f"the response is no JSON object:\n{exchange}"
        return status, parsed, exchange

    async def ok(self, method: str, path: str, token: str, body: Any = None, **kw) -> Any:
        return (await self.call(method, path, token, body, **kw))[1]


async def raw_sync(raw: Raw, token: str, since: str | None = None) -> dict:
    params = {"timeout": "0"}
    if since:
        params["since"] = since
    return await raw.ok("GET", "/sync", token, params=params)


# ------------------------------------------------------------ an encrypted DM


async def start_encrypted_dm(alice: AsyncClient, bob: AsyncClient) -> str:
    """alice creates an encrypted DM inviting bob (as Element does), bob joins; both sync."""
    created = await alice.room_create(
        is_direct=True,
        preset=RoomPreset.trusted_private_chat,
        invite=[bob.user_id],
        initial_state=[
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
        ],
    )
    assert isinstance(created, RoomCreateResponse), f"room_create failed: {created!r}"
    room_id = created.room_id

    def invited(resp: SyncResponse) -> bool:
        return room_id in resp.rooms.invite

    syncs = await sync_until(bob, invited, "invite to alice's DM")
    invite_state = syncs[-1].rooms.invite[room_id].invite_state
    mine = [e for e in invite_state if isinstance(e, InviteMemberEvent) and e.state_key == bob.user_id]
    assert mine and mine[-1].content.get("is_direct") is True, (
        f"bob's invite does not say it is a DM: {invite_state}"
    )
    joined = await bob.join(room_id)
    assert isinstance(joined, JoinResponse), f"bob's join failed: {joined!r}"

    def bob_joined(resp: SyncResponse) -> bool:
        return any(
            isinstance(e, RoomMemberEvent) and e.state_key == bob.user_id and e.membership == "join"
            for e in timeline(resp, room_id)
        )

    await sync_until(alice, bob_joined, "join of bob's")
    await sync_until(bob, lambda r: room_id in r.rooms.join, "the DM among his joined rooms")
    for client in (alice, bob):
        room = client.rooms[room_id]
        assert room.encrypted, f"{client.user_id}'s client does not see the DM as encrypted"
        assert set(room.users) == {alice.user_id, bob.user_id}, room.users
        # The membership just synced makes nio track the other's devices: query them now.
        await housekeeping(client)
    return room_id


def device_of(client: AsyncClient, user_id: str, device_id: str):
    devices = client.device_store[user_id] if user_id in client.device_store.users else {}
    assert device_id in devices, (
        f"{client.user_id}'s client does not know {user_id}'s device {device_id}: {dict(devices)}"
    )
    return devices[device_id]


def test_encrypted_dm_with_a_new_and_a_deleted_device(hearth, backend, tmp_path):
    assert hearth.env["CONDUIT_DATABASE_BACKEND"] == backend

    async def scenario():
        alice = await register(hearth, tmp_path, "alice")
        bob = await register(hearth, tmp_path, "bob")
        phone: AsyncClient | None = None
        session = aiohttp.ClientSession()
        raw = Raw(hearth, session)
        try:
            # ---- (a) keys go up on the first sync; the DM is created and joined.
            for client in (alice, bob):
                await e2e_sync(client)
                assert client.olm.account.shared, f"{client.user_id}'s keys were not uploaded"
                assert not client.should_upload_keys, f"{client.user_id} still has keys to upload"
            bob_otks = bob.olm.uploaded_key_count
            assert bob_otks and bob_otks > 0, f"the server counts {bob_otks} one-time keys of bob's"

            room_id = await start_encrypted_dm(alice, bob)
            # Each knows the other's device, with exactly the identity keys it has (nio has
            # checked the device's self-signature).
            for me, other in ((alice, bob), (bob, alice)):
                known = device_of(me, other.user_id, other.device_id)
                assert known.ed25519 == other.olm.account.identity_keys["ed25519"], known
                assert known.curve25519 == other.olm.account.identity_keys["curve25519"], known

            # ---- alice's first encrypted message: room key by Olm to bob, text by Megolm.
            hello = "Hi Bob, this is end-to-end encrypted"
            hello_id = await send_encrypted(alice, room_id, hello, ignore_unverified_devices=True)
            first_session = alice.olm.outbound_group_sessions[room_id].id
            assert (bob.user_id, bob.device_id) in alice.olm.outbound_group_sessions[room_id].users_shared_with

            stored = await raw.ok("GET", f"/rooms/{q(room_id)}/event/{q(hello_id)}", bob.access_token)
            assert stored["type"] == "m.room.encrypted", stored
            assert stored["content"]["algorithm"] == MEGOLM, stored
            assert stored["content"]["session_id"] == first_session, stored
            assert hello not in json.dumps(stored), f"the server holds the plaintext: {stored}"

            bob_syncs = await sync_until(bob, has_event(room_id, hello_id), "alice's first message")
            assert_decrypted(the_event(bob_syncs, room_id, hello_id), alice.user_id, hello, "bob")
            room_keys = [
                e for r in bob_syncs for e in r.to_device_events if isinstance(e, RoomKeyEvent)
            ]
            assert [(e.sender, e.room_id, e.session_id) for e in room_keys] == [
                (alice.user_id, room_id, first_session)
            ], f"bob's to-device room keys: {room_keys}"
            # alice claimed one of bob's one-time keys: his sync says so (and nio replaces it).
            counts = [r.device_key_count.signed_curve25519 for r in bob_syncs]
            assert bob_otks - 1 in counts, (
                f"bob had {bob_otks} one-time keys, alice claimed one, but his syncs report {counts}"
            )
            _, replenished, _ = await raw.call("POST", "/keys/upload", bob.access_token, {})
            assert replenished["one_time_key_counts"].get("signed_curve25519") == bob_otks, replenished

            reply = "Hi Alice, I can read you"
            reply_id = await send_encrypted(bob, room_id, reply, ignore_unverified_devices=True)
            alice_syncs = await sync_until(alice, has_event(room_id, reply_id), "bob's reply")
            assert_decrypted(the_event(alice_syncs, room_id, reply_id), bob.user_id, reply, "alice")

            # ---- (b) bob logs in on a phone: a new device with its own keys.
            changes_from = alice.next_batch
            phone = e2e_client(hearth, tmp_path, "bob", "phone")
            logged_in = await phone.login(PASSWORD, device_name="Hearth e2ee: bob's phone")
            assert isinstance(logged_in, LoginResponse), f"bob's phone login failed: {logged_in!r}"
            assert phone.device_id != bob.device_id
            phone_first = await e2e_sync(phone)
            assert phone.olm.account.shared, "the phone's keys were not uploaded"
            # Room history from before the phone existed stays unreadable to it.
            old = [e for e in timeline(phone_first, room_id) if e.event_id == hello_id]
            assert all(isinstance(e, MegolmEvent) for e in old), (
                f"the phone decrypted a message whose key it never got: {old}"
            )

            def lists_bob(resp: SyncResponse) -> bool:
                return bob.user_id in resp.device_list.changed

            await sync_until(alice, lists_bob, "bob in device_lists.changed after his new login")
            assert phone.device_id in {d.id for d in alice.device_store.active_user_devices(bob.user_id)}, (
                "alice's client queried bob's keys but does not know his phone"
            )
            await sync_until(bob, lists_bob, "himself in device_lists.changed after his new login")
            changes = await raw.ok(
                "GET", "/keys/changes", alice.access_token,
                params={"from": changes_from, "to": alice.next_batch},
            )
            assert bob.user_id in changes.get("changed", []), changes
            assert isinstance(changes.get("left", []), list), changes

            news = "Bob, welcome to your phone"
            news_id = await send_encrypted(alice, room_id, news, ignore_unverified_devices=True)
            second = alice.olm.outbound_group_sessions[room_id]
            assert second.id != first_session, "alice's client did not rotate the room key"
            assert {(bob.user_id, bob.device_id), (bob.user_id, phone.device_id)} <= second.users_shared_with
            phone_syncs = await sync_until(phone, has_event(room_id, news_id), "alice's message on the phone")
            assert_decrypted(the_event(phone_syncs, room_id, news_id), alice.user_id, news, "bob's phone")
            bob_syncs = await sync_until(bob, has_event(room_id, news_id), "alice's message on the laptop")
            assert_decrypted(the_event(bob_syncs, room_id, news_id), alice.user_id, news, "bob's laptop")

            # ---- (c) from his phone, bob deletes his first device (UIA with his password).
            old_device = bob.device_id
            asked = await phone.delete_devices([old_device])
            assert isinstance(asked, DeleteDevicesAuthResponse), f"deleting without auth: {asked!r}"
            assert any(f.get("stages") == ["m.login.password"] for f in asked.flows), asked.flows
            deleted = await phone.delete_devices(
                [old_device],
                auth={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": bob.user_id},
                    "password": PASSWORD,
                    "session": asked.session,
                },
            )
            assert isinstance(deleted, DeleteDevicesResponse), f"deleting bob's device failed: {deleted!r}"

            await sync_until(alice, lists_bob, "bob in device_lists.changed after the deletion")
            assert device_of(alice, bob.user_id, old_device).deleted, (
                "alice's client still has bob's deleted device as active"
            )
            _, listed, exchange = await raw.call(
                "POST", "/keys/query", alice.access_token, {"device_keys": {bob.user_id: []}}
            )
            assert set(listed["device_keys"].get(bob.user_id, {})) == {phone.device_id}, exchange

            last = "Only your phone can read this"
            last_id = await send_encrypted(alice, room_id, last, ignore_unverified_devices=True)
            third = alice.olm.outbound_group_sessions[room_id]
            assert third.id not in (first_session, second.id), "alice's room key was not rotated"
            assert {u for u in third.users_shared_with if u[0] == bob.user_id} == {
                (bob.user_id, phone.device_id)
            }, f"alice's new room key went to {third.users_shared_with}"
            phone_syncs = await sync_until(phone, has_event(room_id, last_id), "alice's last message")
            assert_decrypted(the_event(phone_syncs, room_id, last_id), alice.user_id, last, "bob's phone")

            gone = await bob.sync(timeout=0)
            assert isinstance(gone, SyncError), f"the deleted device can still sync: {gone!r}"
            assert gone.status_code == "M_UNKNOWN_TOKEN", gone
        finally:
            await session.close()
            for client in (alice, bob, phone):
                if client is not None:
                    await client.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------ verification


def test_sas_verification_over_to_device(hearth, backend, tmp_path):
    async def scenario():
        alice = await register(hearth, tmp_path, "alice")
        bob = await register(hearth, tmp_path, "bob")
        try:
            for client in (alice, bob):
                await e2e_sync(client)
            room_id = await start_encrypted_dm(alice, bob)
            bob_device = device_of(alice, bob.user_id, bob.device_id)
            alice_device = device_of(bob, alice.user_id, alice.device_id)
            assert not alice.olm.is_device_verified(bob_device)

            def got(kind: type) -> Callable[[SyncResponse], bool]:
                return lambda resp: any(isinstance(e, kind) for e in resp.to_device_events)

            started = await alice.start_key_verification(bob_device)
            assert isinstance(started, ToDeviceResponse), f"m.key.verification.start failed: {started!r}"
            syncs = await sync_until(bob, got(KeyVerificationStart), "m.key.verification.start")
            start = [e for r in syncs for e in r.to_device_events if isinstance(e, KeyVerificationStart)][-1]
            assert (start.sender, start.from_device) == (alice.user_id, alice.device_id), start
            tx = start.transaction_id
            accepted = await bob.accept_key_verification(tx)
            assert isinstance(accepted, ToDeviceResponse), f"m.key.verification.accept failed: {accepted!r}"
            # alice's client answers the accept with its key, bob's the key with his.
            await sync_until(alice, got(KeyVerificationAccept), "m.key.verification.accept")
            await sync_until(bob, got(KeyVerificationKey), "alice's m.key.verification.key")
            await sync_until(alice, got(KeyVerificationKey), "bob's m.key.verification.key")

            alice_sas, bob_sas = alice.key_verifications[tx], bob.key_verifications[tx]
            assert alice_sas.get_emoji() == bob_sas.get_emoji(), (
                f"the emoji differ: {alice_sas.get_emoji()} vs {bob_sas.get_emoji()}"
            )
            for client in (alice, bob):
                confirmed = await client.confirm_short_auth_string(tx)
                assert isinstance(confirmed, ToDeviceResponse), f"{client.user_id}'s MAC failed: {confirmed!r}"
            await sync_until(alice, got(KeyVerificationMac), "bob's m.key.verification.mac")
            await sync_until(bob, got(KeyVerificationMac), "alice's m.key.verification.mac")
            assert alice_sas.verified and bob_sas.verified, (alice_sas, bob_sas)
            assert alice.olm.is_device_verified(bob_device), "alice's client did not verify bob's device"
            assert bob.olm.is_device_verified(alice_device), "bob's client did not verify alice's device"

            # Every device in the room is verified now: no need to ignore any.
            body = "Verified and encrypted"
            event_id = await send_encrypted(alice, room_id, body)
            syncs = await sync_until(bob, has_event(room_id, event_id), "alice's verified message")
            assert_decrypted(the_event(syncs, room_id, event_id), alice.user_id, body, "bob")
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------ fallback keys


def device_keys_of(account: vodozemac.Account, user_id: str, device_id: str) -> dict:
    keys = {
        "user_id": user_id,
        "device_id": device_id,
        "algorithms": [OLM, MEGOLM],
        "keys": {
            f"curve25519:{device_id}": account.curve25519_key.to_base64(),
            f"ed25519:{device_id}": account.ed25519_key.to_base64(),
        },
    }
    keys["signatures"] = {user_id: {f"ed25519:{device_id}": sign(account, keys)}}
    return keys


def signed_key(account: vodozemac.Account, user_id: str, device_id: str, key: str, fallback=False) -> dict:
    obj: dict[str, Any] = {"key": key}
    if fallback:
        obj["fallback"] = True
    obj["signatures"] = {user_id: {f"ed25519:{device_id}": sign(account, obj)}}
    return obj


async def plain_register(hearth, username: str) -> AsyncClient:
    client = AsyncClient(hearth.url, username, config=AsyncClientConfig(encryption_enabled=False))
    registered = await client.register_with_token(username, PASSWORD, hearth.registration_token)
    assert isinstance(registered, RegisterResponse), f"registering {username} failed: {registered!r}"
    return client


def test_fallback_keys_over_raw_http(hearth, backend):
    async def scenario():
        carol = await plain_register(hearth, "carol")
        alice = await plain_register(hearth, "alice")
        session = aiohttp.ClientSession()
        raw = Raw(hearth, session)
        try:
            user, device, token = carol.user_id, carol.device_id, carol.access_token
            account = vodozemac.Account()
            account.generate_one_time_keys(1)
            otks = {k: v.to_base64() for k, v in account.one_time_keys.items()}
            account.generate_fallback_key()
            fallbacks = {k: v.to_base64() for k, v in account.fallback_key.items()}
            account.mark_keys_as_published()
            (otk_id, otk), = otks.items()
            (fb_id, fb), = fallbacks.items()
            uploaded = await raw.ok("POST", "/keys/upload", token, {
                "device_keys": device_keys_of(account, user, device),
                "one_time_keys": {f"signed_curve25519:{otk_id}": signed_key(account, user, device, otk)},
                "fallback_keys": {
                    f"signed_curve25519:{fb_id}": signed_key(account, user, device, fb, fallback=True)
                },
            })
            # The fallback key is not a one-time key: it is not counted as one.
            assert uploaded["one_time_key_counts"].get("signed_curve25519") == 1, uploaded

            first = await raw_sync(raw, token)
            assert first.get("device_one_time_keys_count", {}).get("signed_curve25519") == 1, (
                f"sync: device_one_time_keys_count={first.get('device_one_time_keys_count')}"
            )
            assert first.get("device_unused_fallback_key_types") == ["signed_curve25519"], (
                f"sync: device_unused_fallback_key_types={first.get('device_unused_fallback_key_types')!r}"
            )

            # alice finds carol's device and checks its self-signature.
            query = await raw.ok("POST", "/keys/query", alice.access_token, {"device_keys": {user: []}})
            got = query["device_keys"][user][device]
            ed = got["keys"][f"ed25519:{device}"]
            assert ed == account.ed25519_key.to_base64(), got
            verify(ed, got, got["signatures"][user][f"ed25519:{device}"])

            async def claim() -> tuple[str, dict]:
                _, body, exchange = await raw.call("POST", "/keys/claim", alice.access_token, {
                    "one_time_keys": {user: {device: "signed_curve25519"}}
                })
                keys = body.get("one_time_keys", {}).get(user, {}).get(device, {})
                assert len(keys) == 1, f"expected exactly one key:\n{exchange}"
                (key_id, key), = keys.items()
                verify(ed, key, key["signatures"][user][f"ed25519:{device}"])
                return key_id, key

            key_id, key = await claim()
            assert (key_id, key["key"]) == (f"signed_curve25519:{otk_id}", otk), (key_id, key)
            assert "fallback" not in key, key
            for _ in range(2):  # the fallback key, and again: it is not used up
                key_id, key = await claim()
                assert (key_id, key["key"], key.get("fallback")) == (f"signed_curve25519:{fb_id}", fb, True), (
                    key_id, key,
                )

            after = await raw_sync(raw, token, since=first["next_batch"])
            assert after.get("device_one_time_keys_count", {}).get("signed_curve25519", 0) == 0, (
                f"sync: device_one_time_keys_count={after.get('device_one_time_keys_count')}"
            )
            assert after.get("device_unused_fallback_key_types") == [], (
                f"the fallback key was handed out, yet sync says "
                f"device_unused_fallback_key_types={after.get('device_unused_fallback_key_types')!r}"
            )

            # A new fallback key replaces the used one.
            account.generate_fallback_key()
            fallbacks = {k: v.to_base64() for k, v in account.fallback_key.items()}
            account.mark_keys_as_published()
            (fb2_id, fb2), = fallbacks.items()
            assert fb2 != fb
            await raw.ok("POST", "/keys/upload", token, {
                "fallback_keys": {
                    f"signed_curve25519:{fb2_id}": signed_key(account, user, device, fb2, fallback=True)
                },
            })
            again = await raw_sync(raw, token, since=after["next_batch"])
            assert again.get("device_unused_fallback_key_types") == ["signed_curve25519"], again
            key_id, key = await claim()
            assert (key_id, key["key"]) == (f"signed_curve25519:{fb2_id}", fb2), (key_id, key)
        finally:
            await session.close()
            await carol.close()
            await alice.close()

    asyncio.run(scenario())


# ------------------------------------------------ cross-signing and key backup


def cross_signing_key(user_id: str, usage: str, key: vodozemac.Account) -> dict:
    public = key.ed25519_key.to_base64()
    return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{public}": public}}


def public(key: vodozemac.Account) -> str:
    return key.ed25519_key.to_base64()


class CrossSigning:
    """A user's three cross-signing keys, as Element makes them on 'Set up secure backup'."""

    def __init__(self, user_id: str):
        self.user_id = user_id
        self.master, self.self_signing, self.user_signing = (vodozemac.Account() for _ in range(3))

    def upload_body(self) -> dict:
        master = cross_signing_key(self.user_id, "master", self.master)
        body = {"master_key": master}
        for name, usage, key in (
            ("self_signing_key", "self_signing", self.self_signing),
            ("user_signing_key", "user_signing", self.user_signing),
        ):
            obj = cross_signing_key(self.user_id, usage, key)
            obj["signatures"] = {self.user_id: {f"ed25519:{public(self.master)}": sign(self.master, obj)}}
            body[name] = obj
        return body


def password_auth(user_id: str, session: str | None, password: str = PASSWORD) -> dict:
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
    }
    if session is not None:
        auth["session"] = session
    return auth


async def upload_cross_signing(raw: Raw, client: AsyncClient, keys: CrossSigning) -> None:
    """POST /keys/device_signing/upload, completing user-interactive auth with the password.
    (A first upload may go through without auth: the spec, since v1.11, allows it.)"""
    body = keys.upload_body()
    status, resp, exchange = await raw.call(
        "POST", "/keys/device_signing/upload", client.access_token, body, expect=None
    )
    if status == 200:
        assert resp == {}, exchange
        return
    assert status == 401, f"expected 401 (user-interactive auth) or 200:\n{exchange}"
    assert any(f.get("stages") == ["m.login.password"] for f in resp.get("flows", [])), exchange
    assert resp.get("session"), exchange
    done = await raw.ok(
        "POST", "/keys/device_signing/upload", client.access_token,
        {**body, "auth": password_auth(client.user_id, resp["session"])},
    )
    assert done == {}, done


def only_key(keys: dict) -> str:
    (value,) = keys["keys"].values()
    return value


def test_cross_signing_and_key_backup_over_raw_http(hearth, backend, tmp_path):
    async def scenario():
        alice = await register(hearth, tmp_path, "alice")
        bob = await register(hearth, tmp_path, "bob")
        session = aiohttp.ClientSession()
        raw = Raw(hearth, session)
        try:
            for client in (alice, bob):
                await e2e_sync(client)
            room_id = await start_encrypted_dm(alice, bob)
            bob_id, bob_device = bob.user_id, bob.device_id

            # ---- bob's cross-signing keys, behind user-interactive auth.
            first_keys = CrossSigning(bob_id)
            await upload_cross_signing(raw, bob, first_keys)

            # Replacing them ("reset cross-signing") takes the password: not without auth, nor
            # with a wrong password; with his password, the new keys replace the old.
            bob_keys = CrossSigning(bob_id)
            status, resp, exchange = await raw.call(
                "POST", "/keys/device_signing/upload", bob.access_token, bob_keys.upload_body(), expect=None
            )
            assert status == 401 and resp.get("session"), f"replacing keys without auth:\n{exchange}"
            assert any(f.get("stages") == ["m.login.password"] for f in resp.get("flows", [])), exchange
            status, wrong, exchange = await raw.call(
                "POST", "/keys/device_signing/upload", bob.access_token,
                {**bob_keys.upload_body(), "auth": password_auth(bob_id, resp["session"], "not the password")},
                expect=None,
            )
            assert status == 401 and wrong.get("errcode") == "M_FORBIDDEN", (
                f"replacing keys with a wrong password:\n{exchange}"
            )
            mine = await raw.ok("POST", "/keys/query", bob.access_token, {"device_keys": {bob_id: []}})
            assert only_key(mine["master_keys"][bob_id]) == public(first_keys.master), mine
            replaced = await raw.ok(
                "POST", "/keys/device_signing/upload", bob.access_token,
                {**bob_keys.upload_body(), "auth": password_auth(bob_id, resp["session"])},
            )
            assert replaced == {}, replaced
            master_pub, ssk_pub, usk_pub = (
                public(k) for k in (bob_keys.master, bob_keys.self_signing, bob_keys.user_signing)
            )

            # bob signs his device with his self-signing key, his master key with his device.
            own = await raw.ok("POST", "/keys/query", bob.access_token, {"device_keys": {bob_id: [bob_device]}})
            device_keys = {k: v for k, v in own["device_keys"][bob_id][bob_device].items() if k != "unsigned"}
            device_keys["signatures"] = {
                bob_id: {f"ed25519:{ssk_pub}": sign(bob_keys.self_signing, device_keys)}
            }
            master = cross_signing_key(bob_id, "master", bob_keys.master)
            master["signatures"] = {bob_id: {f"ed25519:{bob_device}": bob.olm.sign_json(master)}}
            signed = await raw.ok("POST", "/keys/signatures/upload", bob.access_token, {
                bob_id: {bob_device: device_keys, master_pub: master}
            })
            assert not signed.get("failures"), signed
            # A forged signature is refused.
            forged = dict(device_keys)
            forged["signatures"] = {bob_id: {f"ed25519:{ssk_pub}": sign(bob_keys.master, device_keys)}}
            _, refused, exchange = await raw.call("POST", "/keys/signatures/upload", bob.access_token, {
                bob_id: {bob_device: forged}
            })
            failure = refused.get("failures", {}).get(bob_id, {}).get(bob_device, {})
            assert failure.get("errcode") == "M_INVALID_SIGNATURE", f"a forged signature:\n{exchange}"

            # alice learns that bob's keys changed, and sees his master and self-signing keys
            # (never his user-signing key), all signatures checking out.
            def lists_bob(resp: SyncResponse) -> bool:
                return bob_id in resp.device_list.changed

            await sync_until(alice, lists_bob, "bob in device_lists.changed after his cross-signing")
            for viewer in (alice, bob):
                _, seen, exchange = await raw.call(
                    "POST", "/keys/query", viewer.access_token, {"device_keys": {bob_id: []}}
                )
                m = seen.get("master_keys", {}).get(bob_id)
                s = seen.get("self_signing_keys", {}).get(bob_id)
                assert m and only_key(m) == master_pub and m["usage"] == ["master"], exchange
                verify(bob.olm.account.identity_keys["ed25519"], m, m["signatures"][bob_id][f"ed25519:{bob_device}"])
                assert s and only_key(s) == ssk_pub and s["usage"] == ["self_signing"], exchange
                verify(master_pub, s, s["signatures"][bob_id][f"ed25519:{master_pub}"])
                d = seen["device_keys"][bob_id][bob_device]
                verify(ssk_pub, d, d["signatures"][bob_id][f"ed25519:{ssk_pub}"])
                usk = seen.get("user_signing_keys", {}).get(bob_id)
                if viewer is bob:
                    assert usk and only_key(usk) == usk_pub, exchange
                    verify(master_pub, usk, usk["signatures"][bob_id][f"ed25519:{master_pub}"])
                else:
                    assert usk is None, f"alice was shown bob's user-signing key:\n{exchange}"

            # alice sets up her own cross-signing and signs bob's master key (she verified him).
            alice_keys = CrossSigning(alice.user_id)
            await upload_cross_signing(raw, alice, alice_keys)
            alice_usk = public(alice_keys.user_signing)
            bob_master = cross_signing_key(bob_id, "master", bob_keys.master)
            bob_master["signatures"] = {
                alice.user_id: {f"ed25519:{alice_usk}": sign(alice_keys.user_signing, bob_master)}
            }
            signed = await raw.ok("POST", "/keys/signatures/upload", alice.access_token, {
                bob_id: {master_pub: bob_master}
            })
            assert not signed.get("failures"), signed
            _, seen, exchange = await raw.call(
                "POST", "/keys/query", alice.access_token, {"device_keys": {bob_id: []}}
            )
            m = seen["master_keys"][bob_id]
            verify(alice_usk, m, m.get("signatures", {}).get(alice.user_id, {}).get(f"ed25519:{alice_usk}", ""))
            _, seen, exchange = await raw.call(
                "POST", "/keys/query", bob.access_token, {"device_keys": {bob_id: []}}
            )
            assert alice.user_id not in seen["master_keys"][bob_id].get("signatures", {}), (
                f"bob is shown alice's signature of his master key, which only she may see:\n{exchange}"
            )

            # ---- key backup: no backup yet.
            status, none, exchange = await raw.call("GET", "/room_keys/version", bob.access_token, expect=None)
            assert status == 404 and none.get("errcode") == "M_NOT_FOUND", exchange

            backup_key = vodozemac.PkDecryption()
            auth_data = {"public_key": backup_key.public_key.to_base64()}
            auth_data["signatures"] = {bob_id: {
                f"ed25519:{bob_device}": bob.olm.sign_json(auth_data),
                f"ed25519:{master_pub}": sign(bob_keys.master, auth_data),
            }}
            created = await raw.ok("POST", "/room_keys/version", bob.access_token, {
                "algorithm": BACKUP_ALGORITHM, "auth_data": auth_data,
            })
            version = created.get("version")
            assert isinstance(version, str) and version, created
            for path in ("/room_keys/version", f"/room_keys/version/{q(version)}"):
                info = await raw.ok("GET", path, bob.access_token)
                assert (info.get("algorithm"), info.get("auth_data"), info.get("version"), info.get("count")) == (
                    BACKUP_ALGORITHM, auth_data, version, 0,
                ), info
                assert isinstance(info.get("etag"), str), info
            status, none, exchange = await raw.call("GET", "/room_keys/version", alice.access_token, expect=None)
            assert status == 404, f"alice sees bob's backup:\n{exchange}"

            # Real Megolm sessions of bob's, each with a message, backed up encrypted.
            curve = bob.olm.account.identity_keys["curve25519"]
            ed = bob.olm.account.identity_keys["ed25519"]
            encryptor = vodozemac.PkEncryption.from_key(backup_key.public_key)
            sessions: dict[str, tuple[dict, str, bytes]] = {}  # id -> (backup data, message, plaintext)
            for i in range(3):
                outbound = vodozemac.GroupSession()
                inbound = vodozemac.InboundGroupSession(outbound.session_key)
                plaintext = json.dumps({"type": "m.room.message", "room_id": room_id,
                                        "content": {"msgtype": "m.text", "body": f"backed up {i}"}}).encode()
                message = outbound.encrypt(plaintext).to_base64()
                secret = json.dumps({
                    "algorithm": MEGOLM,
                    "sender_key": curve,
                    "session_key": inbound.export_at(0).to_base64(),
                    "sender_claimed_keys": {"ed25519": ed},
                    "forwarded_curve25519_key_chain": [],
                }).encode()
                enc = encryptor.encrypt(secret)
                data = {
                    "first_message_index": 0,
                    "forwarded_count": 0,
                    "is_verified": True,
                    "session_data": {
                        "ephemeral": b64(enc.ephemeral_key),
                        "ciphertext": b64(enc.ciphertext),
                        "mac": b64(enc.mac),
                    },
                }
                sessions[outbound.session_id] = (data, message, plaintext)
            (s1, s2, s3) = sessions
            v = {"version": version}

            put = await raw.ok("PUT", "/room_keys/keys", bob.access_token, {
                "rooms": {room_id: {"sessions": {s1: sessions[s1][0], s2: sessions[s2][0]}}}
            }, params=v)
            assert put.get("count") == 2 and isinstance(put.get("etag"), str), put
            etag = put["etag"]
            put = await raw.ok("PUT", f"/room_keys/keys/{q(room_id)}", bob.access_token,
                               {"sessions": {s3: sessions[s3][0]}}, params=v)
            assert put.get("count") == 3 and put.get("etag") != etag, put
            etag = put["etag"]
            info = await raw.ok("GET", "/room_keys/version", bob.access_token)
            assert (info["count"], info["etag"]) == (3, etag), info

            want = {sid: d for sid, (d, _, _) in sessions.items()}
            everything = await raw.ok("GET", "/room_keys/keys", bob.access_token, params=v)
            assert everything == {"rooms": {room_id: {"sessions": want}}}, everything
            room = await raw.ok("GET", f"/room_keys/keys/{q(room_id)}", bob.access_token, params=v)
            assert room == {"sessions": want}, room
            one = await raw.ok("GET", f"/room_keys/keys/{q(room_id)}/{q(s2)}", bob.access_token, params=v)
            assert one == sessions[s2][0], one

            # Restoring on a new device: decrypt each backed-up session, decrypt its message.
            for sid, got in everything["rooms"][room_id]["sessions"].items():
                sd = got["session_data"]
                secret = json.loads(backup_key.decrypt(
                    vodozemac.Message(unb64(sd["ciphertext"]), unb64(sd["mac"]), unb64(sd["ephemeral"]))
                ))
                restored = vodozemac.InboundGroupSession.import_session(
                    vodozemac.ExportedSessionKey(secret["session_key"])
                )
                assert restored.session_id == sid
                _, message, plaintext = sessions[sid]
                assert restored.decrypt(vodozemac.MegolmMessage.from_base64(message)).plaintext == plaintext

            # A worse copy of a session (later first index, unverified) does not replace it.
            worse = dict(sessions[s1][0], first_message_index=5, is_verified=False)
            await raw.ok("PUT", f"/room_keys/keys/{q(room_id)}/{q(s1)}", bob.access_token, worse, params=v)
            kept = await raw.ok("GET", f"/room_keys/keys/{q(room_id)}/{q(s1)}", bob.access_token, params=v)
            assert kept == sessions[s1][0], f"a worse key replaced the backed-up one: {kept}"

            # auth_data can be updated (here: another signature), algorithm unchanged.
            auth_data2 = dict(auth_data, signatures={bob_id: dict(auth_data["signatures"][bob_id])})
            auth_data2["signatures"][bob_id].pop(f"ed25519:{bob_device}")
            updated = await raw.ok("PUT", f"/room_keys/version/{q(version)}", bob.access_token, {
                "algorithm": BACKUP_ALGORITHM, "auth_data": auth_data2, "version": version,
            })
            assert updated == {}, updated
            info = await raw.ok("GET", f"/room_keys/version/{q(version)}", bob.access_token)
            assert info["auth_data"] == auth_data2, info

            deleted = await raw.ok("DELETE", f"/room_keys/keys/{q(room_id)}/{q(s3)}", bob.access_token, params=v)
            assert deleted.get("count") == 2 and deleted.get("etag") != etag, deleted
            status, _, exchange = await raw.call(
                "GET", f"/room_keys/keys/{q(room_id)}/{q(s3)}", bob.access_token, params=v, expect=None
            )
            assert status == 404, f"a deleted backup key is still there:\n{exchange}"

            # Deleting the room's remaining keys.
            deleted = await raw.ok("DELETE", f"/room_keys/keys/{q(room_id)}", bob.access_token, params=v)
            assert deleted.get("count") == 0, deleted

            # A new backup version becomes current; uploads to the old one are refused.
            new_key = vodozemac.PkDecryption()
            created = await raw.ok("POST", "/room_keys/version", bob.access_token, {
                "algorithm": BACKUP_ALGORITHM, "auth_data": {"public_key": new_key.public_key.to_base64()},
            })
            version2 = created["version"]
            assert version2 != version, created
            info = await raw.ok("GET", "/room_keys/version", bob.access_token)
            assert (info["version"], info["count"]) == (version2, 0), info
            status, stale, exchange = await raw.call(
                "PUT", f"/room_keys/keys/{q(room_id)}/{q(s3)}", bob.access_token, sessions[s3][0],
                params=v, expect=None,
            )
            assert status == 403 and stale.get("errcode") == "M_WRONG_ROOM_KEYS_VERSION", exchange
            assert stale.get("current_version") == version2, exchange

            # Deleting the new version.
            gone = await raw.ok("DELETE", f"/room_keys/version/{q(version2)}", bob.access_token)
            assert gone == {}, gone
            status, _, exchange = await raw.call(
                "GET", f"/room_keys/version/{q(version2)}", bob.access_token, expect=None
            )
            assert status == 404, f"a deleted backup version is still there:\n{exchange}"
        finally:
            await session.close()
            await alice.close()
            await bob.close()

    asyncio.run(scenario())
