"""Hearth and a real Synapse (1.163.2) federating over TLS on loopback.

Each server has a user with a display name. Profile look-ups across the two servers go
over federation (`GET /_matrix/federation/v1/query/profile`, X-Matrix signed), so each one
proves that the asking server signed the request, that the answering server fetched the
asker's key document over TLS (trusting only the test CA) and accepted its signature, and
that the answer was understood. The key-notary checks prove each server accepted the
other's key document: both serve it again, signed by its origin, Hearth also adding its
own signature. Nothing here asserts on time; every wait is a poll with a deadline.
"""

from __future__ import annotations

import time
import urllib.parse

import pytest
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64

from interop import (
    Server,
    User,
    register_on_hearth,
    register_on_synapse,
    set_displayname,
)

HEARTH_DISPLAYNAME = "Hazel on Hearth"
SYNAPSE_DISPLAYNAME = "Sam on Synapse"


@pytest.fixture(scope="module")
def hearth_user(hearth: Server) -> User:
    user = register_on_hearth(hearth, "hazel")
    set_displayname(hearth, user, HEARTH_DISPLAYNAME)
    return user


@pytest.fixture(scope="module")
def synapse_user(synapse: Server) -> User:
    user = register_on_synapse(synapse, "sam")
    set_displayname(synapse, user, SYNAPSE_DISPLAYNAME)
    return user


def profile_path(user_id: str) -> str:
    return f"/_matrix/client/v3/profile/{urllib.parse.quote(user_id)}"


def own_key_document(server: Server) -> dict:
    doc = server.call("GET", "/_matrix/key/v2/server")
    assert doc["server_name"] == server.server_name, doc
    assert doc["verify_keys"], doc
    return doc


def verify_keys(doc: dict) -> dict:
    return {
        key_id: decode_verify_key_bytes(key_id, decode_base64(key["key"]))
        for key_id, key in doc["verify_keys"].items()
    }


def assert_signed_by(doc: dict, server: Server, keys: dict) -> None:
    """`doc` carries a signature of `server` under one of `keys`, and it verifies."""
    sigs = doc.get("signatures", {}).get(server.server_name, {})
    assert sigs, f"no signature of {server.server_name} on {doc}"
    for key_id in sigs:
        assert key_id in keys, f"{server.server_name} signed with unknown key {key_id}: {doc}"
        verify_signed_json(doc, server.server_name, keys[key_id])


def test_version_served_over_tls_with_the_test_ca(hearth: Server):
    version = hearth.call("GET", "/_matrix/federation/v1/version")
    assert version["server"]["name"], version


def test_synapse_user_sees_hearth_users_displayname(synapse: Server, hearth: Server, synapse_user, hearth_user):
    """Synapse → Hearth `query/profile`: Hearth verifies Synapse's X-Matrix signature with
    keys it fetches from Synapse over TLS."""
    profile = synapse.call("GET", profile_path(hearth_user.user_id), token=synapse_user.access_token)
    assert profile.get("displayname") == HEARTH_DISPLAYNAME, profile
    name = synapse.call("GET", profile_path(hearth_user.user_id) + "/displayname", token=synapse_user.access_token)
    assert name == {"displayname": HEARTH_DISPLAYNAME}, name


def test_hearth_user_sees_synapse_users_displayname(hearth: Server, synapse: Server, hearth_user, synapse_user):
    """Hearth → Synapse `query/profile`: Synapse verifies Hearth's X-Matrix signature with
    keys it fetches from Hearth over TLS."""
    profile = hearth.call("GET", profile_path(synapse_user.user_id), token=hearth_user.access_token)
    assert profile.get("displayname") == SYNAPSE_DISPLAYNAME, profile
    name = hearth.call("GET", profile_path(synapse_user.user_id) + "/displayname", token=hearth_user.access_token)
    assert name == {"displayname": SYNAPSE_DISPLAYNAME}, name


def notary_documents(notary: Server, origin: Server, via_post: bool) -> list[dict]:
    if via_post:
        answer = notary.call("POST", "/_matrix/key/v2/query", {"server_keys": {origin.server_name: {}}})
    else:
        answer = notary.call("GET", f"/_matrix/key/v2/query/{urllib.parse.quote(origin.server_name)}")
    return [d for d in answer["server_keys"] if d.get("server_name") == origin.server_name]


@pytest.mark.parametrize("via_post", [False, True], ids=["GET", "POST"])
def test_hearth_notary_serves_synapse_keys_signed_by_both(hearth: Server, synapse: Server, via_post: bool):
    synapse_keys = verify_keys(own_key_document(synapse))
    hearth_keys = verify_keys(own_key_document(hearth))
    docs = notary_documents(hearth, synapse, via_post)
    assert len(docs) == 1, docs
    doc = docs[0]
    assert set(synapse_keys) <= set(doc["verify_keys"]), doc
    assert_signed_by(doc, synapse, synapse_keys)
    assert_signed_by(doc, hearth, hearth_keys)


