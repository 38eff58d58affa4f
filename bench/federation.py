#!/usr/bin/env python3
"""Federation benchmark: Hearth → Hearth side by side with Synapse → Synapse, in one run.

For each kind of server, two of them federate over TLS on loopback (a throw-away CA, the
federation tests' helpers in tests/federation/interop.py). A user of the first creates a
room, a user of the second joins it, and then:

* latency: the first user sends one message at a time; the time from the send's answer
  until the second user's long-polling `/sync` on the other server returns it; p50/p95;
* throughput: the first user sends N messages, `concurrency` at a time (default one: with
  ten at once into one room, Synapse -> Synapse lost 9 to 44 of 300 messages here, never
  delivered within five minutes); messages per second from the first send to the moment
  the second user's `/sync` has them all.

Prints a table with ratios (Synapse's time over Hearth's, Hearth's rate over Synapse's)
and writes JSON. Synapse runs on SQLite as in the rest of bench/ and logs warnings only;
Hearth fsyncs every acknowledged write (its default). Not part of CI: `bench/run.sh
--federation` runs it with a release build.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "federation"))
from interop import (  # noqa: E402
    Server,
    free_port,
    hearth_env,
    make_pki,
    register_on_hearth,
    register_on_synapse,
    start_synapse,
)


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def start_hearth(workdir: Path, pki, binary: str) -> Server:
    database = workdir / "db"
    database.mkdir(parents=True)
    port = free_port()
    env = hearth_env(database, port, pki)
    env["RUST_LOG"] = "warn"
    server = Server("hearth", [binary], env, workdir, port, pki, log_files=[])
    server.start()
    return server


def pair(kind: str, root: Path, pki, args) -> tuple[Server, Server]:
    servers = []
    for side in ("a", "b"):
        workdir = root / f"{kind}-{side}"
        workdir.mkdir(parents=True)
        if kind == "hearth":
            servers.append(start_hearth(workdir, pki, args.hearth_bin))
        else:
            servers.append(start_synapse(workdir, pki, args.synapse_python, log_level="WARNING"))
    return servers[0], servers[1]


def register(server: Server, name: str):
    return register_on_hearth(server, name) if server.kind == "hearth" else register_on_synapse(server, name)


def send(server: Server, user, room: str, body: str) -> str:
    txn = f"b{time.monotonic_ns()}-{threading.get_ident()}"
    path = f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}"
    return server.call("PUT", path, {"msgtype": "m.text", "body": body}, token=user.access_token)["event_id"]


def sync(server: Server, user, since: str | None, timeout_ms: int) -> dict:
    filt = q(json.dumps({"room": {"timeline": {"limit": 100}}, "presence": {"types": []}}))
    path = f"/_matrix/client/v3/sync?timeout={timeout_ms}&filter={filt}"
    if since:
        path += f"&since={since}"
    return server.call("GET", path, token=user.access_token)


def bodies_in(resp: dict, room: str) -> list[str]:
    events = resp.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
    return [e["content"].get("body", "") for e in events if e.get("type") == "m.room.message"]


def run_kind(kind: str, root: Path, pki, args) -> dict:
    a, b = pair(kind, root, pki, args)
    try:
        alice, bob = register(a, "alice"), register(b, "bob")
        room = a.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, token=alice.access_token)[
            "room_id"
        ]
        b.call("POST", f"/_matrix/client/v3/join/{q(room)}?via={q(a.server_name)}&server_name={q(a.server_name)}", {},
               token=bob.access_token)
        since = sync(b, bob, None, 0)["next_batch"]
        # Warm-up: the first messages also make the servers fetch each other's keys.
        for i in range(5):
            body = f"warm-up {i}"
            send(a, alice, room, body)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                resp = sync(b, bob, since, 10_000)
                since = resp["next_batch"]
                if body in bodies_in(resp, room):
                    break

        latencies = []
        for i in range(args.latency_samples):
            body = f"latency {i}"
            send(a, alice, room, body)
            sent = time.perf_counter()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                resp = sync(b, bob, since, 10_000)
                since = resp["next_batch"]
                if body in bodies_in(resp, room):
                    latencies.append(time.perf_counter() - sent)
                    break
            else:
                raise RuntimeError(f"{kind}: message {i} never arrived")

        wanted = {f"burst {i}" for i in range(args.messages)}
        seen: set[str] = set()
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            sends = [pool.submit(send, a, alice, room, body) for body in sorted(wanted)]
            deadline = time.monotonic() + 300
            while seen != wanted and time.monotonic() < deadline:
                resp = sync(b, bob, since, 10_000)
                since = resp["next_batch"]
                seen.update(x for x in bodies_in(resp, room) if x in wanted)
                # A gap in the synced timeline (`limited`) is paged in from /messages.
                if resp.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("limited"):
                    page = b.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=1000",
                                  token=bob.access_token)
                    seen.update(e["content"].get("body", "") for e in page["chunk"] if e["content"].get("body") in wanted)
            for s in sends:
                s.result()
        elapsed = time.perf_counter() - start
        if seen != wanted:
            page = b.call("GET", f"/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit=1000", token=bob.access_token)
            held = {e["content"].get("body") for e in page["chunk"]} & wanted
            raise RuntimeError(f"{kind}: {len(wanted - seen)} burst messages never arrived in /sync "
                               f"({len(wanted - held)} missing from /messages too) after {elapsed:.0f} s")
        return {
            "latency_p50_ms": pct(latencies, 50) * 1000,
            "latency_p95_ms": pct(latencies, 95) * 1000,
            "messages_per_s": args.messages / elapsed,
            "messages": args.messages,
            "concurrency": args.concurrency,
            "latency_samples": args.latency_samples,
        }
    finally:
        for server in (a, b):
            server.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hearth-bin", required=True)
    ap.add_argument("--synapse-python", required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--latency-samples", type=int, default=50)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "federation-latest.json"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hearth-bench-federation-"))
    (root / "pki").mkdir()
    pki = make_pki(root / "pki")
    results = {kind: run_kind(kind, root, pki, args) for kind in ("hearth", "synapse")}
    h, s = results["hearth"], results["synapse"]
    ratios = {
        "latency_p50_speedup": s["latency_p50_ms"] / h["latency_p50_ms"],
        "latency_p95_speedup": s["latency_p95_ms"] / h["latency_p95_ms"],
        "throughput_ratio": h["messages_per_s"] / s["messages_per_s"],
    }
    print(f"federation, one server to another over TLS on loopback ({args.label or 'hearth binary ' + args.hearth_bin})")
    print(f"{'':28}{'Hearth':>12}{'Synapse':>12}{'ratio':>10}")
    print(f"{'send -> remote sync p50 ms':28}{h['latency_p50_ms']:>12.1f}{s['latency_p50_ms']:>12.1f}"
          f"{ratios['latency_p50_speedup']:>9.1f}x")
    print(f"{'send -> remote sync p95 ms':28}{h['latency_p95_ms']:>12.1f}{s['latency_p95_ms']:>12.1f}"
          f"{ratios['latency_p95_speedup']:>9.1f}x")
    print(f"{'messages/s delivered':28}{h['messages_per_s']:>12.1f}{s['messages_per_s']:>12.1f}"
          f"{ratios['throughput_ratio']:>9.1f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"label": args.label, "results": results, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
