"""Room, account and server-information answers match the spec's OpenAPI schemas.

Drives a running Hearth over HTTP. Every success answer is checked against the 200 schema
of its operation in the spec's OpenAPI document (`spec_schema`); every refusal by status
and errcode, and against the operation's schema for that status. A refusal the operation
does not document must be one of the codes the spec lets any endpoint return ("Common
error codes"), checked against the spec's `Error` schema.

Covered: jump to date (`timestamp_to_event`, both directions, and 404 when nothing is
there); room summaries by id and by alias, with and without a token, and the unstable
`im.nheko.summary` path answering the same; mutual rooms; third-party protocols; TURN
credentials (a shared secret's HMAC checked, fixed credentials, and none configured);
OpenID tokens; reports of an event, a room and a user; `/.well-known/matrix/support`;
`/admin/whois` for a server admin (the first account registered) and its refusal to
others; `/event`, `/context`, `/relations` (all three path forms) and `/messages` around
an edit, a reaction and a thread, with the bundled aggregations (`unsigned.m.relations`:
`m.replace` is the edit, `m.thread` its latest reply, count and participation) checked
by hand, as the event schemas leave `unsigned` open; and the third-party identifier
operations, which Hearth refuses (it links no e-mail or phone).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse

import pytest

from conftest import HearthServer
from spec_schema import operation, response_schema, validate
from test_sync_schema import Client

V1, V3 = "/_matrix/client/v1", "/_matrix/client/v3"
EVENT = V3 + "/rooms/{roomId}/event/{eventId}"
TURN = V3 + "/voip/turnServer"
SUPPORT = "/.well-known/matrix/support"
# The spec's "Common error codes": any endpoint may answer them.
ANY_ENDPOINT = {
    "M_FORBIDDEN", "M_UNKNOWN_TOKEN", "M_MISSING_TOKEN", "M_USER_LOCKED", "M_USER_SUSPENDED", "M_BAD_JSON",
    "M_NOT_JSON", "M_NOT_FOUND", "M_LIMIT_EXCEEDED", "M_UNRECOGNIZED", "M_UNKNOWN",
    # The spec's error code for a request naming a third-party server (an identity server)
    # the homeserver will not contact: any endpoint that takes an `id_server` may give it.
    "M_SERVER_NOT_TRUSTED",
}


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def ok(client: Client, method: str, path: str, op: str, body: dict | None = None) -> dict:
    """Calls `path` (a concrete form of the spec's `op`) and checks the 200 body against the spec."""
    status, res = client.call(method, path, body)
    assert status == 200, f"{method} {path}: {status} {res}"
    validate(res, response_schema(op, method.lower()))
    return res


def plain_error() -> dict:
    """The spec's `Error` schema, as `GET /event`'s 404 gives it."""
    schema = response_schema(EVENT, "get", "404")
    assert schema["title"] == "Error", schema
    return schema


def refused(
    client: Client, method: str, path: str, op: str, status: int, errcode: str, body: dict | None = None
) -> None:
    """Calls `path` and checks the refusal: status, errcode, and that the spec allows it for `op`."""
    got, res = client.call(method, path, body)
    assert (got, res.get("errcode")) == (status, errcode), f"{method} {path}: {got} {res}"
    documented = operation(op, method.lower())["responses"]
    schema = documented.get(str(status), {}).get("content", {}).get("application/json", {}).get("schema")
    if str(status) not in documented:
        assert errcode in ANY_ENDPOINT, (
            f"{method} {op}: the spec documents {sorted(documented)} for this operation, not {status}, "
            f"and {errcode} is not a code any endpoint may return; Hearth answered {res}"
        )
    validate(res, schema or plain_error())


def setup_users(hearth: HearthServer, *names: str) -> list[tuple[str, Client]]:
    anon = Client(hearth.url)
    return [anon.register(name, hearth.registration_token) for name in names]


def send(client: Client, room: str, content: dict, kind: str = "m.room.message") -> str:
    txn = f"t{time.monotonic_ns()}"
    return client.ok("PUT", f"{V3}/rooms/{q(room)}/send/{kind}/{txn}", content)["event_id"]


def test_jump_to_date_room_summaries_and_mutual_rooms(hearth: HearthServer) -> None:
    (alice_id, alice), (bob_id, bob) = setup_users(hearth, "alice", "bob")
    garden = alice.ok("POST", f"{V3}/createRoom", {
        "preset": "public_chat", "name": "Garden", "topic": "Seeds", "room_alias_name": "garden",
    })["room_id"]
    private = alice.ok("POST", f"{V3}/createRoom", {"preset": "private_chat"})["room_id"]

    # Jump to date.
    sent = []
    for body in ("one", "two", "three"):
        time.sleep(0.01)
        event_id = send(alice, garden, {"msgtype": "m.text", "body": body})
        event = ok(alice, "GET", f"{V3}/rooms/{q(garden)}/event/{q(event_id)}", EVENT)
        sent.append((event_id, event["origin_server_ts"]))
    op = V1 + "/rooms/{roomId}/timestamp_to_event"
    jump = f"{V1}/rooms/{q(garden)}/timestamp_to_event"
    found = ok(alice, "GET", f"{jump}?ts={sent[1][1]}&dir=f", op)
    assert found == {"event_id": sent[1][0], "origin_server_ts": sent[1][1]}, found
    assert ok(alice, "GET", f"{jump}?ts={sent[2][1] - 1}&dir=b", op)["event_id"] == sent[1][0]
    assert ok(alice, "GET", f"{jump}?ts={sent[2][1] + 86_400_000}&dir=b", op)["event_id"] == sent[2][0]
    tomorrow = int(time.time() * 1000) + 86_400_000
    refused(alice, "GET", f"{jump}?ts={tomorrow}&dir=f", op, 404, "M_NOT_FOUND")
    refused(alice, "GET", f"{jump}?ts=1&dir=b", op, 404, "M_NOT_FOUND")

    # Room summaries (in the spec copy since v1.15), by id and by alias, and the unstable path.
    op = V1 + "/room_summary/{roomIdOrAlias}"
    alias = f"#garden:{hearth.server_name}"
    anon = Client(hearth.url)
    mine = ok(alice, "GET", f"{V1}/room_summary/{q(garden)}", op)
    assert (mine["room_id"], mine["name"], mine["topic"], mine["membership"]) == (garden, "Garden", "Seeds", "join")
    assert (mine["num_joined_members"], mine["join_rule"]) == (1, "public"), mine
    public = ok(anon, "GET", f"{V1}/room_summary/{q(alias)}", op)
    assert public == {k: v for k, v in mine.items() if k != "membership"}, (public, mine)
    for path in (f"/_matrix/client/unstable/im.nheko.summary/summary/{q(alias)}",
                 f"/_matrix/client/unstable/im.nheko.summary/summary/{q(garden)}"):
        assert ok(anon, "GET", path, op) == public
    assert ok(alice, "GET", f"/_matrix/client/unstable/im.nheko.summary/summary/{q(garden)}", op) == mine
    refused(bob, "GET", f"{V1}/room_summary/{q(private)}", op, 404, "M_NOT_FOUND")
    refused(anon, "GET", f"{V1}/room_summary/{q('#nowhere:' + hearth.server_name)}", op, 404, "M_NOT_FOUND")

    # Mutual rooms: the spec's path is /_matrix/client/v1/mutual_rooms (MSC2666's unstable
    # one, which Element uses, answers the same).
    op = V1 + "/mutual_rooms"
    bob.ok("POST", f"{V3}/join/{q(garden)}", {})
    for path in (op, "/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms"):
        shared = ok(alice, "GET", f"{path}?user_id={q(bob_id)}", op)
        assert (shared["joined"], shared["count"]) == ([garden], 1), shared
    refused(alice, "GET", f"{op}?user_id={q(alice_id)}", op, 400, "M_INVALID_PARAM")
    refused(alice, "GET", op, op, 400, "M_MISSING_PARAM")


def check_aggregations(events: dict[str, dict], root: str, typo: str, edit: str, latest: str) -> None:
    """`events` (by id) holds the root and the edited event as served to bob: their bundles."""
    event_schema = response_schema(EVENT, "get")
    thread = events[root]["unsigned"]["m.relations"]["m.thread"]
    assert (thread["count"], thread["current_user_participated"]) == (2, True), thread
    assert thread["latest_event"]["event_id"] == latest, thread
    validate(thread["latest_event"], event_schema)
    replaced = events[typo]["unsigned"]["m.relations"]["m.replace"]
    assert replaced["event_id"] == edit, replaced
    assert replaced["content"]["m.new_content"]["body"] == "see you", replaced
    validate(replaced, event_schema)


def test_event_context_relations_and_messages_bundle_aggregations(hearth: HearthServer) -> None:
    (_, alice), (bob_id, bob), (_, eve) = setup_users(hearth, "alice", "bob", "eve")
    room = alice.ok("POST", f"{V3}/createRoom", {"invite": [bob_id]})["room_id"]
    bob.ok("POST", f"{V3}/rooms/{q(room)}/join", {})
    root = send(alice, room, {"msgtype": "m.text", "body": "shall we meet?"})
    typo = send(alice, room, {"msgtype": "m.text", "body": "see yuo"})
    edit = send(alice, room, {
        "msgtype": "m.text", "body": "* see you", "m.new_content": {"msgtype": "m.text", "body": "see you"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": typo},
    })
    reaction = send(bob, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}},
                    "m.reaction")
    in_thread = {"rel_type": "m.thread", "event_id": root, "is_falling_back": True, "m.in_reply_to": {"event_id": root}}
    reply = send(bob, room, {"msgtype": "m.text", "body": "tuesday?", "m.relates_to": in_thread})
    latest = send(alice, room, {"msgtype": "m.text", "body": "tuesday.", "m.relates_to": in_thread})

    served = {e: ok(bob, "GET", f"{V3}/rooms/{q(room)}/event/{q(e)}", EVENT) for e in (root, typo)}
    check_aggregations(served, root, typo, edit, latest)
    refused(bob, "GET", f"{V3}/rooms/{q(room)}/event/{q('$nothing')}", EVENT, 404, "M_NOT_FOUND")

    op = V3 + "/rooms/{roomId}/context/{eventId}"
    context = ok(bob, "GET", f"{V3}/rooms/{q(room)}/context/{q(typo)}?limit=10", op)
    around = {e["event_id"]: e for e in context["events_before"] + context["events_after"] + [context["event"]]}
    assert {root, typo, edit, reaction} <= set(around), list(around)
    check_aggregations(around, root, typo, edit, latest)
    refused(bob, "GET", f"{V3}/rooms/{q(room)}/context/{q('$nothing')}", op, 404, "M_NOT_FOUND")

    relations = f"{V1}/rooms/{q(room)}/relations/{q(root)}"
    op = V1 + "/rooms/{roomId}/relations/{eventId}"
    every = ok(bob, "GET", relations, op)
    assert [e["event_id"] for e in every["chunk"]] == [latest, reply, reaction], every
    threaded = ok(bob, "GET", f"{relations}/m.thread", op + "/{relType}")
    assert [e["event_id"] for e in threaded["chunk"]] == [latest, reply], threaded
    reactions = ok(bob, "GET", f"{relations}/m.annotation/m.reaction", op + "/{relType}/{eventType}")
    assert [e["event_id"] for e in reactions["chunk"]] == [reaction], reactions
    assert ok(bob, "GET", f"{relations}/m.annotation/m.room.message", op + "/{relType}/{eventType}")["chunk"] == []
    edits = ok(bob, "GET", f"{V1}/rooms/{q(room)}/relations/{q(typo)}/m.replace", op + "/{relType}")
    assert [e["event_id"] for e in edits["chunk"]] == [edit], edits
    refused(bob, "GET", f"{V1}/rooms/{q(room)}/relations/{q('$nothing')}", op, 404, "M_NOT_FOUND")

    op = V3 + "/rooms/{roomId}/messages"
    page = ok(bob, "GET", f"{V3}/rooms/{q(room)}/messages?dir=b&limit=50", op)
    check_aggregations({e["event_id"]: e for e in page["chunk"]}, root, typo, edit, latest)
    refused(eve, "GET", f"{V3}/rooms/{q(room)}/messages?dir=b", op, 403, "M_FORBIDDEN")


