"""Nothing acknowledged is lost across servers: Hearth killed with SIGKILL and restarted.

* Hearth's user sends messages; right after the last one is acknowledged, Hearth is
  killed. After the restart every message reaches Synapse, in order: each was queued for
  Synapse in the database (or is still ahead of the sender's persisted position).
* Synapse's user sends messages while Hearth is down. After the restart, Hearth's next
  message tells Synapse that Hearth is back; Synapse sends what it held back (in catch-up
  it sends only the newest event) and Hearth fetches the gap with `get_missing_events`:
  every message arrives, in order.

Nothing here asserts on time; every wait is a poll with a deadline.
"""

from __future__ import annotations

import pytest

from interop import Server, User, register_on_hearth, register_on_synapse
from test_synapse_rooms import bodies, joined, q, send, wait_for

MESSAGES = 12


@pytest.fixture(scope="module")
def hearth_user(hearth: Server) -> User:
    return register_on_hearth(hearth, "kit")


@pytest.fixture(scope="module")
def synapse_user(synapse: Server) -> User:
    return register_on_synapse(synapse, "syd")


@pytest.fixture(scope="module")
def room(hearth: Server, synapse: Server, hearth_user: User, synapse_user: User) -> str:
    room = hearth.call(
        "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=hearth_user.access_token
    )["room_id"]
    synapse.call(
        "POST",
        f"/_matrix/client/v3/join/{q(room)}?via={q(hearth.server_name)}&server_name={q(hearth.server_name)}",
        {},
        token=synapse_user.access_token,
    )
    both = {hearth_user.user_id, synapse_user.user_id}
    wait_for("Synapse's join on Hearth", lambda: joined(hearth, hearth_user, room) == both)
    return room


def test_messages_acknowledged_before_a_kill_reach_synapse(hearth: Server, synapse: Server, hearth_user, synapse_user, room):
    sent = [f"acknowledged {i}" for i in range(MESSAGES)]
    for body in sent:
        send(hearth, hearth_user, room, body)
    hearth.kill()
    hearth.start()
    wait_for("every acknowledged message on Synapse, in order", lambda: bodies(synapse, synapse_user, room)[-MESSAGES:] == sent)


def test_messages_sent_while_hearth_was_down_arrive_in_order(
    hearth: Server, synapse: Server, hearth_user, synapse_user, room
):
    hearth.kill()
    sent = [f"while down {i}" for i in range(MESSAGES)]
    for body in sent:
        send(synapse, synapse_user, room, body)
    hearth.start()
    send(hearth, hearth_user, room, "back again")
    wait_for(
        "every message sent while Hearth was down, in order",
        lambda: [b for b in bodies(hearth, hearth_user, room) if b.startswith("while down")] == sent,
    )
