#!/usr/bin/env python3
"""The first initial /sync of a new device, Hearth builds side by side (issue 24).

A focused benchmark of `sync::assemble` and the answer's serialisation: each Hearth binary
given is started in turn on its own copy of one data directory the main workload left
(`bench/workload.py --root DIR`, which keeps `DIR/hearth-rocksdb/db` after its run). For
each sync a user logs in on a new device, so nothing a device or user synced before is
cached, and then the device's first `/sync` is timed to the last byte of the body; the
server's CPU is read from its threads' `schedstat` around the sync alone (the login's password
hash is outside). Binaries alternate in rounds, so the machine's drift falls on all alike.

Each round starts the server afresh and, unless `--syncs` says more, syncs each user once:
a user's unread counts are kept in the server's memory once counted, so a second sync of
the same user in one process counts nothing, where the workload's first syncs (each user's
first ever) count every room from the user's join. (Before 2026-12-07, session 15, the
default was 60 syncs of 20 users: two thirds of them had their counts kept.)

    bench/first_sync.py --db /tmp/hearth-bench/hearth-rocksdb/db BIN_A BIN_B [...]
        [--syncs N] [--rounds 6] [--perf OUT]

Prints, per binary, p50/p95 of the syncs and the server's CPU per sync (median over the
rounds of each round's figure), and the ratios to the first binary. `--perf OUT` records
the syncs (not the logins) of every round of the last binary, at 4,999 samples a second,
with DWARF call graphs, one file per round (`OUT.1`, `OUT.2`, …: read them with
`perf script -i` each, one after another).
"""

import argparse
import asyncio
import gc
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import PASSWORD, SERVER_NAME, TOKEN, cpu_ns, pct  # noqa: E402

PORT = 18931


async def wait_up(http, base, proc):
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError("hearth exited during start-up")
        try:
            async with http.get(base + "/_matrix/client/versions") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("hearth did not start")


def start(binary, db_template, prefix, extra_env=None):
    """Starts `binary` on a copy of `db_template` (RocksDB, fsync on, loopback, no
    federation), with `extra_env` added to its environment. Returns the work directory,
    the data directory, the process and its log."""
    work = tempfile.mkdtemp(prefix=prefix)
    db = os.path.join(work, "db")
    shutil.copytree(db_template, db)
    env = dict(os.environ)
    env.update({
        "CONDUIT_CONFIG": "", "CONDUIT_SERVER_NAME": SERVER_NAME, "CONDUIT_DATABASE_PATH": db,
        "CONDUIT_DATABASE_BACKEND": "rocksdb", "CONDUIT_PORT": str(PORT), "CONDUIT_ADDRESS": "127.0.0.1",
        "CONDUIT_ALLOW_REGISTRATION": "true", "CONDUIT_REGISTRATION_TOKEN": TOKEN,
        "HEARTH_DATABASE_FSYNC": "true", "CONDUIT_ALLOW_FEDERATION": "false", "HEARTH_LOG": "warn",
    })
    env.update(extra_env or {})
    env.pop("RUST_LOG", None)
    log = open(os.path.join(work, "log"), "w")
    proc = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    return work, db, proc, log


def stop(work, proc, log):
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    log.close()
    shutil.rmtree(work, ignore_errors=True)


async def one_round(binary, db_template, syncs, users, perf_out):
    work, _, proc, log = start(binary, db_template, "hearth-first-sync-")
    base = f"http://127.0.0.1:{PORT}"
    times, cpu = [], 0
    perf = None
    try:
        async with aiohttp.ClientSession() as http:
            await wait_up(http, base, proc)
            if perf_out:
                # Started disabled, enabled around each sync through perf's control FIFO,
                # so the logins' password hashing is not recorded.
                ctl = os.path.join(work, "perf-ctl")
                os.mkfifo(ctl)
                perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4999", "--call-graph", "dwarf",
                                         "-D", "-1", "--control", f"fifo:{ctl}", "-p", str(proc.pid),
                                         "-o", perf_out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                perf_ctl = open(ctl, "w")
                await asyncio.sleep(1)
            for k in range(syncs):
                user = users[k % len(users)]
                async with http.post(base + "/_matrix/client/v3/login", json={
                        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                        "password": PASSWORD}) as r:
                    if r.status != 200:
                        raise RuntimeError(f"login {user} -> {r.status} {await r.text()}")
                    token = (await r.json())["access_token"]
                await asyncio.sleep(0.05)  # the login's background work settles
                if perf:
                    perf_ctl.write("enable\n")
                    perf_ctl.flush()
                gc.collect()
                gc.disable()
                c0 = cpu_ns(proc.pid)
                t0 = time.perf_counter()
                async with http.get(base + "/_matrix/client/v3/sync", params={"timeout": "0"},
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                    body = await r.read()
                    t1 = time.perf_counter()
                c1 = cpu_ns(proc.pid)
                gc.enable()
                if perf:
                    perf_ctl.write("disable\n")
                    perf_ctl.flush()
                if r.status != 200 or b'"join"' not in body:
                    raise RuntimeError(f"sync -> {r.status} {body[:200]!r}")
                times.append(t1 - t0)
                cpu += c1 - c0
    finally:
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(120)
        stop(work, proc, log)
    return {"p50_ms": pct(times, 50) * 1000, "p95_ms": pct(times, 95) * 1000,
            "cpu_ms": cpu / 1e6 / syncs, "bytes": len(body)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--db", required=True, help="a Hearth RocksDB data directory the workload left")
    ap.add_argument("--syncs", type=int, default=None, help="syncs per round (default: one per user)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--users", type=int, default=20, help="users u001… logging in, in turn")
    ap.add_argument("--perf", default=None)
    a = ap.parse_args()
    users = [f"u{i:03d}" for i in range(1, a.users + 1)]
    syncs = a.syncs or len(users)
    figures = {b: [] for b in a.binaries}
    for rnd in range(a.rounds):
        for i, b in enumerate(a.binaries):
            last = i == len(a.binaries) - 1
            f = asyncio.run(one_round(b, a.db, syncs, users, f"{a.perf}.{rnd + 1}" if last and a.perf else None))
            figures[b].append(f)
            print(f"round {rnd + 1} {b}: p50 {f['p50_ms']:.2f} ms, p95 {f['p95_ms']:.2f} ms, "
                  f"CPU {f['cpu_ms']:.2f} ms/sync, {f['bytes'] / 1024:.0f} KiB", flush=True)
    ref = None
    for b in a.binaries:
        med = {k: statistics.median(f[k] for f in figures[b]) for k in ("p50_ms", "p95_ms", "cpu_ms")}
        ref = ref or med
        print(f"{b}: p50 {med['p50_ms']:.2f} ms ({med['p50_ms'] / ref['p50_ms']:.2f}×), "
              f"p95 {med['p95_ms']:.2f} ms, CPU {med['cpu_ms']:.2f} ms/sync ({med['cpu_ms'] / ref['cpu_ms']:.2f}×)")


if __name__ == "__main__":
    main()
