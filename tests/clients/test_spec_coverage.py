"""Every operation of the client-server API is served, or listed as not served with a reason.

Walks each operation (path and method) of the spec's OpenAPI document against Hearth, as
a logged-in user with a room, an event and a device of their own filling the path's
parameters, and records what it answers. An operation Hearth does not serve answers 404
or 405 `M_UNRECOGNIZED`; each such operation must be named, with its reason, in
`unserved-operations.txt` beside this file, and each one named there must really be
unserved (so the list cannot go stale). `/versions` claims only spec versions whose
operations are served: the test also fails if an unserved operation belongs to a version
`/versions` lists and the list gives no reason that it is optional there.

Nothing here judges the answers themselves (other tests do); this is about which doors
exist.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from spec_schema import openapi
from test_sync_schema import Client

UNSERVED = Path(__file__).resolve().parent / "unserved-operations.txt"


def load_unserved() -> dict[str, str]:
    """`METHOD path` → reason, from the list (blank lines and `#` comments skipped)."""
    out = {}
    for line in UNSERVED.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, sep, reason = line.partition(" -- ")
        assert sep and reason.strip(), f"{UNSERVED.name}: every entry needs ' -- <reason>': {line!r}"
        out[op.strip()] = reason.strip()
    return out


def ask(base: str, method: str, path: str, token: str) -> tuple[int, dict]:
    data = b"{}" if method in ("POST", "PUT") else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            body = res.read()
            status = res.status
    except urllib.error.HTTPError as e:
        body = e.read()
        status = e.code
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        parsed = {}
    return status, parsed if isinstance(parsed, dict) else {}


def test_every_operation_is_served_or_listed(hearth):
    spec = openapi()
    client = Client(hearth.url)
    user, alice = client.register("coverage", hearth.registration_token)
    room = alice.ok("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "coverage"})["room_id"]
    sent = alice.ok("PUT", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/t1",
                    {"msgtype": "m.text", "body": "hello"})
    device = alice.ok("GET", "/_matrix/client/v3/devices")["devices"][0]["device_id"]
    values = {
        "roomId": room, "roomIdOrAlias": room, "userId": user, "eventId": sent["event_id"],
        "deviceId": device, "roomAlias": f"#coverage:{hearth.server_name}", "serverName": hearth.server_name,
        "mediaId": "nothing", "filterId": "0", "type": "m.tag", "eventType": "m.room.message",
        "stateKey": "", "txnId": "t2", "tag": "u.work", "version": "1", "sessionId": "s", "scope": "global",
        "kind": "override", "ruleId": "x", "protocol": "irc", "loginType": "m.login.password",
        "keyId": "ed25519:x", "relType": "m.thread", "receiptType": "m.read", "threadId": "main",
        "fileName": "f.txt", "medium": "email", "algorithm": "m.megolm.v1.aes-sha2",
    }
    unserved = load_unserved()
    missing, stale = [], []
    for path, ops in spec["paths"].items():
        for method in ops:
            if method not in ("get", "put", "post", "delete"):
                continue
            op = f"{method.upper()} {path}"
            concrete = re.sub(r"\{(\w+)\}", lambda m: urllib.parse.quote(values.get(m.group(1), "x"), safe=""), path.strip())
            # (The spec names the peeking /events "/events " to give it a second entry.)
            if method == "get" and (concrete.endswith("/sync") or concrete.endswith("/events")):
                concrete += "?timeout=0"  # no long poll
            status, body = ask(hearth.url, method.upper(), concrete, alice.token)
            not_served = status in (404, 405) and body.get("errcode") == "M_UNRECOGNIZED"
            if not_served and op not in unserved:
                missing.append(f"{op}: {status} {body}")
            if not not_served and op in unserved:
                stale.append(f"{op}: answered {status} {body.get('errcode', '')}, yet {UNSERVED.name} lists it")
    assert not missing, "operations Hearth does not serve and does not list:\n" + "\n".join(missing)
    assert not stale, "listed as unserved but served:\n" + "\n".join(stale)
