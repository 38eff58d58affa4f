"""A network partition between two servers sharing a room, with conflicting power-level and
membership changes made on both sides, then healed: both end with the same state, the one
the spec's state resolution (version 2) gives.

Each server is reached by the other through a `Relay` (its server name's port); cutting
both relays is the partition. The other server is also paused with SIGSTOP while the
home server makes its changes, and resumed before it makes its own: a peer that stops
answering mid-conversation must not wedge the home server's sender.

The room (version 11) starts with ada (home server, level 100) and ben (other server,
level 90); changing power levels needs 50. Then, cut off from each other:

* on the home server, ada demotes ben to 0, kicks dan (the other server's second user)
  and sets the topic;
* on the other server, ben kicks carl (the home server's second user), raises dan to 50
  and sets the topic.

Each side's changes are valid in its own fork. State resolution orders the power events
by their senders' power first, so ada's demotion of ben is applied before ben's changes,
which then fail the auth checks: ben ends at 0, dan kicked, carl still joined, ada's
topic. After the heal each side sends a message (joining the forks) and the test waits
until `/state` is the same on both and is that state. On a Hearth, `hearth admin
compare-state` says so too (and, during the partition, that the other server cannot be
reached).

Three pairs: two Hearths, Hearth home with Synapse, Synapse home with Hearth.

Also here, on the same relays: a join over a link that has gone very slow (the relay
holds every byte). The client gives up waiting and asks again; the second request waits
for the join already under way, so the room gets one join event, not two.

Nothing asserts on time: every wait is a poll with a deadline.
"""

from __future__ import annotations

import itertools
import sys
import threading
import urllib.error

import pytest

from interop import (
    Relay,
    Server,
    User,
    free_port,
    request,
    hearth_admin,
    register_on_hearth,
    register_on_synapse,
    start_hearth,
    start_synapse,
)
from test_synapse_rooms import bodies, joined, q, send, wait_for

# Long enough for a sender's backoff from the partition (Hearth doubles from 2 s) to end.
HEAL_S = 180.0
NAMES = itertools.count()


class Peer:
    def __init__(self, server: Server, relay: Relay):
        self.server, self.relay = server, relay

    @property
    def is_hearth(self) -> bool:
        return self.server.kind.startswith("hearth")

    def register(self, name: str) -> User:
        localpart = f"{name}{next(NAMES)}"
        if self.is_hearth:
            return register_on_hearth(self.server, localpart)
        return register_on_synapse(self.server, localpart)


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory, pki):
    started: list[Peer] = []
    try:
        for kind in ("hearth-a", "hearth-b", "synapse"):
            port = free_port()
            relay = Relay(port)
            data = tmp_path_factory.mktemp(kind)
            if kind == "synapse":
                server = start_synapse(data, pki, sys.executable, port=port, name_port=relay.port)
            else:
                server = start_hearth(data, pki, kind=kind, port=port, name_port=relay.port)
            started.append(Peer(server, relay))
        yield {p.server.kind: p for p in started}
    finally:
        for p in started:
            p.server.stop()
            p.relay.close()


def put_state(server: Server, user: User, room: str, kind: str, content: dict, state_key: str = "") -> str:
    path = f"/_matrix/client/v3/rooms/{q(room)}/state/{kind}/{q(state_key)}"
    return server.call("PUT", path, content, token=user.access_token)["event_id"]


def power_levels(server: Server, user: User, room: str) -> dict:
    return server.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.power_levels/", token=user.access_token)


def kick(server: Server, user: User, room: str, target: User) -> None:
    server.call("POST", f"/_matrix/client/v3/rooms/{q(room)}/kick", {"user_id": target.user_id}, token=user.access_token)


def state(server: Server, user: User, room: str) -> dict[tuple[str, str], dict]:
    events = server.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/state", token=user.access_token)
    return {(e["type"], e["state_key"]): e for e in events}


def ids(st: dict[tuple[str, str], dict]) -> dict[tuple[str, str], str]:
    return {k: e["event_id"] for k, e in st.items()}


