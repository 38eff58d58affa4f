#!/usr/bin/env python3
"""Push benchmark (issue 20): Hearth against Synapse, one server after the other, in one run.

Each server starts fresh; 100 users register and log in and join one room. A push gateway
runs in this process on loopback (aiohttp): it answers `{"rejected": []}` at once and
notes when each push arrived, by pushkey and event id. Both servers are told loopback is
an allowed destination (Hearth's `ip_range_allowlist`, Synapse's `ip_range_whitelist`).

1. **without pushers**: user 0 sends 20 messages, one at a time (each answered before the
   next); the server's CPU time over the phase, after a 2 s settle, ÷ 20 = CPU per sent
   event when nobody has a pusher;
2. every other user (99) registers a pusher at the gateway; one message warms the path
   (every push of it awaited, untimed);
3. **with pushers**: 20 more messages, one at a time; for each, the time from just before
   its send to the arrival of each of its 99 pushes. Reported: p50 and p95 over all
   20 × 99 arrivals, the time until the last push of a message (p50 over messages), the
   server's CPU per sent event over the phase (each message's pushes all in before the
   next is sent), and the extra CPU per event that push costs (phase 3 − phase 1).

Prints a Markdown table with Hearth ÷ Synapse and writes JSON. Run by
`bench/run.sh --push`; never by CI.
"""
import asyncio
import os
import sys
import time

import aiohttp
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import (  # noqa: E402
    CLK_TCK,
    cpu_ticks,
    each_server,
    gather_limited,
    login,
    named_server,
    pct,
    register,
    report,
    run_meta,
    send,
    side_by_side_args,
    synapse_create_token,
)

PARAMS = dict(users=100, messages=20, settle_s=2.0, push_wait_s=60)


class Gateway:
    def __init__(self):
        self.arrivals = {}  # (event_id, pushkey) -> perf_counter time
        self.events = asyncio.Queue()
        self.url = ""
        self.runner = None

    async def start(self):
        app = web.Application()
        app.router.add_post("/_matrix/push/v1/notify", self.notify)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/_matrix/push/v1/notify"

    async def notify(self, request):
        now = time.perf_counter()
        body = await request.json()
        n = body.get("notification", {})
        event = n.get("event_id")
        if event:
            for d in n.get("devices", []):
                self.arrivals.setdefault((event, d.get("pushkey")), now)
            self.events.put_nowait(event)
        return web.json_response({"rejected": []})

    async def wait_all(self, event, keys, timeout):
        deadline = time.perf_counter() + timeout
        while not all((event, k) in self.arrivals for k in keys):
            if time.perf_counter() > deadline:
                got = sum((event, k) in self.arrivals for k in keys)
                raise RuntimeError(f"only {got} of {len(keys)} pushes of {event} arrived")
            await asyncio.sleep(0.001)

    async def stop(self):
        await self.runner.cleanup()


async def bench_one(srv, gw):
    res = {"name": srv.name, "kind": srv.kind}
    n_users, n_msgs = PARAMS["users"], PARAMS["messages"]
    try:
        res["startup_s"] = await srv.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as http:
            if srv.kind == "synapse":
                await synapse_create_token(http, srv.base, "bench-shared-secret")
            names = [f"push{i}" for i in range(n_users)]
            await gather_limited(8, [register(http, srv.base, n) for n in names])
            clients = await gather_limited(8, [login(http, srv.base, n) for n in names])
            sender, others = clients[0], clients[1:]
            _, d = await sender.req("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})
            room = d["room_id"]
            await gather_limited(16, [c.req("POST", f"/_matrix/client/v3/rooms/{room}/join", {}) for c in others])

            # 1. no pushers
            t0 = cpu_ticks(srv.pid)
            for i in range(n_msgs):
                await send(sender, room, f"quiet {i}")
            await asyncio.sleep(PARAMS["settle_s"])
            res["cpu_per_event_no_pushers_ms"] = (cpu_ticks(srv.pid) - t0) * 1000 / CLK_TCK / n_msgs

            # 2. pushers, warm-up
            keys = []
            for i, c in enumerate(others):
                key = f"key-{i}"
                keys.append(key)
                await c.req("POST", "/_matrix/client/v3/pushers/set", {
                    "kind": "http", "app_id": "bench", "pushkey": key, "app_display_name": "bench",
                    "device_display_name": "bench", "lang": "en", "data": {"url": gw.url},
                })
            warm = await send(sender, room, "warm-up")
            await gw.wait_all(warm, keys, PARAMS["push_wait_s"])

            # 3. with pushers
            latencies, last = [], []
            t0 = cpu_ticks(srv.pid)
            for i in range(n_msgs):
                start = time.perf_counter()
                event = await send(sender, room, f"ring {i}")
                await gw.wait_all(event, keys, PARAMS["push_wait_s"])
                times = [gw.arrivals[(event, k)] - start for k in keys]
                latencies += times
                last.append(max(times))
            res["cpu_per_event_pushers_ms"] = (cpu_ticks(srv.pid) - t0) * 1000 / CLK_TCK / n_msgs
            res["push_p50_ms"] = pct(latencies, 50) * 1000
            res["push_p95_ms"] = pct(latencies, 95) * 1000
            res["last_push_p50_ms"] = pct(last, 50) * 1000
            res["push_cpu_per_event_ms"] = res["cpu_per_event_pushers_ms"] - res["cpu_per_event_no_pushers_ms"]
            res["pushes"] = len(latencies)
    finally:
        srv.stop()
    return res


ROWS = [
    ("push latency, send → gateway, p50 (ms)", "push_p50_ms", "{:.1f}", "low"),
    ("push latency, send → gateway, p95 (ms)", "push_p95_ms", "{:.1f}", "low"),
    ("send → last of 99 pushes, p50 (ms)", "last_push_p50_ms", "{:.1f}", "low"),
    ("server CPU per sent event, 99 pushers (ms)", "cpu_per_event_pushers_ms", "{:.2f}", "low"),
    ("server CPU per sent event, no pushers (ms)", "cpu_per_event_no_pushers_ms", "{:.2f}", "low"),
    ("extra CPU per sent event for push (ms)", "push_cpu_per_event_ms", "{:.2f}", "low"),
]


def main():
    a = side_by_side_args(__doc__.split("\n\n")[0]).parse_args()
    root = os.path.join(a.root, "push")
    os.makedirs(root, exist_ok=True)
    template = os.path.join(root, "homeserver-push.yaml.in")
    with open(a.synapse_template) as f, open(template, "w") as out:
        out.write(f.read() + "\n# bench/push.py: the gateway is on loopback\nip_range_whitelist: ['127.0.0.1']\n")

    def make(name, port):
        srv = named_server(a, name, root, port, template)
        if srv.kind == "hearth":
            srv.env["HEARTH_IP_RANGE_ALLOWLIST"] = '["127.0.0.0/8"]'
        return srv

    async def run_all():
        gw = Gateway()
        await gw.start()
        results = await each_server(a.servers, 18300, make, lambda srv: bench_one(srv, gw))
        await gw.stop()
        return results

    t = time.perf_counter()
    results = asyncio.run(run_all())
    meta = run_meta(a, PARAMS, t)
    report(f"Push, Hearth vs Synapse — {meta['date_utc']}, build: {meta['build']}", results, ROWS, meta, a.json)

if __name__ == "__main__":
    main()
