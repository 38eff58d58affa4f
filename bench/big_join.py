#!/usr/bin/env python3
"""Big-room join benchmark: Hearth and Synapse each join the same room of a local Synapse
with many members (default 10,000), side by side in one run.

A host Synapse (TLS on loopback, the federation tests' throw-away CA and helpers in
tests/federation/interop.py) gets N registered users, all joined to one public room. Then
a fresh Hearth and a fresh second Synapse each have one user join that room through the
host, one after the other (the first stays up: the second checks its join event), and for each the run reports:

* `join_s`: from the client's `/join` until it answers;
* `members_s`: from the `/join` until the joiner's `/joined_members` lists every member
  (Synapse joins big rooms with partial state, since 1.8x; it completes the member list in
  the background, and `/joined_members` waits for it);
* `rss_before_mib`, `peak_rss_mib`: the joiner's resident memory before the join and its
  peak (`VmHWM`) once the member list is complete: the figure that matters on a board
  with a 1 GiB pod limit.

Hearth asks for the full state (no partial joins); what it is sent is capped by
`join_max_state_events` (default 50,000). The host's users are made with a low bcrypt
cost so that filling the room takes minutes, not an hour. Not part of CI: `bench/run.sh
--big-join` runs it with a release build; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "federation"))
from interop import (  # noqa: E402
    Server,
    User,
    make_pki,
    register_on_hearth,
    register_on_synapse,
    request,
    start_synapse,
)
from federation import start_hearth  # noqa: E402

# Joining 10,000 members' state can take a while on a small machine.
JOIN_TIMEOUT_S = 900.0


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def status_kib(server: Server, field: str) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {server.kind}")


def call(server: Server, method: str, path: str, body: object | None, user: User, timeout: float) -> object:
    return request(server.pki.ssl_context(), method, server.url + path, body, user.access_token, timeout)


def fill(host: Server, members: int, threads: int) -> tuple[str, User]:
    owner = register_on_synapse(host, "owner")
    room = host.call(
        "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "Big room"}, token=owner.access_token
    )["room_id"]

    def one(i: int) -> None:
        user = register_on_synapse(host, f"member{i:05d}")
        call(host, "POST", f"/_matrix/client/v3/join/{q(room)}", {}, user, 120)

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for n, _ in enumerate(pool.map(one, range(1, members)), start=2):
            if n % 1000 == 0:
                print(f"  {n} members ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return room, owner


def join(kind: str, joiner: Server, host: Server, room: str, members: int) -> dict:
    user = register_on_hearth(joiner, "visitor") if kind == "hearth" else register_on_synapse(joiner, "visitor")
    rss_before = status_kib(joiner, "VmRSS")
    started = time.perf_counter()
    path = f"/_matrix/client/v3/join/{q(room)}?via={q(host.server_name)}&server_name={q(host.server_name)}"
    call(joiner, "POST", path, {}, user, JOIN_TIMEOUT_S)
    joined_s = time.perf_counter() - started
    while True:
        answer = call(joiner, "GET", f"/_matrix/client/v3/rooms/{q(room)}/joined_members", None, user, JOIN_TIMEOUT_S)
        if len(answer["joined"]) >= members + 1:
            break
        if time.perf_counter() - started > JOIN_TIMEOUT_S:
            raise RuntimeError(f"{kind}: only {len(answer['joined'])} of {members + 1} members listed")
        time.sleep(0.5)
    members_s = time.perf_counter() - started
    return {
        "join_s": round(joined_s, 2),
        "members_s": round(members_s, 2),
        "rss_before_mib": round(rss_before / 1024, 1),
        "peak_rss_mib": round(status_kib(joiner, "VmHWM") / 1024, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hearth-bin", required=True)
    ap.add_argument("--synapse-python", default=sys.executable)
    ap.add_argument("--members", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--label", default="")
    ap.add_argument("--json")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hearth-big-join-"))
    (root / "pki").mkdir()
    pki = make_pki(root / "pki")
    servers: list[Server] = []
    try:
        (root / "host").mkdir()
        host = start_synapse(
            root / "host", pki, args.synapse_python, log_level="WARNING", overrides={"bcrypt_rounds": 4}
        )
        servers.append(host)
        print(f"== filling a room of {args.members} members on the host Synapse", file=sys.stderr)
        started = time.monotonic()
        room, _ = fill(host, args.members, args.threads)
        fill_s = time.monotonic() - started

        results: dict[str, dict] = {}
        for kind in ("hearth", "synapse"):
            workdir = root / f"joiner-{kind}"
            workdir.mkdir()
            if kind == "hearth":
                joiner = start_hearth(workdir, pki, args.hearth_bin)
            else:
                joiner = start_synapse(workdir, pki, args.synapse_python, log_level="WARNING")
            servers.append(joiner)
            print(f"== {kind} joins", file=sys.stderr)
            # Left running: the next joiner verifies this one's join event with its keys.
            results[kind] = join(kind, joiner, host, room, args.members)

        h, s = results["hearth"], results["synapse"]
        print(f"\nJoining a room of {args.members} members hosted on Synapse ({args.label})")
        print(f"{'':28}{'Hearth':>10}{'Synapse':>10}{'ratio':>8}")
        for key, label in (
            ("join_s", "/join answered (s)"),
            ("members_s", "member list complete (s)"),
            ("rss_before_mib", "RSS before (MiB)"),
            ("peak_rss_mib", "peak RSS (MiB)"),
        ):
            ratio = s[key] / h[key] if h[key] else float("inf")
            print(f"{label:28}{h[key]:>10}{s[key]:>10}{ratio:>7.2f}x")
        print("ratio: Synapse's figure over Hearth's (above 1: Hearth is faster or smaller)")
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {"members": args.members, "fill_s": round(fill_s), "label": args.label, "results": results},
                    indent=2,
                )
                + "\n"
            )
        return 0
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
