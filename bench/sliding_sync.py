#!/usr/bin/env python3
"""Sliding sync benchmark (issue 23): Hearth against Synapse's native simplified sliding sync
(MSC4186, `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`), one server after
the other, in one run.

Each server starts fresh. Workload: user `ss000` creates 200 public rooms one after the other
(each with a name and a topic), 4 of 20 other users join each (5 members per room), then 20
messages are sent in every room by its members in turn (4,000 messages, 16 sends at a time). Then, as `ss000`:

1. **first sliding sync, window [0,19]**: the request Element X 0.18 makes, simplified to one
   list: ranges `[[0, 19]]`, `timeline_limit` 1, the `required_state` below, extensions
   e2ee, to_device, account_data, receipts and typing enabled. Each call opens a fresh
   connection (a new `conn_id`, no `pos`), so each is a first response. The very first
   (cold) call is reported apart; p50/p95 over the N calls after it; the body's size.
2. **first sliding sync, window [0,199]**: the same with all 200 rooms in the window.
3. **wake-up**: a connection (window [0,19]) long-polls with its `pos` (timeout 30 s);
   another member sends a message into one of the rooms (a different room each trial, most
   outside the window, so the room moves into it); the time from the send's answer being
   read to the long-poll's body carrying the event (0 when the long-poll answers first),
   and from the send's start. p50/p95 over K trials.
4. **/sync initial** (no `since`, no filter) of the same user: the first call of the run,
   then p50 over 5 calls each on a new device (a fresh login: Hearth answers a repeat on
   the same device from its cache of initial syncs while nothing changed, so a repeat says
   little), then the median of 3 repeats on one device; and the body's size. This is what
   sliding sync is meant to beat; the "÷ own /sync" rows compare each server's sliding
   sync p50 with its own new-device /sync p50.

Times stop at the last byte of the body (parsing is done after the clock stops), with the
client's garbage collector run before and held off during each call. Prints a Markdown
table with Hearth ÷ Synapse and writes JSON. Run by `bench/run.sh --sliding-sync`; never by
CI.
"""
import asyncio
import json
import os
import statistics
import sys
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import (  # noqa: E402
    CLK_TCK,
    client_gc_paused,
    cpu_ticks,
    each_server,
    gather_limited,
    log,
    login,
    named_server,
    pct,
    proc_status,
    register,
    report,
    run_meta,
    send,
    side_by_side_args,
    synapse_create_token,
)

PARAMS = dict(rooms=200, members_per_room=5, other_users=20, messages_per_room=20, send_concurrency=16,
              first_calls=20, wake_trials=30, long_poll_ms=30000, sync_devices=5, sync_repeats=3)
QUICK = dict(PARAMS, rooms=40, messages_per_room=5, first_calls=5, wake_trials=5)