@pytest.mark.parametrize(
    "home_kind,other_kind", [("hearth-a", "hearth-b"), ("hearth-a", "synapse"), ("synapse", "hearth-b")]
)
def test_a_partition_heals_into_the_same_resolved_state(peers, home_kind, other_kind):
    home, other = peers[home_kind], peers[other_kind]
    h, o = home.server, other.server
    ada, carl = home.register("ada"), home.register("carl")
    ben, dan = other.register("ben"), other.register("dan")

    room = h.call(
        "POST",
        "/_matrix/client/v3/createRoom",
        {
            "preset": "public_chat",
            "room_version": "11",
            "power_level_content_override": {
                "users": {ada.user_id: 100, ben.user_id: 90},
                "events": {"m.room.power_levels": 50},
            },
        },
        token=ada.access_token,
    )["room_id"]
    h.call("POST", f"/_matrix/client/v3/join/{q(room)}", {}, token=carl.access_token)
    for user in (ben, dan):
        o.call("POST", f"/_matrix/client/v3/join/{q(room)}?via={q(h.server_name)}", {}, token=user.access_token)
    everyone = {ada.user_id, ben.user_id, carl.user_id, dan.user_id}
    wait_for("all four joined on the home server", lambda: joined(h, ada, room) == everyone)
    wait_for("all four joined on the other server", lambda: joined(o, ben, room) == everyone)
    send(h, ada, room, "before the partition")
    wait_for("the last message before the partition on the other server", lambda: "before the partition" in bodies(o, ben, room))

    # The partition: the home server makes its changes while the other is paused.
    home.relay.cut()
    other.relay.cut()
    o.pause()
    try:
        pl = power_levels(h, ada, room)
        pl["users"][ben.user_id] = 0
        put_state(h, ada, room, "m.room.power_levels", pl)
        kick(h, ada, room, dan)
        put_state(h, ada, room, "m.room.topic", {"topic": "the home server's topic"})
        if home.is_hearth:
            said = hearth_admin(h, "compare-state", room, o.server_name)
            assert said.returncode != 0 and "Cannot reach" in said.stderr, said
    finally:
        o.resume()
    kick(o, ben, room, carl)
    pl = power_levels(o, ben, room)
    pl["users"][dan.user_id] = 50
    put_state(o, ben, room, "m.room.power_levels", pl)
    put_state(o, ben, room, "m.room.topic", {"topic": "the other server's topic"})
    assert joined(o, ben, room) == {ada.user_id, ben.user_id, dan.user_id}
    assert joined(h, ada, room) == {ada.user_id, ben.user_id, carl.user_id}

    # Healed: each side says something, which joins the two forks.
    home.relay.heal()
    other.relay.heal()
    send(h, ada, room, "after the partition, from the home server")
    send(o, ben, room, "after the partition, from the other server")
    after = {"after the partition, from the home server", "after the partition, from the other server"}
    for server, user in ((h, ada), (o, ben)):
        wait_for(
            f"both messages after the partition on {server.kind}",
            lambda: after <= set(bodies(server, user, room)),
            HEAL_S,
        )
    wait_for(
        "the same state on both servers",
        lambda: ids(state(h, ada, room)) == ids(state(o, ben, room)),
        HEAL_S,
    )

    resolved = state(h, ada, room)
    levels = resolved[("m.room.power_levels", "")]["content"]["users"]
    assert levels.get(ben.user_id, 0) == 0 and levels.get(dan.user_id, 0) == 0, levels
    assert resolved[("m.room.member", carl.user_id)]["content"]["membership"] == "join"
    assert resolved[("m.room.member", dan.user_id)]["content"]["membership"] == "leave"
    assert resolved[("m.room.topic", "")]["content"]["topic"] == "the home server's topic"
    assert joined(h, ada, room) == joined(o, ben, room) == {ada.user_id, ben.user_id, carl.user_id}

    for peer, remote in ((home, o), (other, h)):
        if peer.is_hearth:
            said = hearth_admin(peer.server, "compare-state", room, remote.server_name)
            assert said.returncode == 0 and said.stdout.startswith("identical:"), said.stdout + said.stderr


def test_a_join_asked_again_waits_for_the_one_under_way(peers):
    home, joiner = peers["hearth-a"], peers["hearth-b"]
    h, j = home.server, joiner.server
    ada, ben = home.register("ada"), joiner.register("ben")
    room = h.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=ada.access_token)["room_id"]
    url = f"{j.url}/_matrix/client/v3/join/{q(room)}?via={q(h.server_name)}"

    home.relay.hold()
    try:
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            request(j.pki.ssl_context(), "POST", url, {}, token=ben.access_token, timeout=2)
        second: dict = {}

        def ask_again() -> None:
            try:
                second["answer"] = request(j.pki.ssl_context(), "POST", url, {}, token=ben.access_token, timeout=120)
            except Exception as e:  # the assertion below reports it
                second["error"] = e

        asking = threading.Thread(target=ask_again)
        asking.start()
        wait_for(
            "the second /join waiting for the first",
            lambda: "a join asked again waits for the one under way" in j.logs(),
        )
    finally:
        home.relay.release()
    asking.join(timeout=150)
    assert second.get("answer", {}).get("room_id") == room, second

    wait_for("ben joined on ada's server", lambda: ben.user_id in joined(h, ada, room))
    page = h.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=100", token=ada.access_token)
    joins = [
        e for e in page["chunk"]
        if e["type"] == "m.room.member" and e["state_key"] == ben.user_id and e["content"]["membership"] == "join"
    ]
    assert len(joins) == 1, joins