def test_reports_of_an_event_a_room_and_a_user(hearth: HearthServer) -> None:
    (_, alice), (bob_id, bob), (_, eve) = setup_users(hearth, "alice", "bob", "eve")
    room = bob.ok("POST", f"{V3}/createRoom", {"preset": "public_chat"})["room_id"]
    alice.ok("POST", f"{V3}/rooms/{q(room)}/join", {})
    rude = send(bob, room, {"msgtype": "m.text", "body": "rude words"})

    op = V3 + "/rooms/{roomId}/report"
    assert ok(alice, "POST", f"{V3}/rooms/{q(room)}/report", op, {"reason": "spam"}) == {}
    refused(alice, "POST", f"{V3}/rooms/{q('!nothing:' + hearth.server_name)}/report", op, 404, "M_NOT_FOUND", {})
    op = V3 + "/users/{userId}/report"
    assert ok(alice, "POST", f"{V3}/users/{q(bob_id)}/report", op, {"reason": "rude"}) == {}
    op = V3 + "/rooms/{roomId}/report/{eventId}"
    assert ok(alice, "POST", f"{V3}/rooms/{q(room)}/report/{q(rude)}", op, {"reason": "rude"}) == {}
    refused(alice, "POST", f"{V3}/rooms/{q(room)}/report/{q('$nothing')}", op, 404, "M_NOT_FOUND", {"reason": "?"})
    # "The event was not found or you are not joined to the room where the event resides."
    refused(eve, "POST", f"{V3}/rooms/{q(room)}/report/{q(rude)}", op, 404, "M_NOT_FOUND", {"reason": "rude"})


