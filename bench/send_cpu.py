#!/usr/bin/env python3
"""The server CPU a sent message costs, background work included, Hearth builds side by side
(issue 24, point 2).

The main workload's quick mode sends only 105 messages, and the kernel counts CPU in 10 ms
ticks: one tick is 0.1 ms per message there, so its figure cannot show a step of that size.
This benchmark sends more, the same way: each Hearth binary given is started in turn on its
own copy of one data directory the quick workload left (`bench/workload.py --quick --root
DIR`, which keeps `DIR/hearth-rocksdb/db`: 21 users, all in 5 rooms), every user logs in,
and then all users send at once, each its messages one after another, round-robin over the
five rooms. The server's CPU is read from `/proc/<pid>/stat` from the first send until the
background work the sends left (push evaluation, notification rows, search indexing) has
finished. Binaries alternate in rounds, so the machine's drift falls on all alike.

    bench/send_cpu.py --db /tmp/hearth-bench-q/hearth-rocksdb/db BIN_A BIN_B [...]
        [--msgs 50] [--rounds 3] [--perf OUT.data]

Prints, per binary, the CPU per message with and without the background work, the send
latency p50 (median over the rounds of each round's figure) and the ratios to the first
binary, what the data directory grew by per message (RocksDB's log and tables and the
search index; the log's apparent size), and the group commit's disk syncs per message (read
from the server's `/metrics` listener, started on the port after the client one).
`--perf` records the sends and the background work (not the logins) of the last binary's
last round with DWARF call graphs, at `BENCH_PERF_FREQ` samples a second (999 unless set).
"""

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from first_sync import PORT, start, stop, wait_up  # noqa: E402
from workload import PASSWORD, cpu_ticks, CLK_TCK, dir_bytes, pct, settle  # noqa: E402


async def login(http, base, user):
    async with http.post(base + "/_matrix/client/v3/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": PASSWORD}) as r:
        if r.status != 200:
            raise RuntimeError(f"login {user} -> {r.status} {await r.text()}")
        return (await r.json())["access_token"]


async def disk_syncs(http, port):
    """The group commit's disk syncs so far, from the server's metrics listener."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("hearth_database_syncs_total"):
                return float(line.split()[-1])
    raise RuntimeError("no hearth_database_syncs_total in /metrics")


async def one_round(binary, db_template, users, msgs, perf_out, rnd):
    work, db, proc, log = start(binary, db_template, "hearth-send-cpu-", {"HEARTH_METRICS_PORT": str(PORT + 1)})
    base = f"http://127.0.0.1:{PORT}"
    perf = None
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await wait_up(http, base, proc)
            tokens = [await login(http, base, u) for u in users]
            headers = [{"Authorization": f"Bearer {t}"} for t in tokens]
            async with http.get(base + "/_matrix/client/v3/joined_rooms", headers=headers[-1]) as r:
                rooms = (await r.json())["joined_rooms"]
            if len(rooms) < 2:
                raise RuntimeError(f"{users[-1]} is in {len(rooms)} rooms: not the quick workload's data?")
            await settle(proc.pid)
            if perf_out:
                perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", os.environ.get("BENCH_PERF_FREQ", "999"), "--call-graph", "dwarf",
                                         "-p", str(proc.pid), "-o", perf_out],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await asyncio.sleep(1)
            lat = []

            async def sender(i, h):
                for j in range(msgs):
                    room = rooms[(i + j) % len(rooms)]
                    s0 = time.perf_counter()
                    async with http.put(f"{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/r{rnd}-{i}-{j}",
                                        json={"msgtype": "m.text", "body": f"message {j} from {users[i]}"},
                                        headers=h) as r:
                        await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"send -> {r.status}")
                    lat.append(time.perf_counter() - s0)

            b0 = dir_bytes(db)
            s0 = await disk_syncs(http, PORT + 1)
            c0 = cpu_ticks(proc.pid)
            t0 = time.perf_counter()
            await asyncio.gather(*(sender(i, h) for i, h in enumerate(headers)))
            wall = time.perf_counter() - t0
            c1 = cpu_ticks(proc.pid)
            await settle(proc.pid)
            c2 = cpu_ticks(proc.pid)
            b1 = dir_bytes(db)
            s1 = await disk_syncs(http, PORT + 1)
    finally:
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(120)
        stop(work, proc, log)
    n = len(lat)
    return {"cpu_ms": (c1 - c0) * 1000 / CLK_TCK / n, "cpu_settled_ms": (c2 - c0) * 1000 / CLK_TCK / n,
            "p50_ms": pct(lat, 50) * 1000, "per_s": n / wall, "n": n, "bytes": (b1 - b0) / n,
            "syncs": (s1 - s0) / n}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--db", required=True, help="the Hearth RocksDB data directory the quick workload left")
    ap.add_argument("--msgs", type=int, default=50, help="messages each user sends")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=21, help="users u000… sending")
    ap.add_argument("--perf", default=None)
    a = ap.parse_args()
    users = [f"u{i:03d}" for i in range(a.users)]
    keys = ("cpu_settled_ms", "cpu_ms", "p50_ms", "per_s", "bytes", "syncs")
    figures = {b: [] for b in a.binaries}
    for rnd in range(a.rounds):
        for i, b in enumerate(a.binaries):
            last = rnd == a.rounds - 1 and i == len(a.binaries) - 1
            f = asyncio.run(one_round(b, a.db, users, a.msgs, a.perf if last else None, rnd))
            figures[b].append(f)
            print(f"round {rnd + 1} {b}: {f['n']} messages, CPU {f['cpu_settled_ms']:.3f} ms/message in all, "
                  f"{f['cpu_ms']:.3f} while sending; {f['bytes']:.0f} bytes written/message, {f['syncs']:.2f} disk syncs; send p50 {f['p50_ms']:.2f} ms, {f['per_s']:.0f}/s", flush=True)
    ref = None
    for b in a.binaries:
        med = {k: statistics.median(f[k] for f in figures[b]) for k in keys}
        ref = ref or med
        print(f"{b}: CPU {med['cpu_settled_ms']:.3f} ms/message in all "
              f"({med['cpu_settled_ms'] / ref['cpu_settled_ms']:.2f}×), {med['cpu_ms']:.3f} while sending "
              f"({med['cpu_ms'] / ref['cpu_ms']:.2f}×); {med['bytes']:.0f} bytes and {med['syncs']:.2f} disk syncs/message; send p50 {med['p50_ms']:.2f} ms, {med['per_s']:.0f}/s")


if __name__ == "__main__":
    main()
