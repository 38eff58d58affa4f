#!/usr/bin/env python3
"""Search benchmark (issue 21): Hearth against Synapse, one server after the other, in one run.

Each server starts fresh; one user fills one room with N messages (full: 100,000; quick:
10,000) of words drawn from a fixed vocabulary (Zipf-like: a few common words, many rare
ones), sent one at a time as a client sends into one room (`--fill-concurrency`). Then:

1. **searchable**: the time from the last send until a word only the last message holds
   is found (Hearth indexes behind the timeline; Synapse as it stores);
2. **search**: 200 searches, one at a time, `order_by` rank, 10 results: a common word,
   a middling one, a rare one and a two-word phrase in turn; p50 and p95 latency; then
   the same with `order_by` recent;
3. **/messages with bundled aggregations**: every tenth message gets an edit and a
   reaction first, then the room is read backwards 100 events at a time to its start;
   p50 and p95 per page;
4. the index's size on disk (Hearth: `search.sqlite3`; Synapse keeps its index inside its
   database: on SQLite the database is reported as a whole, on PostgreSQL the
   `event_search` table with its indexes).

The full run's Synapse is `synapse-postgres` (bench/run.sh --search): on SQLite Synapse
slowed to 8.7 messages a second by 44,000 messages and could not be filled to 100,000 in
a session; PostgreSQL is its database for anything beyond a trial.

Prints a Markdown table with Hearth ÷ Synapse and writes JSON. Run by
`bench/run.sh --search`; never by CI.
"""
import asyncio
import os
import random
import sys
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import (  # noqa: E402
    dir_bytes,
    each_server,
    gather_limited,
    login,
    named_server,
    pct,
    postgres_relation_mib,
    register,
    report,
    run_meta,
    side_by_side_args,
    synapse_create_token,
    txn,
)

FULL = dict(messages=100_000, searches=200, page=100)
QUICK = dict(messages=10_000, searches=100, page=100)


def vocabulary(seed=7):
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = set()
    while len(words) < 5000:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(4, 9))))
    return sorted(words)


def message(rng, words, i):
    # Zipf-like: the index of a word is drawn with probability ~ 1/rank.
    n = rng.randint(5, 14)
    picked = [words[min(int(rng.paretovariate(1.0)) - 1, len(words) - 1)] for _ in range(n)]
    return f"{' '.join(picked)} #{i}"


async def search(c, term, order):
    body = {"search_categories": {"room_events": {"search_term": term, "order_by": order, "filter": {"limit": 10}}}}
    start = time.perf_counter()
    _, d = await c.req("POST", "/_matrix/client/v3/search", body)
    return time.perf_counter() - start, d["search_categories"]["room_events"]