def test_openid_protocols_and_whois(hearth: HearthServer) -> None:
    # The first account registered on a server becomes its admin.
    (admin_id, admin), (bob_id, bob) = setup_users(hearth, "admin", "bob")
    op = V3 + "/user/{userId}/openid/request_token"
    token = ok(bob, "POST", f"{V3}/user/{q(bob_id)}/openid/request_token", op, {})
    assert (token["token_type"], token["matrix_server_name"]) == ("Bearer", hearth.server_name), token
    assert token["access_token"] and token["expires_in"] > 0, token
    refused(bob, "POST", f"{V3}/user/{q(admin_id)}/openid/request_token", op, 403, "M_FORBIDDEN", {})

    assert ok(bob, "GET", f"{V3}/thirdparty/protocols", V3 + "/thirdparty/protocols") == {}  # no bridges

    op = V3 + "/admin/whois/{userId}"
    whois = ok(admin, "GET", f"{V3}/admin/whois/{q(bob_id)}", op)
    assert whois["user_id"] == bob_id, whois
    connections = [c for d in whois["devices"].values() for s in d["sessions"] for c in s["connections"]]
    assert connections and all(c["ip"] == "127.0.0.1" and c["last_seen"] > 0 for c in connections), whois
    assert ok(bob, "GET", f"{V3}/admin/whois/{q(bob_id)}", op)["user_id"] == bob_id  # oneself, too
    refused(bob, "GET", f"{V3}/admin/whois/{q(admin_id)}", op, 403, "M_FORBIDDEN")


