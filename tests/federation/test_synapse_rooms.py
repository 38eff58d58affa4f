"""Rooms shared by Hearth and a real Synapse over TLS on loopback.

For room versions 10, 11 and 12, with the room created on either side: the other
server's user joins by room id through the room's server (`make_join` / `send_join`),
pages in the history from before the join (`backfill`), messages go both ways in order (transactions through each server's sender, each PDU's
signatures, hashes and auth checked on receipt), and a leave reaches the room's server.
Nothing here asserts on time; every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from interop import HttpError, Server, User, register_on_hearth, register_on_synapse

ARRIVAL_S = 60


@pytest.fixture(scope="module")
def hearth_user(hearth: Server) -> User:
    return register_on_hearth(hearth, "rhea")


@pytest.fixture(scope="module")
def synapse_user(synapse: Server) -> User:
    return register_on_synapse(synapse, "sid")


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def wait_for(what: str, check, limit: float = ARRIVAL_S):
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            found = check()
        except HttpError as e:
            found, last = None, e
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened (last error: {last})")


def bodies(server: Server, user: User, room: str) -> list[str]:
    page = server.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=100", token=user.access_token)
    found = [e["content"].get("body") for e in page["chunk"] if e["type"] == "m.room.message"]
    return list(reversed(found))


def joined(server: Server, user: User, room: str) -> set[str]:
    answer = server.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/joined_members", token=user.access_token)
    return set(answer["joined"])


def joined_member_event(server: Server, user: User, room: str) -> str:
    path = f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(user.user_id)}?format=event"
    return server.call("GET", path, token=user.access_token)["event_id"]


def partial_joins(synapse: Server) -> str:
    """Synapse's log lines for joins it made with partial state."""
    return "\n".join(line for line in synapse.logs().splitlines() if "(partial_state: True)" in line)


def send(server: Server, user: User, room: str, body: str) -> str:
    txn = f"t{time.monotonic_ns()}"
    answer = server.call(
        "PUT",
        f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": body},
        token=user.access_token,
    )
    return answer["event_id"]


@pytest.mark.parametrize("version", ["10", "11", "12"])
@pytest.mark.parametrize("home", ["hearth", "synapse"])
def test_join_messages_both_ways_and_leave(hearth: Server, synapse: Server, hearth_user, synapse_user, home, version):
    if home == "hearth":
        owner, owner_user, guest, guest_user = hearth, hearth_user, synapse, synapse_user
    else:
        owner, owner_user, guest, guest_user = synapse, synapse_user, hearth, hearth_user
    room = owner.call(
        "POST",
        "/_matrix/client/v3/createRoom",
        {"preset": "public_chat", "room_version": version, "name": f"v{version} on {home}"},
        token=owner_user.access_token,
    )["room_id"]
    send(owner, owner_user, room, "before the guest came")

    joined_answer = guest.call(
        "POST",
        f"/_matrix/client/v3/join/{q(room)}?via={q(owner.server_name)}&server_name={q(owner.server_name)}",
        {},
        token=guest_user.access_token,
    )
    assert joined_answer["room_id"] == room
    both = {owner_user.user_id, guest_user.user_id}
    # Synapse asks for a partial-state join (`omit_members`), which Hearth grants; Synapse's
    # joined_members waits until it has fetched the full state from Hearth.
    assert joined(guest, guest_user, room) == both
    if home == "hearth":
        assert f"event_id={joined_member_event(guest, guest_user, room)}" in partial_joins(guest)
    wait_for("the guest's join on the room's server", lambda: joined(owner, owner_user, room) == both)
    name = guest.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.name/", token=guest_user.access_token)
    assert name["name"] == f"v{version} on {home}"

    # History from before the join: backfilled from the room's server as the guest pages.
    wait_for(
        "the history from before the join on the guest's server",
        lambda: "before the guest came" in bodies(guest, guest_user, room),
    )

    send(guest, guest_user, room, "one from the guest")
    send(guest, guest_user, room, "two from the guest")
    wait_for(
        "the guest's messages, in order, on the room's server",
        lambda: bodies(owner, owner_user, room)[-2:] == ["one from the guest", "two from the guest"],
    )
    send(owner, owner_user, room, "reply from the owner")
    wait_for(
        "the owner's reply on the guest's server",
        lambda: bodies(guest, guest_user, room)[-1:] == ["reply from the owner"],
    )

    guest.call("POST", f"/_matrix/client/v3/rooms/{q(room)}/leave", {}, token=guest_user.access_token)
    wait_for("the guest's leave on the room's server", lambda: joined(owner, owner_user, room) == {owner_user.user_id})


