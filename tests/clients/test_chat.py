"""Two people chat through Hearth with a real client (matrix-nio's AsyncClient).

The scenario, on each storage engine (the ConfigMap's RocksDB, and SQLite):

1. alice and bob register with the Secret's registration token;
2. alice creates a private room with a name, a topic and an alias, and invites bob;
3. bob sees the invite in /sync (with the room's name) and joins; alice sees him join;
4. they exchange messages, each seeing the other's through incremental /sync;
5. a long-polling /sync of bob's is woken by a message of alice's;
5a. alice starts typing and bob's /sync shows her typing; she stops and he sees nobody typing;
5b. bob marks alice's latest message read (a private receipt, then the read markers with
    a public `m.read` and `m.fully_read`): alice's /sync shows bob's public receipt and
    never his private one; bob's own /sync shows both receipts and his `m.fully_read`
    room account data;
6. alice sends 30 more messages; /messages pages the whole history backwards, ten at a
   time, newest first, exactly in reverse order of sending, down to the room's creation;
7. the alias resolves to the room;
8. bob leaves: his /sync lists the room under `leave`, alice sees him go, and a message
   he then tries to send is refused with 403 M_FORBIDDEN.

Everything goes through nio's public API; only nio's own response classes are inspected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from nio import AsyncClient
from nio.api import ReceiptType, RoomPreset, RoomVisibility
from nio.events import (
    FullyReadEvent,
    InviteMemberEvent,
    Receipt,
    ReceiptEvent,
    RoomCreateEvent,
    RoomMemberEvent,
    RoomMessageText,
    TypingNoticeEvent,
)
from nio.responses import (
    JoinResponse,
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomLeaveResponse,
    RoomMessagesResponse,
    RoomReadMarkersResponse,
    RoomResolveAliasResponse,
    RoomSendError,
    RoomSendResponse,
    RoomTypingResponse,
    SyncResponse,
    UpdateReceiptMarkerResponse,
)

PASSWORD = "correct horse battery staple"
ROOM_NAME = "Hearth chat"
ROOM_TOPIC = "Where alice and bob talk"
ALIAS_LOCALPART = "hearth-chat"
SYNC_POLL_MS = 10_000
LONG_POLL_MS = 30_000
# Long enough never to lapse during the test: alice stops typing explicitly.
TYPING_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.parametrize("backend", ["rocksdb", "sqlite"])


async def register(hearth, username: str) -> AsyncClient:
    client = AsyncClient(hearth.url, username)
    registered = await client.register_with_token(
        username, PASSWORD, hearth.registration_token, device_name=f"Hearth e2e chat: {username}"
    )
    assert isinstance(registered, RegisterResponse), f"registering {username} failed: {registered!r}"
    assert client.logged_in
    return client


async def initial_sync(client: AsyncClient) -> str:
    resp = await client.sync(timeout=0)
    assert isinstance(resp, SyncResponse), f"initial sync of {client.user_id} failed: {resp!r}"
    assert resp.next_batch
    return resp.next_batch


async def sync_until(
    client: AsyncClient,
    since: str,
    done: Callable[[SyncResponse], bool],
    what: str,
    rounds: int = 10,
) -> tuple[list[SyncResponse], str]:
    """Incremental (long-polling) syncs from `since` until one response satisfies `done`.

    Returns every response received and the last `next_batch`. A sync may legitimately
    return early with other news, hence the rounds; `what` names the awaited news."""
    seen: list[SyncResponse] = []
    for _ in range(rounds):
        resp = await client.sync(timeout=SYNC_POLL_MS, since=since)
        assert isinstance(resp, SyncResponse), f"{client.user_id}: sync since {since} failed: {resp!r}"
        assert resp.next_batch, resp
        seen.append(resp)
        since = resp.next_batch
        if done(resp):
            return seen, since
    raise AssertionError(f"{client.user_id}: after {rounds} syncs, still no {what}; got {seen!r}")


def timeline(resp: SyncResponse, room_id: str) -> list:
    joined = resp.rooms.join.get(room_id)
    return list(joined.timeline.events) if joined is not None else []


def ephemeral(resp: SyncResponse, room_id: str) -> list:
    joined = resp.rooms.join.get(room_id)
    return list(joined.ephemeral) if joined is not None else []


def room_account_data(resp: SyncResponse, room_id: str) -> list:
    joined = resp.rooms.join.get(room_id)
    return list(joined.account_data) if joined is not None else []


def typing_notices(resp: SyncResponse, room_id: str) -> list[list[str]]:
    """The user lists of the m.typing events in `resp` for the room, in order."""
    return [list(e.users) for e in ephemeral(resp, room_id) if isinstance(e, TypingNoticeEvent)]


def receipts(resps: list[SyncResponse], room_id: str) -> list[Receipt]:
    """Every receipt of the m.receipt events in `resps` for the room."""
    return [
        r
        for resp in resps
        for e in ephemeral(resp, room_id)
        if isinstance(e, ReceiptEvent)
        for r in e.receipts
    ]


def texts(events) -> list[tuple[str, str, str]]:
    """(sender, body, event_id) of the text messages among `events`, in order."""
    return [(e.sender, e.body, e.event_id) for e in events if isinstance(e, RoomMessageText)]


async def send_text(client: AsyncClient, room_id: str, body: str, tx_id: str | None = None) -> str:
    resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body}, tx_id=tx_id)
    assert isinstance(resp, RoomSendResponse), f"{client.user_id}: sending {body!r} failed: {resp!r}"
    assert resp.event_id.startswith("$"), resp
    return resp.event_id


def test_two_users_chat_in_a_private_room(hearth, backend):
    alice_id = f"@alice:{hearth.server_name}"
    bob_id = f"@bob:{hearth.server_name}"
    alias = f"#{ALIAS_LOCALPART}:{hearth.server_name}"
    assert hearth.env["CONDUIT_DATABASE_BACKEND"] == backend

    async def scenario():
        alice = await register(hearth, "alice")
        bob = await register(hearth, "bob")
        try:
            assert (alice.user_id, bob.user_id) == (alice_id, bob_id)
            alice_since = await initial_sync(alice)
            bob_since = await initial_sync(bob)
            sent: list[tuple[str, str, str]] = []  # (sender, body, event_id), in sending order

            # ---- alice creates a private room with a name and an alias, and invites bob.
            created = await alice.room_create(
                visibility=RoomVisibility.private,
                alias=ALIAS_LOCALPART,
                name=ROOM_NAME,
                topic=ROOM_TOPIC,
                preset=RoomPreset.private_chat,
            )
            assert isinstance(created, RoomCreateResponse), f"room_create failed: {created!r}"
            room_id = created.room_id
            assert room_id.startswith("!"), created
            invited = await alice.room_invite(room_id, bob_id)
            assert isinstance(invited, RoomInviteResponse), f"room_invite failed: {invited!r}"

            # ---- bob sees the invite through sync, with the room's name, and joins.
            bob_syncs, bob_since = await sync_until(
                bob, bob_since, lambda r: room_id in r.rooms.invite, "invite"
            )
            invite_state = bob_syncs[-1].rooms.invite[room_id].invite_state
            invites = [
                e for e in invite_state if isinstance(e, InviteMemberEvent) and e.state_key == bob_id
            ]
            assert [(e.sender, e.membership) for e in invites] == [(alice_id, "invite")], invite_state
            assert room_id in bob.invited_rooms, bob.invited_rooms
            shown = bob.invited_rooms[room_id].name
            assert shown == ROOM_NAME, f"the invite shows the room's name as {shown!r}: {invite_state}"
            joined = await bob.join(room_id)
            assert isinstance(joined, JoinResponse), f"bob's join failed: {joined!r}"
            assert joined.room_id == room_id

            # alice sees bob join (and her own room in her timeline).
            def bob_joined(resp: SyncResponse) -> bool:
                return any(
                    isinstance(e, RoomMemberEvent) and e.state_key == bob_id and e.membership == "join"
                    for e in timeline(resp, room_id)
                )

            _, alice_since = await sync_until(alice, alice_since, bob_joined, "join of bob")
            assert alice.rooms[room_id].display_name == ROOM_NAME
            assert alice.rooms[room_id].topic == ROOM_TOPIC
            assert set(alice.rooms[room_id].users) == {alice_id, bob_id}

            # bob's own sync now has the room under join, no longer under invite.
            bob_syncs, bob_since = await sync_until(bob, bob_since, lambda r: room_id in r.rooms.join, "join")
            assert room_id not in bob_syncs[-1].rooms.invite, bob_syncs[-1]
            assert room_id in bob.rooms and room_id not in bob.invited_rooms

            # ---- they exchange messages; each sees the other's through sync (since token).
            hi_bob = await send_text(alice, room_id, "Hi Bob!")
            sent.append((alice_id, "Hi Bob!", hi_bob))
            # The same transaction id again (a client's retry) is the same event, not a new one.
            tx_id = "hearth-e2e-retry-1"
            first = await send_text(bob, room_id, "Hi Alice!", tx_id=tx_id)
            again = await send_text(bob, room_id, "Hi Alice!", tx_id=tx_id)
            assert again == first, f"retrying transaction {tx_id} created a second event: {first} vs {again}"
            sent.append((bob_id, "Hi Alice!", first))

            def has_event(event_id: str) -> Callable[[SyncResponse], bool]:
                return lambda resp: any(e.event_id == event_id for e in timeline(resp, room_id))

            bob_syncs, bob_since = await sync_until(bob, bob_since, has_event(hi_bob), "message of alice's")
            bob_saw = [t for r in bob_syncs for t in texts(timeline(r, room_id))]
            assert (alice_id, "Hi Bob!", hi_bob) in bob_saw, bob_saw
            alice_syncs, alice_since = await sync_until(alice, alice_since, has_event(first), "message of bob's")
            alice_saw = [t for r in alice_syncs for t in texts(timeline(r, room_id))]
            assert (bob_id, "Hi Alice!", first) in alice_saw, alice_saw
            assert [t for t in alice_saw if t[2] == first] == [(bob_id, "Hi Alice!", first)], alice_saw
            # Catch bob up on everything so far (his own message included).
            caught_up = await bob.sync(timeout=0, since=bob_since)
            assert isinstance(caught_up, SyncResponse), caught_up
            bob_since = caught_up.next_batch

            # ---- the long poll wakes: bob waits, alice speaks, bob's sync returns with it.
            waiting = asyncio.create_task(bob.sync(timeout=LONG_POLL_MS, since=bob_since))
            await asyncio.sleep(1.0)
            assert not waiting.done(), (
                f"bob's sync with timeout={LONG_POLL_MS} returned before anything happened: "
                f"{waiting.result()!r}"
            )
            wake_up = await send_text(alice, room_id, "Wake up, Bob")
            sent.append((alice_id, "Wake up, Bob", wake_up))
            woken = await waiting
            assert isinstance(woken, SyncResponse), f"bob's long-polling sync failed: {woken!r}"
            assert (alice_id, "Wake up, Bob", wake_up) in texts(timeline(woken, room_id)), (
                f"bob's long-polling sync returned without alice's message: {woken!r}"
            )
            bob_since = woken.next_batch

            # ---- typing: alice starts typing, bob sees it; she stops, bob sees nobody typing.
            typing = await alice.room_typing(room_id, True, timeout=TYPING_TIMEOUT_MS)
            assert isinstance(typing, RoomTypingResponse), f"alice's typing notice failed: {typing!r}"

            def typing_now(users: list[str]) -> Callable[[SyncResponse], bool]:
                # The last m.typing of a response is the room's current typing list.
                return lambda resp: typing_notices(resp, room_id)[-1:] == [users]

            bob_syncs, bob_since = await sync_until(
                bob, bob_since, typing_now([alice_id]), "typing notice of alice's"
            )
            assert bob.rooms[room_id].typing_users == [alice_id], (
                f"bob's client shows {bob.rooms[room_id].typing_users} typing: "
                f"{[typing_notices(r, room_id) for r in bob_syncs]}"
            )
            stopped = await alice.room_typing(room_id, False)
            assert isinstance(stopped, RoomTypingResponse), f"alice's stop-typing notice failed: {stopped!r}"
            bob_syncs, bob_since = await sync_until(bob, bob_since, typing_now([]), "end of alice's typing")
            assert bob.rooms[room_id].typing_users == [], (
                f"bob's client still shows {bob.rooms[room_id].typing_users} typing: "
                f"{[typing_notices(r, room_id) for r in bob_syncs]}"
            )

            # ---- receipts and read markers: bob reads alice's latest message.
            private = await bob.update_receipt_marker(room_id, wake_up, ReceiptType.read_private)
            assert isinstance(private, UpdateReceiptMarkerResponse), f"bob's private receipt failed: {private!r}"
            marked = await bob.room_read_markers(room_id, fully_read_event=wake_up, read_event=wake_up)
            assert isinstance(marked, RoomReadMarkersResponse), f"bob's read markers failed: {marked!r}"

            def bob_read(resp: SyncResponse) -> bool:
                return any(
                    (r.user_id, r.receipt_type, r.event_id) == (bob_id, "m.read", wake_up)
                    for r in receipts([resp], room_id)
                )

            alice_syncs, alice_since = await sync_until(alice, alice_since, bob_read, "read receipt of bob's")
            alice_got = receipts(alice_syncs, room_id)
            # The private receipt was set before the public one, so these syncs cover it too.
            assert [r for r in alice_got if r.receipt_type == "m.read.private"] == [], (
                f"alice was shown a private receipt: {alice_got}"
            )
            shown = alice.rooms[room_id].read_receipts.get(bob_id)
            assert shown is not None and (shown.event_id, shown.receipt_type) == (wake_up, "m.read"), (
                f"alice's client has bob's read receipt as {shown!r}: {alice_got}"
            )

            # bob's own sync: both his receipts, and m.fully_read as the room's account data.
            def fully_read(resp: SyncResponse) -> bool:
                return any(
                    isinstance(e, FullyReadEvent) and e.event_id == wake_up
                    for e in room_account_data(resp, room_id)
                )

            bob_syncs, bob_since = await sync_until(bob, bob_since, fully_read, "m.fully_read of bob's")
            assert bob.rooms[room_id].fully_read_marker == wake_up, bob.rooms[room_id].fully_read_marker
            bob_got = {(r.user_id, r.receipt_type, r.event_id) for r in receipts(bob_syncs, room_id)}
            assert {(bob_id, "m.read", wake_up), (bob_id, "m.read.private", wake_up)} <= bob_got, (
                f"bob's sync shows his receipts as {bob_got}"
            )
            # The initial sync of a new device of bob's carries the marker and his receipts too.
            bob_phone = AsyncClient(hearth.url, "bob")
            try:
                logged_in = await bob_phone.login(PASSWORD, device_name="Hearth e2e chat: bob's phone")
                assert isinstance(logged_in, LoginResponse), f"bob's second login failed: {logged_in!r}"
                fresh = await bob_phone.sync(timeout=0)
                assert isinstance(fresh, SyncResponse), f"initial sync of bob's phone failed: {fresh!r}"
                assert fully_read(fresh), (
                    f"bob's initial sync lacks m.fully_read: {room_account_data(fresh, room_id)}"
                )
                assert bob_phone.rooms[room_id].fully_read_marker == wake_up
                fresh_got = {(r.user_id, r.receipt_type, r.event_id) for r in receipts([fresh], room_id)}
                assert {(bob_id, "m.read", wake_up), (bob_id, "m.read.private", wake_up)} <= fresh_got, (
                    f"bob's initial sync shows his receipts as {fresh_got}"
                )
            finally:
                await bob_phone.close()

            # ---- history: 30 more messages, paged back 10 at a time, exactly reversed.
            for i in range(30):
                body = f"history {i:02d}"
                sent.append((alice_id, body, await send_text(alice, room_id, body)))
            alice_syncs, alice_since = await sync_until(
                alice, alice_since, has_event(sent[-1][2]), "last history message"
            )

            pages: list[list] = []
            token = alice_since
            for _ in range(50):
                page = await alice.room_messages(room_id, start=token, limit=10)
                assert isinstance(page, RoomMessagesResponse), f"room_messages from {token} failed: {page!r}"
                assert len(page.chunk) <= 10, f"limit=10 but the page has {len(page.chunk)} events"
                pages.append(page.chunk)
                if not page.chunk or page.end is None:
                    break
                assert page.end != token, f"pagination from {token} did not move: {page!r}"
                token = page.end
            else:
                raise AssertionError(f"/messages still not at the room's start after {len(pages)} pages")
            history = [e for chunk in pages for e in chunk]
            ids = [e.event_id for e in history]
            assert len(ids) == len(set(ids)), f"an event appears twice in the paginated history: {ids}"
            assert isinstance(history[-1], RoomCreateEvent), (
                f"paging back did not end at the room's m.room.create but at {history[-1]!r}"
            )
            assert texts(history) == list(reversed(sent)), (
                "the messages paged back are not exactly the messages sent, newest first:\n"
                f"got      {[b for _, b, _ in texts(history)]}\nexpected {[b for _, b, _ in reversed(sent)]}"
            )
            assert sum(1 for chunk in pages if chunk) >= 4, [len(c) for c in pages]

            # ---- the alias resolves to the room, for both.
            for client in (alice, bob):
                resolved = await client.room_resolve_alias(alias)
                assert isinstance(resolved, RoomResolveAliasResponse), f"resolving {alias} failed: {resolved!r}"
                assert resolved.room_id == room_id, resolved
                assert resolved.room_alias == alias

            # ---- bob leaves; he no longer may speak in the room.
            left = await bob.room_leave(room_id)
            assert isinstance(left, RoomLeaveResponse), f"bob's leave failed: {left!r}"
            bob_syncs, bob_since = await sync_until(bob, bob_since, lambda r: room_id in r.rooms.leave, "leave")
            assert room_id not in bob_syncs[-1].rooms.join, bob_syncs[-1]

            def bob_left(resp: SyncResponse) -> bool:
                return any(
                    isinstance(e, RoomMemberEvent) and e.state_key == bob_id and e.membership == "leave"
                    for e in timeline(resp, room_id)
                )

            _, alice_since = await sync_until(alice, alice_since, bob_left, "leave of bob")
            assert set(alice.rooms[room_id].users) == {alice_id}

            refused = await bob.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": "Am I still here?"}
            )
            assert isinstance(refused, RoomSendError), f"bob sent into a room he left: {refused!r}"
            assert refused.status_code == "M_FORBIDDEN", refused
            assert refused.transport_response.status == 403, refused

            # The refused message is nowhere in the room.
            now = await alice.sync(timeout=0, since=alice_since)
            assert isinstance(now, SyncResponse), now
            assert texts(timeline(now, room_id)) == [], now
            latest = await alice.room_messages(room_id, start=now.next_batch, limit=5)
            assert isinstance(latest, RoomMessagesResponse), latest
            assert "Am I still here?" not in [b for _, b, _ in texts(latest.chunk)], latest.chunk
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())
