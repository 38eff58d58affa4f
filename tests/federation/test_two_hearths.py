"""Two Hearth processes federating over TLS on loopback, one of them killed with SIGKILL.

* The receiving Hearth is killed while the other keeps sending; after its restart, every
  message arrives, in order: the sender kept them in its queue in the database and
  retried (at once when the restarted server sends something, else after its backoff).
* The sending Hearth is killed right after its user's last acknowledged message; after
  its restart, every message arrives, in order: each was queued (or still ahead of the
  sender's persisted stream position) before the send was acknowledged.

Nothing here asserts on time; every wait is a poll with a deadline.
"""

from __future__ import annotations

import pytest

from interop import Server, User, register_on_hearth, start_hearth
from test_synapse_rooms import bodies, joined, q, send, wait_for

MESSAGES = 12


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, pki):
    started = []
    try:
        for kind in ("hearth-a", "hearth-b"):
            started.append(start_hearth(tmp_path_factory.mktemp(kind), pki, kind=kind))
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def users(pair) -> tuple[User, User]:
    a, b = pair
    return register_on_hearth(a, "ada"), register_on_hearth(b, "ben")


@pytest.fixture(scope="module")
def room(pair, users) -> str:
    (a, b), (ada, ben) = pair, users
    room = a.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=ada.access_token)["room_id"]
    b.call("POST", f"/_matrix/client/v3/join/{q(room)}?via={q(a.server_name)}", {}, token=ben.access_token)
    wait_for("ben's join on ada's server", lambda: joined(a, ada, room) == {ada.user_id, ben.user_id})
    return room


def test_the_receiver_killed_while_the_other_sends(pair, users, room):
    (a, b), (ada, ben) = pair, users
    b.kill()
    sent = [f"while ben's server was down {i}" for i in range(MESSAGES)]
    for body in sent:
        send(a, ada, room, body)
    b.start()
    send(b, ben, room, "ben's server is back")
    wait_for(
        "every message sent while ben's server was down, in order",
        lambda: [m for m in bodies(b, ben, room) if m.startswith("while ben's")] == sent,
    )


def test_the_sender_killed_after_acknowledging(pair, users, room):
    (a, b), (ada, ben) = pair, users
    sent = [f"acknowledged then killed {i}" for i in range(MESSAGES)]
    for body in sent:
        send(a, ada, room, body)
    a.kill()
    a.start()
    wait_for(
        "every acknowledged message on ben's server, in order",
        lambda: [m for m in bodies(b, ben, room) if m.startswith("acknowledged then")] == sent,
    )
