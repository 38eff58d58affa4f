"""Hearth getting a server's keys from Synapse as its trusted notary.

Three servers: Synapse (127.0.0.1), the `asker` Hearth (127.0.0.1) that trusts Synapse as
its only key notary, and per test a fresh `origin` Hearth on 127.0.0.2. The asker's address
policy admits 127.0.0.1 alone, so it cannot fetch the origin's key document itself; Synapse
can. The origin sends the asker a signed `query/profile` (its user asks it for the profile
of the asker's user); to verify the X-Matrix signature the asker must get the origin's key
through Synapse's `POST /_matrix/key/v2/query`.

Each test has its own origin (a new server name and key), so what Synapse cached for one
test does not help another.
"""

from __future__ import annotations

import urllib.parse

import pytest

from interop import (
    HttpError,
    Pki,
    Server,
    User,
    register_on_hearth,
    set_displayname,
    start_hearth,
)

ASKER_DISPLAYNAME = "Ash behind the notary"


@pytest.fixture(scope="module")
def asker(tmp_path_factory: pytest.TempPathFactory, pki: Pki, synapse: Server):
    server = None
    try:
        server = start_hearth(
            tmp_path_factory.mktemp("asker"), pki, trusted_servers=[synapse.server_name], kind="hearth-asker"
        )
        yield server
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="module")
def asker_user(asker: Server) -> User:
    user = register_on_hearth(asker, "ash")
    set_displayname(asker, user, ASKER_DISPLAYNAME)
    return user


@pytest.fixture
def origin(tmp_path_factory: pytest.TempPathFactory, pki: Pki):
    server = None
    try:
        server = start_hearth(tmp_path_factory.mktemp("origin"), pki, host="127.0.0.2", kind="hearth-origin")
        yield server
    finally:
        if server is not None:
            server.stop()


def origin_asks_for_asker_profile(origin: Server, asker_user: User) -> dict:
    user = register_on_hearth(origin, "olive")
    path = f"/_matrix/client/v3/profile/{urllib.parse.quote(asker_user.user_id)}"
    return origin.call("GET", path, token=user.access_token)


def origin_key_ids(origin: Server) -> list[str]:
    return list(origin.call("GET", "/_matrix/key/v2/server")["verify_keys"])


def test_asker_cannot_reach_origin_directly(asker: Server, origin: Server):
    """The premise: the asker's notary API (which asks the origin itself) gets nothing."""
    try:
        answer = asker.call("GET", f"/_matrix/key/v2/query/{urllib.parse.quote(origin.server_name)}")
    except HttpError as e:
        answer = {"error": e.status}
    docs = [d for d in answer.get("server_keys", []) if d.get("server_name") == origin.server_name]
    assert docs == [], answer


# Both bugs this module found are fixed (transport/keys.rs): a notary's answer was refused
# because the origin's signature was checked with the notary's signature still on the
# document (ruma's verify_json checks every signer), and Hearth asked its notary for "all"
# of a server's keys, which Synapse answers from its cache only. These two tests pin both.
def test_hearth_verifies_origin_with_key_synapse_has_cached(
    synapse: Server, origin: Server, asker: Server, asker_user: User
):
    """Synapse has fetched the origin's key before (asked by key id): the asker gets it from
    Synapse, checks Synapse's signature and the origin's, and accepts the request."""
    synapse.call(
        "POST",
        "/_matrix/key/v2/query",
        {"server_keys": {origin.server_name: {k: {"minimum_valid_until_ts": 0} for k in origin_key_ids(origin)}}},
    )
    profile = origin_asks_for_asker_profile(origin, asker_user)
    assert profile.get("displayname") == ASKER_DISPLAYNAME, profile


# Hearth names the key ids it needs (from the X-Matrix header) with minimum_valid_until_ts,
# as Synapse's own client does, so Synapse fetches the origin's keys on first contact.
def test_hearth_verifies_origin_through_synapse_notary_on_first_contact(
    origin: Server, asker: Server, asker_user: User
):
    profile = origin_asks_for_asker_profile(origin, asker_user)
    assert profile.get("displayname") == ASKER_DISPLAYNAME, profile
