"""A crash of the Hearth process loses no acknowledged message.

On each storage engine, and with both durability settings (the default
`database_fsync = true`, and `HEARTH_DATABASE_FSYNC=false`, whose promise is that a
crash of Hearth, though not of the machine, loses nothing acknowledged), the test:

1. registers a user and creates a room;
2. fires a burst of messages from several concurrent senders (raw HTTP, one request in
   flight per sender), and SIGKILLs the server while they are in flight, once about a
   hundred have been acknowledged; every event_id answered with 200 is recorded;
3. restarts the server on the same data directory with the same environment, logs in
   again, sends one more message, and pages /messages backwards to the room's start;
4. requires every acknowledged event (with its body) in the history, at most one
   unacknowledged message per sender (the one in flight when the server died), each
   sender's messages in the order it sent them, and the post-restart message last.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import aiohttp
import pytest
from nio import AsyncClient
from nio.api import RoomVisibility
from nio.responses import (
    LoginResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
)

PASSWORD = "correct horse battery staple"
SENDERS = 4
SENDS_PER_SENDER = 200
KILL_AFTER_ACKS = 100
REQUEST_TIMEOUT_S = 20


@pytest.mark.parametrize(
    "hearth_extra_env",
    [{}, {"HEARTH_DATABASE_FSYNC": "false"}],
    ids=["fsync-default", "fsync-false"],
)
@pytest.mark.parametrize("backend", ["rocksdb", "sqlite"])
def test_sigkill_during_send_burst_loses_no_acknowledged_message(hearth, backend, hearth_extra_env):
    expect_fsync = "false" if hearth_extra_env.get("HEARTH_DATABASE_FSYNC") == "false" else "true"
    # The setting under test is the one in effect: ask the binary, with the server's env.
    shown = subprocess.run(
        [str(hearth.binary), "config"], env=hearth.env, capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert f'database_backend = "{backend}"' in shown.stdout, shown.stdout
    assert f"database_fsync = {expect_fsync}" in shown.stdout, shown.stdout

    async def setup() -> tuple[str, str]:
        client = AsyncClient(hearth.url, "crash")
        try:
            registered = await client.register_with_token(
                "crash", PASSWORD, hearth.registration_token, device_name="Hearth e2e: before the crash"
            )
            assert isinstance(registered, RegisterResponse), f"registration failed: {registered!r}"
            created = await client.room_create(visibility=RoomVisibility.private, name="Crash test")
            assert isinstance(created, RoomCreateResponse), f"room_create failed: {created!r}"
            return created.room_id, registered.access_token
        finally:
            await client.close()

    room_id, token = asyncio.run(setup())

    # ---- the burst, and the SIGKILL in the middle of it.
    acked: dict[str, tuple[int, int]] = {}  # event_id -> (sender, sequence number)
    unexpected: list[str] = []  # non-200 answers before the crash
    broken: list[str] = []  # requests cut by the crash

    async def burst() -> None:
        enough_acked = asyncio.Event()
        killed = False
        url = f"{hearth.url}/_matrix/client/v3/rooms/{room_id}/send/m.room.message"
        headers = {"Authorization": f"Bearer {token}"}
        run = uuid.uuid4().hex[:8]

        async def sender(n: int) -> None:
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
                for i in range(SENDS_PER_SENDER):
                    body = {"msgtype": "m.text", "body": f"sender {n} message {i}"}
                    try:
                        async with session.put(f"{url}/burst-{run}-{n}-{i}", json=body) as resp:
                            answer = await resp.json(content_type=None)
                            status = resp.status
                    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
                        if not killed:
                            unexpected.append(f"sender {n} message {i}: {e!r} before the crash")
                        broken.append(f"sender {n} message {i}: {e!r}")
                        return
                    if status != 200:
                        unexpected.append(f"sender {n} message {i}: HTTP {status} {answer}")
                        return
                    event_id = answer.get("event_id")
                    assert isinstance(event_id, str) and event_id.startswith("$"), answer
                    acked[event_id] = (n, i)
                    if len(acked) >= KILL_AFTER_ACKS:
                        enough_acked.set()

        tasks = [asyncio.create_task(sender(n)) for n in range(SENDERS)]
        waiting = asyncio.create_task(enough_acked.wait())
        await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
        assert enough_acked.is_set(), f"a sender stopped before {KILL_AFTER_ACKS} acks: {unexpected}"
        killed = True
        hearth.crash()  # SIGKILL, then reap: the server gets no chance to flush anything
        await asyncio.gather(*tasks)
        waiting.cancel()

    asyncio.run(burst())
    assert not unexpected, f"sends failed before the crash: {unexpected}"
    assert len(acked) >= KILL_AFTER_ACKS
    assert len(acked) < SENDERS * SENDS_PER_SENDER, "every send completed: the crash came too late to test anything"
    assert broken, "no sender noticed the crash"

    # ---- restart on the same data directory, port and environment.
    hearth.start()

    async def after_restart() -> None:
        client = AsyncClient(hearth.url, "crash")
        try:
            login = await client.login(PASSWORD, device_name="Hearth e2e: after the crash")
            assert isinstance(login, LoginResponse), f"login after the restart failed: {login!r}"
            synced = await client.sync(timeout=0, sync_filter={"room": {"timeline": {"limit": 1}}})
            assert isinstance(synced, SyncResponse), f"sync after the restart failed: {synced!r}"
            assert room_id in synced.rooms.join, f"the room is gone after the restart: {synced!r}"
            # The server takes new writes after the crash, and orders them after the old ones.
            after = await client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": "after the crash"}
            )
            assert isinstance(after, RoomSendResponse), f"send after the restart failed: {after!r}"
            since = await client.sync(timeout=0, since=synced.next_batch)
            assert isinstance(since, SyncResponse), since

            history = []
            token = since.next_batch
            for _ in range(200):
                page = await client.room_messages(room_id, start=token, limit=100)
                assert isinstance(page, RoomMessagesResponse), f"room_messages from {token} failed: {page!r}"
                history.extend(page.chunk)
                if not page.chunk or page.end is None:
                    break
                token = page.end
            else:
                raise AssertionError("/messages did not reach the room's start")
            assert history and history[-1].source.get("type") == "m.room.create", (
                f"paging back did not end at m.room.create: {history[-1:]!r}"
            )
            messages = [e for e in history if e.source.get("type") == "m.room.message"]
            ids = [e.event_id for e in messages]
            assert len(ids) == len(set(ids)), "a message appears twice in the history"
            assert messages[0].event_id == after.event_id, (
                f"the newest message is {messages[0]!r}, not the one sent after the restart"
            )
            found = {e.event_id: e.source["content"].get("body") for e in messages[1:]}

            lost = sorted(set(acked) - set(found), key=lambda e: acked[e])
            assert not lost, (
                f"{len(lost)} of {len(acked)} acknowledged messages are missing after the crash "
                f"(backend={backend}, fsync={expect_fsync}): "
                + ", ".join(f"{e} (sender {acked[e][0]} message {acked[e][1]})" for e in lost[:20])
            )
            assert len(found) >= len(acked), (len(found), len(acked))
            for event_id, (n, i) in acked.items():
                assert found[event_id] == f"sender {n} message {i}", (event_id, found[event_id])
            # Only the request each sender had in flight may have landed unacknowledged.
            extra = [body for e, body in found.items() if e not in acked]
            assert len(extra) <= SENDERS, f"more unacknowledged messages than senders: {extra}"
            # A sender sends message i+1 only once i is acknowledged: the history keeps that order.
            oldest_first = [found[e] for e in reversed(list(found))]
            for n in range(SENDERS):
                mine = [int(b.rsplit(" ", 1)[1]) for b in oldest_first if b.startswith(f"sender {n} ")]
                assert mine == list(range(len(mine))), f"sender {n}'s messages out of order or gapped: {mine}"
        finally:
            await client.close()

    asyncio.run(after_restart())