THREEPID = {"client_secret": "s3cret", "email": "bob@example.org", "send_attempt": 1}
PHONE = {"client_secret": "s3cret", "country": "GB", "phone_number": "07700900001", "send_attempt": 1}
# An identity server in a private range: the outbound policy's denylist keeps Hearth from it.
CREDS = {"client_secret": "s3cret", "sid": "1", "id_server": "10.255.255.1", "id_access_token": "x"}


def test_threepid_operations_answer_as_the_spec_documents(hearth: HearthServer) -> None:
    [(_, bob)] = setup_users(hearth, "bob")
    anon = Client(hearth.url)
    assert ok(bob, "GET", f"{V3}/account/3pid", V3 + "/account/3pid") == {"threepids": []}
    for path in ("/account/3pid/delete", "/account/3pid/unbind"):
        removed = ok(bob, "POST", V3 + path, V3 + path, {"medium": "email", "address": "bob@example.org"})
        assert removed == {"id_server_unbind_result": "no-support"}, (path, removed)
    # Without a mail server no address is validated, phone numbers never are, and an
    # identity server the outbound policy keeps Hearth from is not asked: each refusal
    # checked (all of them, then every deviation reported at once). The working paths are
    # in crates/hearth/tests/api/identity.rs.
    refusals = [
        (bob, "/account/3pid", {"three_pid_creds": CREDS}, 403, "M_THREEPID_AUTH_FAILED"),
        (bob, "/account/3pid/bind", CREDS, 403, "M_SERVER_NOT_TRUSTED"),
        (bob, "/account/3pid/email/requestToken", THREEPID, 403, "M_THREEPID_DENIED"),
        (bob, "/account/3pid/msisdn/requestToken", PHONE, 403, "M_THREEPID_DENIED"),
        (anon, "/register/email/requestToken", THREEPID, 403, "M_THREEPID_DENIED"),
        (anon, "/register/msisdn/requestToken", PHONE, 403, "M_THREEPID_DENIED"),
        (anon, "/account/password/email/requestToken", THREEPID, 403, "M_THREEPID_DENIED"),
        (anon, "/account/password/msisdn/requestToken", PHONE, 403, "M_THREEPID_DENIED"),
    ]
    # Adding an address asks for the password first (user-interactive authentication).
    got, challenge = bob.call("POST", V3 + "/account/3pid/add", {"client_secret": "s3cret", "sid": "1"})
    assert got == 401 and ["m.login.password"] in [f["stages"] for f in challenge["flows"]], challenge
    problems = []
    for client, path, body, status, errcode in refusals:
        try:
            refused(client, "POST", V3 + path, V3 + path, status, errcode, body)
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, "\n".join(problems)


