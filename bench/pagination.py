#!/usr/bin/env python3
"""Hearth builds against each other (A/B): reading a 10,000-message room back through `/messages`.

For each round and each binary in turn (interleaved, so a slow minute of the machine hits
every build alike): a fresh RocksDB server, one user fills one room with 10,000 messages
(32 sends at a time), then reads it backwards 100 events a page to its start, nine times.
Per binary it prints the median over rounds of each round's median pass, the fastest pass,
and the median server CPU per pass (10 ms ticks). Nothing in the room relates to anything,
so this is what serving an event costs with no aggregation to bundle: the figure issue 21
bounds (bundled aggregations may not slow it by more than a tenth). Not part of CI; the
main comparison with Synapse is `bench/run.sh`.

    bench/pagination.py --rounds 6 BIN_A BIN_B ...
"""
import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import CLK_TCK, cpu_ticks, gather_limited, hearth_server, login, register, send  # noqa: E402

MESSAGES = 10_000
PASSES = 9


async def one_round(binary, root, port):
    shutil.rmtree(root, ignore_errors=True)
    srv = hearth_server("hearth-rocksdb", binary, "rocksdb", root, port)
    await srv.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            await register(http, srv.base, "pager")
            c = await login(http, srv.base, "pager")
            _, d = await c.req("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})
            room = d["room_id"]
            await gather_limited(32, [send(c, room, f"fill {k} " + "x" * 64) for k in range(MESSAGES)])
            passes, cpus = [], []
            for _ in range(PASSES):
                c0, t0, frm, seen = cpu_ticks(srv.pid), time.perf_counter(), None, 0
                while True:
                    params = {"dir": "b", "limit": "100"}
                    if frm:
                        params["from"] = frm
                    _, d = await c.req("GET", f"/_matrix/client/v3/rooms/{room}/messages", params=params)
                    seen += len(d.get("chunk", []))
                    if not d.get("chunk") or not d.get("end") or d.get("end") == frm:
                        break
                    frm = d["end"]
                passes.append(time.perf_counter() - t0)
                cpus.append((cpu_ticks(srv.pid) - c0) * 1000 / CLK_TCK)
            if seen < MESSAGES:
                raise RuntimeError(f"{binary}: read {seen} events back, sent {MESSAGES}")
            return statistics.median(passes), min(passes), statistics.median(cpus)
    finally:
        srv.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--root", default="/tmp/hearth-bench/pagination")
    a = ap.parse_args()
    results = {b: [] for b in a.binaries}
    for r in range(a.rounds):
        for b in a.binaries:
            results[b].append(asyncio.run(one_round(b, a.root, 18777)))
            print(f"round {r + 1}: {b}: median pass {results[b][-1][0]:.3f} s", file=sys.stderr, flush=True)
    print("| binary | median pass (s) | fastest pass (s) | server CPU per pass (ms) |")
    print("|---|---|---|---|")
    for b, rs in results.items():
        print(f"| {b} | {statistics.median(r[0] for r in rs):.3f} | {min(r[1] for r in rs):.3f} | "
              f"{statistics.median(r[2] for r in rs):.0f} |")


if __name__ == "__main__":
    main()