async def bench_one(srv, P):
    res = {"name": srv.name, "kind": srv.kind}
    words = vocabulary()
    rng = random.Random(11)
    try:
        res["startup_s"] = await srv.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:
            if srv.kind == "synapse":
                await synapse_create_token(http, srv.base, "bench-shared-secret")
            await register(http, srv.base, "searcher")
            c = await login(http, srv.base, "searcher")
            _, d = await c.req("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"})
            room = d["room_id"]
            n = P["messages"]
            texts = [message(rng, words, i) for i in range(n)]
            ids = [None] * n
            started = time.perf_counter()

            async def put(i):
                _, d = await c.req("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn()}",
                                   {"msgtype": "m.text", "body": texts[i]})
                ids[i] = d["event_id"]

            for chunk in range(0, n, 1000):
                await gather_limited(P["fill_concurrency"], [put(i) for i in range(chunk, min(n, chunk + 1000))])
            res["fill_s"] = time.perf_counter() - started
            last = f"zzzfinalmarker{rng.randint(0, 10**9)}"
            t0 = time.perf_counter()
            await c.req("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn()}",
                        {"msgtype": "m.text", "body": last})
            while (await search(c, last, "rank"))[1]["count"] < 1:
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError("the last message never became searchable")
                await asyncio.sleep(0.05)
            res["searchable_after_s"] = time.perf_counter() - t0

            terms = [words[0], words[30], words[2000], f"{words[1]} {words[5]}"]
            for order in ("rank", "recent"):
                times, counts = [], []
                for i in range(P["searches"]):
                    took, answer = await search(c, terms[i % len(terms)], order)
                    times.append(took)
                    counts.append(answer["count"])
                res[f"search_{order}_p50_ms"] = pct(times, 50) * 1000
                res[f"search_{order}_p95_ms"] = pct(times, 95) * 1000
            res["matches_common_word"] = counts[0]

            # Aggregations: an edit and a reaction on every tenth message.
            async def relate(i):
                target = ids[i]
                await c.req("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn()}", {
                    "msgtype": "m.text", "body": "* edited", "m.new_content": {"msgtype": "m.text", "body": "edited"},
                    "m.relates_to": {"rel_type": "m.replace", "event_id": target}})
                await c.req("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.reaction/{txn()}", {
                    "m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "+1"}})

            await gather_limited(P["fill_concurrency"], [relate(i) for i in range(0, n, 10)])
            pages, token = [], None
            while True:
                params = {"dir": "b", "limit": str(P["page"])}
                if token:
                    params["from"] = token
                start = time.perf_counter()
                _, d = await c.req("GET", f"/_matrix/client/v3/rooms/{room}/messages", params=params)
                pages.append(time.perf_counter() - start)
                token = d.get("end")
                if not d.get("chunk") or not token:
                    break
            res["messages_pages"] = len(pages)
            res["messages_page_p50_ms"] = pct(pages, 50) * 1000
            res["messages_page_p95_ms"] = pct(pages, 95) * 1000
        if srv.kind == "hearth":
            index = os.path.join(srv.db_dir, "search.sqlite3")
            res["index_mib"] = sum(
                os.path.getsize(index + s) for s in ("", "-wal") if os.path.exists(index + s)) / 2**20
        else:
            res["database_mib"] = dir_bytes(srv.db_dir) / 2**20
            if getattr(srv, "pg_sock", None):
                # On PostgreSQL the index is a table of its own (`event_search`, with its GIN index).
                res["index_mib"] = postgres_relation_mib(srv, "event_search")
    finally:
        srv.stop()
    return res


ROWS = [
    ("search, rank order, p50 (ms)", "search_rank_p50_ms", "{:.1f}", "low"),
    ("search, rank order, p95 (ms)", "search_rank_p95_ms", "{:.1f}", "low"),
    ("search, newest first, p50 (ms)", "search_recent_p50_ms", "{:.1f}", "low"),
    ("search, newest first, p95 (ms)", "search_recent_p95_ms", "{:.1f}", "low"),
    ("last message searchable after (s)", "searchable_after_s", "{:.2f}", "low"),
    ("/messages page of 100 with aggregations, p50 (ms)", "messages_page_p50_ms", "{:.1f}", "low"),
    ("/messages page of 100 with aggregations, p95 (ms)", "messages_page_p95_ms", "{:.1f}", "low"),
    ("filling the room (s)", "fill_s", "{:.1f}", "low"),
]


def main():
    ap = side_by_side_args(__doc__.split("\n\n")[0], quick_help="")
    ap.add_argument("--fill-concurrency", type=int, default=1,
                    help="sends in flight while filling the room (default 1). Synapse builds each of "
                         "concurrent sends on the same forward extremities, so with 16 the room grew "
                         "10,740 extremities by 32,000 messages and every send slowed with them")
    ap.add_argument("--messages", type=int, default=None, help="messages in the room (default 100,000; quick 10,000)")
    a = ap.parse_args()
    P = dict(QUICK if a.quick else FULL, fill_concurrency=max(1, a.fill_concurrency))
    if a.messages:
        P["messages"] = a.messages
    root = os.path.join(a.root, "search")
    os.makedirs(root, exist_ok=True)
    t = time.perf_counter()
    results = asyncio.run(each_server(a.servers, 18400, lambda name, port: named_server(a, name, root, port),
                                      lambda srv: bench_one(srv, P)))
    meta = run_meta(a, P, t)
    report(f"Search and aggregations, Hearth vs Synapse — {meta['date_utc']}, build: {meta['build']}, "
           f"{P['messages']} messages", results, ROWS, meta, a.json)
    for r in results:
        for key in ("index_mib", "database_mib", "matches_common_word"):
            if key in r:
                print(f"{r['name']}: {key} = {r[key]:.1f}" if isinstance(r[key], float) else f"{r['name']}: {key} = {r[key]}")

if __name__ == "__main__":
    main()