def invited_rooms(server: Server, user: User) -> dict:
    # A filter of its own each time: Synapse answers a repeated initial sync from a cache.
    fresh = q(json.dumps({"room": {"timeline": {"limit": 1 + time.monotonic_ns() % 1000}}}))
    path = f"/_matrix/client/v3/sync?timeout=0&filter={fresh}"
    return server.call("GET", path, token=user.access_token).get("rooms", {}).get("invite", {})


def membership(server: Server, user: User, room: str, of: str) -> str | None:
    path = f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(of)}"
    return server.call("GET", path, token=user.access_token).get("membership")


@pytest.mark.parametrize("home", ["hearth", "synapse"])
def test_invite_accepted_and_another_rejected(hearth: Server, synapse: Server, home):
    """A private room's owner invites two users of the other server: one accepts (a join
    through the inviter's server, no `via`) and talks, the other rejects (a leave sent
    through the inviter's server)."""
    if home == "hearth":
        owner, guest = hearth, synapse
        owner_user = register_on_hearth(hearth, "inviter-h")
        accepter, rejecter = register_on_synapse(synapse, "accepter-s"), register_on_synapse(synapse, "rejecter-s")
    else:
        owner, guest = synapse, hearth
        owner_user = register_on_synapse(synapse, "inviter-s")
        accepter, rejecter = register_on_hearth(hearth, "accepter-h"), register_on_hearth(hearth, "rejecter-h")
    room = owner.call(
        "POST",
        "/_matrix/client/v3/createRoom",
        {"preset": "private_chat", "name": f"invites on {home}"},
        token=owner_user.access_token,
    )["room_id"]
    for user in (accepter, rejecter):
        owner.call("POST", f"/_matrix/client/v3/rooms/{q(room)}/invite", {"user_id": user.user_id}, token=owner_user.access_token)
    for user in (accepter, rejecter):
        invite = wait_for("the invite on the invitee's server", lambda: invited_rooms(guest, user).get(room))
        names = [e["content"].get("name") for e in invite["invite_state"]["events"] if e["type"] == "m.room.name"]
        assert names == [f"invites on {home}"]

    guest.call("POST", f"/_matrix/client/v3/join/{q(room)}", {}, token=accepter.access_token)
    wait_for("the accepted invite's join", lambda: joined(owner, owner_user, room) == {owner_user.user_id, accepter.user_id})
    send(guest, accepter, room, "thanks for having me")
    wait_for("the new member's message", lambda: bodies(owner, owner_user, room)[-1:] == ["thanks for having me"])

    guest.call("POST", f"/_matrix/client/v3/rooms/{q(room)}/leave", {}, token=rejecter.access_token)
    wait_for("the rejection on the room's server", lambda: membership(owner, owner_user, room, rejecter.user_id) == "leave")
    assert room not in invited_rooms(guest, rejecter)


def upload(server: Server, user: User, data: bytes, content_type: str) -> str:
    req = urllib.request.Request(server.url + "/_matrix/media/v3/upload?filename=photo.jpg", data=data, method="POST")
    req.add_header("Content-Type", content_type)
    req.add_header("Authorization", f"Bearer {user.access_token}")
    with urllib.request.urlopen(req, context=server.pki.ssl_context(), timeout=30) as resp:
        return json.loads(resp.read())["content_uri"]


def download(server: Server, user: User, mxc: str) -> tuple[int, bytes, str]:
    path = mxc.removeprefix("mxc://")
    req = urllib.request.Request(server.url + f"/_matrix/client/v1/media/download/{path}")
    req.add_header("Authorization", f"Bearer {user.access_token}")
    try:
        with urllib.request.urlopen(req, context=server.pki.ssl_context(), timeout=60) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), ""


@pytest.mark.parametrize("home", ["hearth", "synapse"])
def test_media_of_the_other_server_downloads_through_ones_own(hearth: Server, synapse: Server, hearth_user, synapse_user, home):
    """A file uploaded on one server is downloaded by the other's user through their own
    server, which fetches it over federation (authenticated media, multipart)."""
    data = bytes(range(256)) * 40
    if home == "hearth":
        mxc = upload(hearth, hearth_user, data, "image/jpeg")
        status, body, kind = download(synapse, synapse_user, mxc)
    else:
        mxc = upload(synapse, synapse_user, data, "image/jpeg")
        status, body, kind = download(hearth, hearth_user, mxc)
    assert (status, kind) == (200, "image/jpeg"), body[:200]
    assert body == data