TURN_SECRET = {
    "CONDUIT_TURN_URIS": '["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"]',
    "CONDUIT_TURN_SECRET": "a shared secret",
    "CONDUIT_TURN_TTL": "3600",
    "CONDUIT_WELL_KNOWN_SUPPORT_PAGE": "https://example.org/help",
    "CONDUIT_WELL_KNOWN_SUPPORT_EMAIL": "admin@example.org",
    "CONDUIT_WELL_KNOWN_SUPPORT_MXID": "@admin:example.org",
}
TURN_FIXED = {
    "CONDUIT_TURN_URIS": '["turn:turn.example.org:3478"]',
    "CONDUIT_TURN_USERNAME": "calls",
    "CONDUIT_TURN_PASSWORD": "hunter2",
    "CONDUIT_WELL_KNOWN_SUPPORT_MXID": "@admin:example.org",
    "CONDUIT_WELL_KNOWN_SUPPORT_ROLE": "m.role.security",
}


@pytest.mark.parametrize("hearth_extra_env", [TURN_SECRET, TURN_FIXED], ids=["turn-secret", "turn-fixed"])
def test_turn_credentials_and_support_contacts(hearth: HearthServer, hearth_extra_env: dict[str, str]) -> None:
    [(bob_id, bob)] = setup_users(hearth, "bob")
    env = hearth_extra_env
    turn = ok(bob, "GET", TURN, TURN)
    assert turn["uris"] == json.loads(env["CONDUIT_TURN_URIS"]), turn
    if "CONDUIT_TURN_SECRET" in env:
        # coturn's use-auth-secret: "<expiry>:<user id>", and the base64 HMAC-SHA1 of it.
        expiry, user = turn["username"].split(":", 1)
        now = time.time()
        assert user == bob_id and now + 3500 < int(expiry) <= now + 3601 and turn["ttl"] == 3600, turn
        mac = hmac.new(env["CONDUIT_TURN_SECRET"].encode(), turn["username"].encode(), hashlib.sha1).digest()
        assert turn["password"] == base64.b64encode(mac).decode(), turn
    else:
        assert (turn["username"], turn["password"], turn["ttl"]) == ("calls", "hunter2", 86400), turn
    refused(Client(hearth.url), "GET", TURN, TURN, 401, "M_MISSING_TOKEN")

    support = ok(Client(hearth.url), "GET", SUPPORT, SUPPORT)
    contact = {"role": env.get("CONDUIT_WELL_KNOWN_SUPPORT_ROLE", "m.role.admin"), "matrix_id": "@admin:example.org"}
    if "CONDUIT_WELL_KNOWN_SUPPORT_EMAIL" in env:
        contact["email_address"] = env["CONDUIT_WELL_KNOWN_SUPPORT_EMAIL"]
    assert support["contacts"] == [contact], support
    assert support.get("support_page") == env.get("CONDUIT_WELL_KNOWN_SUPPORT_PAGE"), support


def test_without_turn_servers_or_support_contacts(hearth: HearthServer) -> None:
    [(_, bob)] = setup_users(hearth, "bob")
    # 404 is the spec's "no support information" (no body documented; Hearth's is an error).
    refused(Client(hearth.url), "GET", SUPPORT, SUPPORT, 404, "M_NOT_FOUND")
    # The spec has no answer for "no TURN server" (matrix-spec#1795): its 200 requires all
    # four fields, and MSC4166 proposes 404 M_NOT_FOUND, a code any endpoint may return.
    # One of the two.
    status, res = bob.call("GET", TURN)
    if status == 200:
        validate(res, response_schema(TURN, "get"))
    else:
        refused(bob, "GET", TURN, TURN, 404, "M_NOT_FOUND")