def test_synapse_notary_serves_hearth_keys_signed_by_hearth(hearth: Server, synapse: Server):
    """Synapse, as a notary, fetches Hearth's key document over TLS, checks it and serves it
    again: it accepted the document. It adds its own signature, as Hearth does.

    Synapse only goes to the origin on a cache miss for a query that names key ids (asked for
    all of a server's keys it serves what it has cached, possibly nothing), so the POST names
    Hearth's key ids; the GET then serves the cached document. Synapse 1.163 requires
    `minimum_valid_until_ts` on each named key (0: any validity will do)."""
    hearth_keys = verify_keys(own_key_document(hearth))
    synapse_keys = verify_keys(own_key_document(synapse))
    answer = synapse.call(
        "POST",
        "/_matrix/key/v2/query",
        {"server_keys": {hearth.server_name: {k: {"minimum_valid_until_ts": 0} for k in hearth_keys}}},
    )
    by_post = [d for d in answer["server_keys"] if d.get("server_name") == hearth.server_name]
    by_get = notary_documents(synapse, hearth, via_post=False)
    for docs in (by_post, by_get):
        assert len(docs) == 1, f"Synapse serves no single key document of {hearth.server_name}: {answer} / {by_get}"
        doc = docs[0]
        assert set(hearth_keys) <= set(doc["verify_keys"]), doc
        assert_signed_by(doc, hearth, hearth_keys)
        assert_signed_by(doc, synapse, synapse_keys)


def create_public_room(server: Server, user: User, alias_local: str, name: str) -> str:
    answer = server.call(
        "POST",
        "/_matrix/client/v3/createRoom",
        {"room_alias_name": alias_local, "visibility": "public", "name": name},
        token=user.access_token,
    )
    return answer["room_id"]


def alias_path(alias: str) -> str:
    return f"/_matrix/client/v3/directory/room/{urllib.parse.quote(alias)}"


def test_synapse_user_resolves_a_hearth_alias(hearth: Server, synapse: Server, hearth_user, synapse_user):
    """Synapse asks Hearth (`query/directory`) for an alias of Hearth's."""
    room_id = create_public_room(hearth, hearth_user, "hearth-lobby", "Hearth Lobby")
    answer = synapse.call("GET", alias_path(f"#hearth-lobby:{hearth.server_name}"), token=synapse_user.access_token)
    assert answer["room_id"] == room_id, answer
    assert hearth.server_name in answer["servers"], answer


def test_hearth_user_resolves_a_synapse_alias(hearth: Server, synapse: Server, hearth_user, synapse_user):
    """Hearth asks Synapse (`query/directory`, signed) for an alias of Synapse's."""
    room_id = create_public_room(synapse, synapse_user, "synapse-lobby", "Synapse Lobby")
    answer = hearth.call("GET", alias_path(f"#synapse-lobby:{synapse.server_name}"), token=hearth_user.access_token)
    assert answer["room_id"] == room_id, answer
    assert synapse.server_name in answer["servers"], answer


def public_room_names(server: Server, user: User, of: Server, term: str | None = None) -> set[str]:
    path = f"/_matrix/client/v3/publicRooms?server={urllib.parse.quote(of.server_name)}"
    if term is None:
        answer = server.call("GET", path, token=user.access_token)
    else:
        answer = server.call("POST", path, {"filter": {"generic_search_term": term}}, token=user.access_token)
    return {room.get("name") for room in answer["chunk"]}


def test_each_browses_the_others_public_rooms(hearth: Server, synapse: Server, hearth_user, synapse_user):
    """Each server's client lists the other's public directory over federation
    (`publicRooms`, signed both ways), with and without a search term."""
    create_public_room(hearth, hearth_user, "hearth-hall", "Hearth Hall")
    create_public_room(synapse, synapse_user, "synapse-hall", "Synapse Hall")
    # Synapse lists a new room once its background room statistics have caught up (and
    # caches directory pages briefly): wait for its own client to see it first.
    deadline = time.monotonic() + 60
    own_list = lambda: synapse.call("GET", "/_matrix/client/v3/publicRooms", token=synapse_user.access_token)
    while "Synapse Hall" not in {r.get("name") for r in own_list()["chunk"]}:
        assert time.monotonic() < deadline, "Synapse never listed its own new public room"
        time.sleep(0.5)
    deadline = time.monotonic() + 60
    while "Synapse Hall" not in public_room_names(hearth, hearth_user, synapse):
        assert time.monotonic() < deadline, "Hearth never saw Synapse's public room"
        time.sleep(0.5)
    assert public_room_names(hearth, hearth_user, synapse, "synapse hall") == {"Synapse Hall"}
    assert "Hearth Hall" in public_room_names(synapse, synapse_user, hearth)
    assert public_room_names(synapse, synapse_user, hearth, "hearth hall") == {"Hearth Hall"}