SS_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
REQUIRED_STATE = [
    ["m.room.encryption", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.name", ""],
    ["m.room.topic", ""], ["m.room.avatar", ""], ["m.room.canonical_alias", ""], ["m.room.power_levels", ""],
    ["m.room.join_rules", ""], ["m.room.create", ""],
]
EXTENSIONS = {
    "e2ee": {"enabled": True},
    "to_device": {"enabled": True},
    "account_data": {"enabled": True},
    "receipts": {"enabled": True},
    "typing": {"enabled": True},
}


def ss_body(conn_id, last):
    return {
        "conn_id": conn_id,
        "lists": {"all": {"ranges": [[0, last]], "timeline_limit": 1, "required_state": REQUIRED_STATE}},
        "extensions": EXTENSIONS,
    }


async def ss_raw(c, body, pos=None, timeout_ms=None):
    """One sliding sync request; returns (time to the body's last byte, the end time, raw body)."""
    params = {}
    if pos is not None:
        params["pos"] = pos
    if timeout_ms is not None:
        params["timeout"] = str(timeout_ms)
    t0 = time.perf_counter()
    async with c.http.post(c.base + SS_PATH, json=body, params=params, headers=c._h(),
                           timeout=aiohttp.ClientTimeout(total=(timeout_ms or 0) / 1000 + 120)) as r:
        raw = await r.read()
        t1 = time.perf_counter()
        if r.status != 200:
            raise RuntimeError(f"sliding sync -> {r.status} {raw[:300]!r}")
    return t1 - t0, t1, raw


async def sync_raw(c):
    t0 = time.perf_counter()
    async with c.http.get(c.base + "/_matrix/client/v3/sync", params={"timeout": "0"}, headers=c._h(),
                          timeout=aiohttp.ClientTimeout(total=300)) as r:
        raw = await r.read()
        t1 = time.perf_counter()
        if r.status != 200:
            raise RuntimeError(f"sync -> {r.status} {raw[:300]!r}")
    return t1 - t0, raw


def describe_ss(d):
    """What a first answer holds, to compare the servers' answers (not only their speed)."""
    rooms = d.get("rooms", {})
    lst = d.get("lists", {}).get("all", {})
    keys, state_types, timeline, members = {}, {}, 0, []
    for r in rooms.values():
        for k in r:
            keys[k] = keys.get(k, 0) + 1
        for e in r.get("required_state", []):
            state_types[e.get("type")] = state_types.get(e.get("type"), 0) + 1
        timeline += len(r.get("timeline", []))
        members.append(sum(1 for e in r.get("required_state", []) if e.get("type") == "m.room.member"))
    return {
        "list_count": lst.get("count"),
        "rooms": len(rooms),
        "timeline_events": timeline,
        "required_state_events": sum(state_types.values()),
        "required_state_by_type": dict(sorted(state_types.items())),
        "member_events_per_room_p50": statistics.median(members) if members else None,
        "room_keys": dict(sorted(keys.items())),
        "extensions": sorted(d.get("extensions", {}).keys()),
    }


def timeline_has(d, room, event_id):
    r = d.get("rooms", {}).get(room, {})
    return any(e.get("event_id") == event_id for e in r.get("timeline", []))


async def first_calls(me, last, n, tag):
    """A cold first call, then n more on fresh connections; returns (cold s, [s], bytes, parsed)."""
    times, size, parsed = [], None, None
    for i in range(n + 1):
        with client_gc_paused():
            dt, _, raw = await ss_raw(me, ss_body(f"{tag}-{i}", last))
        times.append(dt)
        if i == 0:
            parsed = json.loads(raw)
            size = len(raw)
    return times[0], times[1:], size, parsed


async def bench_one(srv, P):
    res = {"name": srv.name, "kind": srv.kind}
    try:
        res["startup_s"] = await srv.start()
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            if srv.kind == "synapse":
                await synapse_create_token(http, srv.base, "bench-shared-secret")
            names = [f"ss{i:03d}" for i in range(P["other_users"] + 1)]
            await gather_limited(8, [register(http, srv.base, n) for n in names])
            clients = await gather_limited(8, [login(http, srv.base, n) for n in names])
            me, others = clients[0], clients[1:]

            # --- rooms, members, messages
            t0 = time.perf_counter()

            async def make_room(i):
                _, d = await me.req("POST", "/_matrix/client/v3/createRoom", {
                    "preset": "public_chat", "name": f"Bench room {i}", "topic": f"Topic of room {i}"})
                return d["room_id"]

            # One at a time: Hearth at 4af196a refuses some of one user's createRoom calls made
            # concurrently (403 "no `m.room.join_rules` event in current state"; see the README).
            rooms = [await make_room(i) for i in range(P["rooms"])]
            k = P["members_per_room"] - 1
            members = {room: [others[(i * k + j) % len(others)] for j in range(k)] for i, room in enumerate(rooms)}
            await gather_limited(16, [c.req("POST", f"/_matrix/client/v3/rooms/{room}/join", {})
                                      for room, cs in members.items() for c in cs])
            res["setup_rooms_s"] = time.perf_counter() - t0
            log(srv.name, f"{len(rooms)} rooms with {P['members_per_room']} members in {res['setup_rooms_s']:.1f}s")

            t0 = time.perf_counter()

            async def fill(room):
                people = [me] + members[room]
                for m in range(P["messages_per_room"]):
                    await send(people[m % len(people)], room, f"message {m} in this room, hello there")

            await gather_limited(P["send_concurrency"], [fill(room) for room in rooms])
            res["setup_messages_s"] = time.perf_counter() - t0
            log(srv.name, f"{len(rooms) * P['messages_per_room']} messages in {res['setup_messages_s']:.1f}s")
            await asyncio.sleep(2)  # let background work of the sends settle (Synapse's caches, Hearth's followers)

            # --- 1. first sliding sync, window [0,19]
            cpu0 = cpu_ticks(srv.pid)
            cold, times, size, d = await first_calls(me, 19, P["first_calls"], "w20")
            res["ss20_cpu_ms_per_call"] = (cpu_ticks(srv.pid) - cpu0) * 1000 / CLK_TCK / (P["first_calls"] + 1)
            res["ss20_cold_ms"] = cold * 1000
            res["ss20_p50_ms"] = pct(times, 50) * 1000
            res["ss20_p95_ms"] = pct(times, 95) * 1000
            res["ss20_kib"] = size / 1024
            res["ss20_answer"] = describe_ss(d)
            res["ss20_times_ms"] = [t * 1000 for t in times]
            log(srv.name, f"sliding sync [0,19]: cold {cold * 1000:.1f} ms, p50 {res['ss20_p50_ms']:.1f} ms, "
                f"{size / 1024:.1f} KiB, {res['ss20_answer']['rooms']} rooms, count {res['ss20_answer']['list_count']}")

            # --- 2. first sliding sync, window [0,199]
            last = P["rooms"] - 1
            cpu0 = cpu_ticks(srv.pid)
            cold, times, size, d = await first_calls(me, last, P["first_calls"], "w200")
            res["ss200_cpu_ms_per_call"] = (cpu_ticks(srv.pid) - cpu0) * 1000 / CLK_TCK / (P["first_calls"] + 1)
            res["ss200_cold_ms"] = cold * 1000
            res["ss200_p50_ms"] = pct(times, 50) * 1000
            res["ss200_p95_ms"] = pct(times, 95) * 1000
            res["ss200_kib"] = size / 1024
            res["ss200_answer"] = describe_ss(d)
            res["ss200_times_ms"] = [t * 1000 for t in times]
            log(srv.name, f"sliding sync [0,{last}]: cold {cold * 1000:.1f} ms, p50 {res['ss200_p50_ms']:.1f} ms, "
                f"{size / 1024:.1f} KiB, {res['ss200_answer']['rooms']} rooms")

            # --- 3. wake-up of a long-polling sliding sync
            body = ss_body("wake", 19)
            _, _, raw = await ss_raw(me, body)
            pos = json.loads(raw)["pos"]
            wakes, from_start, extra_polls, wake_kib = [], [], 0, []
            for t in range(P["wake_trials"]):
                # catch up first (nothing should be pending), so the long-poll below waits
                _, _, raw = await ss_raw(me, body, pos, 0)
                pos = json.loads(raw)["pos"]
                room = rooms[(t * 7 + 3) % len(rooms)]
                sender = members[room][t % len(members[room])]
                sent = {}
                done = asyncio.Event()

                async def poll(p):
                    nonlocal extra_polls
                    while True:
                        _, t_end, raw = await ss_raw(me, body, p, P["long_poll_ms"])
                        d = json.loads(raw)
                        p = d["pos"]
                        await done.wait()
                        if timeline_has(d, room, sent["id"]):
                            return t_end, p, len(raw)
                        extra_polls += 1

                task = asyncio.create_task(poll(pos))
                await asyncio.sleep(0.25)
                t_start = time.perf_counter()
                sent["id"] = await send(sender, room, f"wake {t}")
                t_ack = time.perf_counter()
                done.set()
                t_recv, pos, n = await task
                wakes.append(max(0.0, t_recv - t_ack))
                from_start.append(t_recv - t_start)
                wake_kib.append(n / 1024)
            res["wake_p50_ms"] = pct(wakes, 50) * 1000
            res["wake_p95_ms"] = pct(wakes, 95) * 1000
            res["wake_from_start_p50_ms"] = pct(from_start, 50) * 1000
            res["wake_from_start_p95_ms"] = pct(from_start, 95) * 1000
            res["wake_body_kib_p50"] = pct(wake_kib, 50)
            res["wake_extra_polls"] = extra_polls
            log(srv.name, f"wake-up p50 {res['wake_p50_ms']:.2f} ms, from send start {res['wake_from_start_p50_ms']:.2f} ms")

            # --- 4. /sync initial, same user: the first call of the run, then one call on each
            # of S new devices (fresh logins: Hearth answers a repeat on the same device from
            # its cache of initial syncs while nothing changed), then S repeats on the last
            # device (cached on Hearth; for context).
            with client_gc_paused():
                dt, raw = await sync_raw(me)
            res["sync_first_ms"] = dt * 1000
            fresh = []
            for i in range(P["sync_devices"]):
                dev = await login(http, srv.base, names[0])
                with client_gc_paused():
                    dt, raw = await sync_raw(dev)
                fresh.append(dt)
            repeats = []
            for i in range(P["sync_repeats"]):
                with client_gc_paused():
                    dt, raw = await sync_raw(dev)
                repeats.append(dt)
            d = json.loads(raw)
            res["sync_new_device_p50_ms"] = pct(fresh, 50) * 1000
            res["sync_new_device_times_ms"] = [t * 1000 for t in fresh]
            res["sync_repeat_ms"] = statistics.median(repeats) * 1000
            res["sync_kib"] = len(raw) / 1024
            res["sync_rooms"] = len(d.get("rooms", {}).get("join", {}))
            log(srv.name, f"/sync initial: first {res['sync_first_ms']:.1f} ms, new device p50 "
                f"{res['sync_new_device_p50_ms']:.1f} ms, repeat {res['sync_repeat_ms']:.1f} ms, "
                f"{res['sync_kib']:.0f} KiB, {res['sync_rooms']} rooms")
            res["ss20_over_sync_time"] = res["ss20_p50_ms"] / res["sync_new_device_p50_ms"]
            res["ss20_over_sync_size"] = res["ss20_kib"] / res["sync_kib"]
            res["ss200_over_sync_time"] = res["ss200_p50_ms"] / res["sync_new_device_p50_ms"]
            res["ss200_over_sync_size"] = res["ss200_kib"] / res["sync_kib"]
            res["peak_rss_mib"] = proc_status(srv.pid, "VmHWM") / 2**20
    finally:
        srv.stop()
    return res


ROWS = [
    ("sliding sync [0,19], first call of the run (ms)", "ss20_cold_ms", "{:.1f}", "low"),
    ("sliding sync [0,19], new connection, p50 (ms)", "ss20_p50_ms", "{:.1f}", "low"),
    ("sliding sync [0,19], new connection, p95 (ms)", "ss20_p95_ms", "{:.1f}", "low"),
    ("sliding sync [0,19], server CPU per call (ms)", "ss20_cpu_ms_per_call", "{:.1f}", "low"),
    ("sliding sync [0,19], body (KiB)", "ss20_kib", "{:.1f}", "low"),
    ("sliding sync [0,199], first call of the run (ms)", "ss200_cold_ms", "{:.1f}", "low"),
    ("sliding sync [0,199], new connection, p50 (ms)", "ss200_p50_ms", "{:.1f}", "low"),
    ("sliding sync [0,199], new connection, p95 (ms)", "ss200_p95_ms", "{:.1f}", "low"),
    ("sliding sync [0,199], server CPU per call (ms)", "ss200_cpu_ms_per_call", "{:.1f}", "low"),
    ("sliding sync [0,199], body (KiB)", "ss200_kib", "{:.1f}", "low"),
    ("wake-up, send answered → long-poll answered, p50 (ms)", "wake_p50_ms", "{:.2f}", "low"),
    ("wake-up, send answered → long-poll answered, p95 (ms)", "wake_p95_ms", "{:.2f}", "low"),
    ("wake-up, send start → long-poll answered, p50 (ms)", "wake_from_start_p50_ms", "{:.2f}", "low"),
    ("wake-up, send start → long-poll answered, p95 (ms)", "wake_from_start_p95_ms", "{:.2f}", "low"),
    ("/sync initial, first (ms)", "sync_first_ms", "{:.1f}", "low"),
    ("/sync initial, new device, p50 of 5 (ms)", "sync_new_device_p50_ms", "{:.1f}", "low"),
    ("/sync initial, repeat on one device, median of 3 (ms)", "sync_repeat_ms", "{:.1f}", "low"),
    ("/sync initial, body (KiB)", "sync_kib", "{:.0f}", "low"),
    ("sliding [0,19] p50 ÷ own /sync new device p50, time", "ss20_over_sync_time", "{:.3f}", "low"),
    ("sliding [0,19] ÷ own /sync, size", "ss20_over_sync_size", "{:.3f}", "low"),
    ("sliding [0,199] p50 ÷ own /sync new device p50, time", "ss200_over_sync_time", "{:.3f}", "low"),
    ("sliding [0,199] ÷ own /sync, size", "ss200_over_sync_size", "{:.3f}", "low"),
    ("setup: 200 rooms and their joins (s)", "setup_rooms_s", "{:.1f}", "low"),
    ("setup: messages (s)", "setup_messages_s", "{:.1f}", "low"),
    ("peak RSS (MiB)", "peak_rss_mib", "{:.1f}", "low"),
]


def main():
    a = side_by_side_args(__doc__.split("\n\n")[0], quick_help="40 rooms, 5 messages each: a smoke test only").parse_args()
    P = QUICK if a.quick else PARAMS
    root = os.path.join(a.root, "sliding-sync")
    os.makedirs(root, exist_ok=True)
    t = time.perf_counter()
    results = asyncio.run(each_server(a.servers, 18500, lambda name, port: named_server(a, name, root, port),
                                      lambda srv: bench_one(srv, P)))
    meta = run_meta(a, P, t, request=ss_body("<fresh>", 19))
    report(f"Sliding sync, Hearth vs Synapse — {meta['date_utc']}, build: {meta['build']}, "
           f"{P['rooms']} rooms × {P['members_per_room']} members × {P['messages_per_room']} messages",
           results, ROWS, meta, a.json)
    for r in results:
        if "error" in r:
            continue
        for key in ("ss20_answer", "ss200_answer"):
            print(f"\n{r['name']} {key}: {json.dumps(r[key])}")
        print(f"{r['name']}: /sync rooms {r['sync_rooms']}, wake-up extra polls {r['wake_extra_polls']}, "
              f"wake-up body p50 {r['wake_body_kib_p50']:.1f} KiB")

if __name__ == "__main__":
    main()
