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


# Bug 1 (Hearth, any notary): transport/keys.rs `keep()` checks "every current key signed
# the document" with ruma::signatures::verify_json and a key map holding only the origin.
# ruma-signatures 0.22.1's verify_json checks every entity under `signatures` and fails with
# NoPublicKeysForEntity for one missing from the map; a notary's answer always carries the
# notary's signature too, so every document from a notary is refused. Asker log:
#   DEBUG ... a notary's key document was refused server=127.0.0.2:<p> notary=127.0.0.1:<q>
#   error=M_UNKNOWN: 127.0.0.2:<p>'s key document: signature of ed25519:<id>:
#   Could not find public keys for entity "127.0.0.1:<q>"
NOTARY_SIGNATURE_BUG = (
    "Hearth refuses every key document from a notary: keep() verifies the origin's signature "
    "with ruma verify_json and a key map of the origin alone, and verify_json fails on the "
    'notary\'s own signature ("Could not find public keys for entity <notary>")'
)


@pytest.mark.xfail(strict=True, raises=HttpError, reason=NOTARY_SIGNATURE_BUG)
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


# Bug 2 (Hearth with a Synapse notary, e.g. the default matrix.org): fetch_from_notary asks
# for all of a server's keys, POST /_matrix/key/v2/query {"server_keys": {"<server>": {}}}.
# Synapse 1.163 answers a query naming no key ids from its cache only and never asks the
# origin (remote_key_resource.py query_keys: `if not query[server_name]: ... continue`), so
# for a server it has not seen the answer is {"server_keys": []}. Synapse log:
#   remote_key_resource INFO POST-2 Handling query for keys {'127.0.0.2:<p>': {}}
#   ... 18B 200 "POST /_matrix/key/v2/query HTTP/1.1" "Hearth/0.1.0"
# Synapse's own client names the key ids (from the X-Matrix header), each with
# minimum_valid_until_ts. Bug 1 also fails this test; fixing both is needed for it to pass.
@pytest.mark.xfail(
    strict=True,
    raises=HttpError,
    reason=(
        "Hearth asks its notary for all of a server's keys ({\"server_keys\": {\"<server>\": {}}}); "
        "Synapse answers that from its cache only, so on first contact it returns no document "
        "(and any document would still be refused: " + NOTARY_SIGNATURE_BUG + ")"
    ),
)
def test_hearth_verifies_origin_through_synapse_notary_on_first_contact(
    origin: Server, asker: Server, asker_user: User
):
    profile = origin_asks_for_asker_profile(origin, asker_user)
    assert profile.get("displayname") == ASKER_DISPLAYNAME, profile
