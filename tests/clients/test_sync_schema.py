"""Every /sync response Hearth writes matches the specification's own schema.

Hearth writes the /sync body itself (not through a typed response), so this test holds it
to the contract: the response schema of `GET /_matrix/client/v3/sync` from the spec's
OpenAPI document (`../shared/matrix-spec`, or `$MATRIX_SPEC`), checked with jsonschema.

The scenario fills every section a sync can carry: account data and push rules, presence,
to-device messages, device-list changes, one-time-key counts, a joined room with timeline,
state, typing, receipts, tags, unread counts (also per thread) and a summary, an invite, a
left room; both an initial and an incremental sync are checked, plus the shapes clients
rely on beyond the schema (events arrays always present, `limited` written out).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from conftest import HearthServer
from spec_schema import response_schema, validate


class Client:
    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.token = token

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return res.status, json.loads(res.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def ok(self, method: str, path: str, body: dict | None = None) -> dict:
        status, res = self.call(method, path, body)
        assert status == 200, f"{method} {path}: {status} {res}"
        return res

    def register(self, name: str, token: str) -> tuple[str, "Client"]:
        body: dict = {"username": name, "password": f"pw-{name}-123", "initial_device_display_name": name}
        for _ in range(4):
            status, res = self.call("POST", "/_matrix/client/v3/register", body)
            if status == 200:
                return res["user_id"], Client(self.base, res["access_token"])
            assert status == 401, res
            done = set(res.get("completed", []))
            stage = next(s for s in res["flows"][0]["stages"] if s not in done)
            auth = {"type": stage, "session": res["session"]}
            if stage == "m.login.registration_token":
                auth["token"] = token
            body["auth"] = auth
        raise AssertionError("registration did not finish")

    def sync(self, since: str | None = None, filter_: dict | None = None) -> dict:
        query = {"timeout": "0"}
        if since:
            query["since"] = since
        if filter_:
            query["filter"] = json.dumps(filter_)
        return self.ok("GET", "/_matrix/client/v3/sync?" + urllib.parse.urlencode(query))


def check(schema: dict, res: dict) -> None:
    validate(res, schema)
    for kind in ("join", "leave"):
        for room_id, room in res.get("rooms", {}).get(kind, {}).items():
            for section in ("timeline", "state", "account_data") + (("ephemeral",) if kind == "join" else ()):
                assert isinstance(room[section]["events"], list), (kind, room_id, section)
            assert isinstance(room["timeline"]["limited"], bool), (kind, room_id)
    for room in res.get("rooms", {}).get("invite", {}).values():
        assert isinstance(room["invite_state"]["events"], list)


def test_sync_responses_match_the_spec_schema(hearth: HearthServer) -> None:
    schema = response_schema("/_matrix/client/v3/sync", "get")
    anon = Client(hearth.url)
    token = hearth.registration_token
    alice_id, alice = anon.register("alice", token)
    bob_id, bob = anon.register("bob", token)

    # Bob: a room he joins, one he leaves, one he is only invited to.
    room = alice.ok("POST", "/_matrix/client/v3/createRoom", {"name": "Kitchen", "invite": [bob_id]})["room_id"]
    gone = alice.ok("POST", "/_matrix/client/v3/createRoom", {"name": "Garage", "invite": [bob_id]})["room_id"]
    bob.ok("POST", f"/_matrix/client/v3/rooms/{room}/join", {})
    bob.ok("POST", f"/_matrix/client/v3/rooms/{gone}/join", {})
    first = bob.sync()
    check(schema, first)
    assert room in first["rooms"]["join"] and gone in first["rooms"]["join"]
    assert first["device_one_time_keys_count"].get("signed_curve25519") == 0
    assert any(e["type"] == "m.push_rules" for e in first["account_data"]["events"])
    since = first["next_batch"]

    bob.ok("POST", f"/_matrix/client/v3/rooms/{gone}/leave", {})
    attic = alice.ok("POST", "/_matrix/client/v3/createRoom", {"name": "Attic", "invite": [bob_id]})["room_id"]
    root = alice.ok(
        "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t1", {"msgtype": "m.text", "body": "root"}
    )["event_id"]
    alice.ok(
        "PUT",
        f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t2",
        {"msgtype": "m.text", "body": "in a thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}},
    )
    alice.ok("PUT", f"/_matrix/client/v3/rooms/{room}/typing/{alice_id}", {"typing": True, "timeout": 30000})
    alice.ok("POST", f"/_matrix/client/v3/rooms/{room}/receipt/m.read/{root}", {})
    bob.ok("PUT", f"/_matrix/client/v3/user/{bob_id}/rooms/{room}/tags/u.work", {"order": 0.5})
    bob.ok("PUT", f"/_matrix/client/v3/user/{bob_id}/account_data/org.example.setting", {"on": True})
    alice.ok("PUT", f"/_matrix/client/v3/presence/{alice_id}/status", {"presence": "online", "status_msg": "hi"})
    bob_device = bob.ok("GET", "/_matrix/client/v3/account/whoami")["device_id"]
    alice.ok(
        "PUT",
        "/_matrix/client/v3/sendToDevice/m.room_key_request/td1",
        {"messages": {bob_id: {bob_device: {"action": "request_cancellation", "request_id": "1"}}}},
    )
    alice.ok(
        "POST",
        "/_matrix/client/v3/keys/upload",
        {
            "device_keys": {
                "user_id": alice_id,
                "device_id": alice.ok("GET", "/_matrix/client/v3/account/whoami")["device_id"],
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {},
                "signatures": {},
            }
        },
    )

    threads = {"room": {"timeline": {"unread_thread_notifications": True}}}
    later = bob.sync(since, threads)
    check(schema, later)
    joined = later["rooms"]["join"][room]
    assert [e["content"]["body"] for e in joined["timeline"]["events"] if e["type"] == "m.room.message"] == [
        "root",
        "in a thread",
    ]
    ephemeral = {e["type"] for e in joined["ephemeral"]["events"]}
    assert {"m.typing", "m.receipt"} <= ephemeral, ephemeral
    assert joined["unread_notifications"]["notification_count"] >= 1
    assert root in joined["unread_thread_notifications"], joined
    assert any(e["type"] == "m.tag" for e in joined["account_data"]["events"])
    assert gone in later["rooms"]["leave"]
    assert attic in later["rooms"]["invite"]
    assert any(e["type"] == "org.example.setting" for e in later["account_data"]["events"])
    assert any(e["sender"] == alice_id for e in later["presence"]["events"])
    assert [e["type"] for e in later["to_device"]["events"]] == ["m.room_key_request"]
    assert alice_id in later["device_lists"]["changed"]

    # Nothing new: a minimal but still valid answer.
    quiet = bob.sync(later["next_batch"])
    check(schema, quiet)
    assert "rooms" not in quiet or not quiet["rooms"].get("join"), quiet
