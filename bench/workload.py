#!/usr/bin/env python3
"""Hearth vs Synapse benchmark: starts each server on loopback, runs the same
Matrix client workload against it, stops it, and prints/writes the figures.

Run through bench/run.sh (which builds Hearth, installs Synapse and writes the
Synapse config).  Never run by CI: nothing here is collected by cargo or pytest.
"""
import argparse
import asyncio
import contextlib
import gc
import hashlib
import hmac
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid

import aiohttp

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SERVER_NAME = "bench.local"
TOKEN = "bench-registration-token-0123456789"
PASSWORD = "bench-password-not-secret"

QUICK = dict(users=21, rooms=5, msgs=5, wake_trials=10, fanout=20, fanout_trials=3,
             paginate=1000, fill_concurrency=20, page_limit=100)
# for the callgrind fallback of --profile: valgrind slows Hearth down ~50x
TINY = dict(users=4, rooms=1, msgs=5, wake_trials=3, fanout=3, fanout_trials=1,
            paginate=100, fill_concurrency=4, page_limit=50)
FULL = dict(users=100, rooms=10, msgs=20, wake_trials=30, fanout=99, fanout_trials=5,
            paginate=10000, fill_concurrency=32, page_limit=100)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# ---------------------------------------------------------------- /proc helpers
def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # fields after ")" start at field 3 (state); utime=14, stime=15
    return int(rest[11]) + int(rest[12])


def cpu_ns(pid):
    """The CPU time of the live threads of `pid`, in ns, from each thread's schedstat.
    `cpu_ticks` counts in 10 ms ticks, one tick per 105 messages of the quick send phase
    being 0.095 ms a message; this has no such step. A thread that ends between two
    readings takes its time with it, so this is read only around phases in which the
    servers end no threads (their pools keep theirs for seconds after the last use);
    the figure is given beside the tick-based one, which counts ended threads too."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total


async def settle(pid, window=0.5, idle_share=0.05, limit=120.0):
    """Waits until the server has finished the background work earlier requests left it
    (Hearth's push follower, search indexer and federation sender run behind the
    requests; Synapse has its own): until it uses under `idle_share` of one CPU over
    `window` seconds, or `limit` seconds have passed. Returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        c0 = cpu_ticks(pid)
        await asyncio.sleep(window)
        if (cpu_ticks(pid) - c0) / CLK_TCK <= window * idle_share:
            break
    return time.perf_counter() - t0


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB -> bytes
    return None


def dir_bytes(path, apparent=True):
    """Apparent size by default: RocksDB preallocates its WAL, so allocated blocks do not
    grow with each write."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
                total += st.st_size if apparent else st.st_blocks * 512
            except FileNotFoundError:
                pass
    return total


# ---------------------------------------------------------------- servers
class Server:
    def __init__(self, name, kind, cmd, env, data_dir, port, db_dir, workdir=None):
        self.name, self.kind, self.cmd, self.env = name, kind, cmd, env
        self.data_dir, self.port, self.db_dir, self.workdir = data_dir, port, db_dir, workdir
        self.proc = None
        self.base = f"http://127.0.0.1:{port}"
        self.logf = None

    async def start(self):
        """Exec the server; return seconds until /_matrix/client/versions answers 200."""
        self.logf = open(os.path.join(self.data_dir, f"{self.name}.log"), "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.logf, stderr=subprocess.STDOUT,
                                     cwd=self.workdir or self.data_dir)
        async with aiohttp.ClientSession() as s:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.logf.name}")
                try:
                    async with s.get(self.base + "/_matrix/client/versions",
                                     timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return time.perf_counter() - t0
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    pass
                # 1 ms between polls for the first 200 ms, then 10 ms: a start-up of 12 ms
                # would otherwise be read as 12 or 23 ms depending on where the polls fell,
                # and a start of seconds does not need the finer steps.
                await asyncio.sleep(0.001 if time.perf_counter() - t0 < 0.2 else 0.01)

    def reset_db(self):
        """Empty the database directory (the server must be stopped)."""
        shutil.rmtree(self.db_dir, ignore_errors=True)
        if self.kind == "synapse":
            os.makedirs(self.db_dir)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        self._stop_server()
        for done in getattr(self, "on_stop", []):
            done()

    def _stop_server(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.logf:
            self.logf.close()


def hearth_server(name, binary, backend, root, port, wrap=()):
    data = os.path.join(root, name)
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    env = dict(os.environ)
    env.update({
        "CONDUIT_CONFIG": "", "CONDUIT_SERVER_NAME": SERVER_NAME,
        "CONDUIT_DATABASE_PATH": os.path.join(data, "db"), "CONDUIT_DATABASE_BACKEND": backend,
        "CONDUIT_PORT": str(port), "CONDUIT_ADDRESS": "127.0.0.1",
        "CONDUIT_ALLOW_REGISTRATION": "true", "CONDUIT_REGISTRATION_TOKEN": TOKEN,
        "HEARTH_DATABASE_FSYNC": "true",
        "CONDUIT_ALLOW_FEDERATION": "false", "HEARTH_LOG": "warn",
    })
    env.pop("RUST_LOG", None)
    return Server(name, "hearth", list(wrap) + [binary], env, data, port, os.path.join(data, "db"))


def synapse_server(name, venv_python, root, port, template, keep=False):
    data = os.path.join(root, name)
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    os.makedirs(os.path.join(data, "db"), exist_ok=True)
    cfg = os.path.join(data, "homeserver.yaml")
    with open(template) as f:
        text = f.read()
    text = text.replace("@DATA@", data).replace("@PORT@", str(port)).replace("@SERVER_NAME@", SERVER_NAME)
    with open(cfg, "w") as f:
        f.write(text)
    with open(os.path.join(data, "log.config"), "w") as f:
        f.write("version: 1\nformatters:\n  p:\n    format: '%(asctime)s %(name)s %(levelname)s %(message)s'\n"
                "handlers:\n  file:\n    class: logging.FileHandler\n    filename: " + data + "/synapse.log\n"
                "    formatter: p\nroot:\n  level: WARNING\n  handlers: [file]\ndisable_existing_loggers: false\n")
    env = dict(os.environ)
    subprocess.run([venv_python, "-m", "synapse.app.homeserver", "-c", cfg, "--generate-keys"],
                   check=True, env=env, cwd=data, stdout=subprocess.DEVNULL)
    cmd = [venv_python, "-m", "synapse.app.homeserver", "-c", cfg]
    return Server(name, "synapse", cmd, env, data, port, os.path.join(data, "db"), workdir=data)


PG_BIN = "/usr/lib/postgresql/15/bin"


def postgres_cluster(data):
    """A throw-away PostgreSQL cluster in `data` (Debian's `postgresql` 15, run as the
    `postgres` user, which it refuses to run as root), reached on a Unix socket only, with
    the C locale Synapse requires. Commits do not wait for their WAL flush
    (`synchronous_commit=off`, fsync itself on), so that a room of 100,000 messages fills
    within a session: weaker than Synapse's SQLite in the other runs (WAL with SQLite's
    default `synchronous=FULL`) and than Hearth (each acknowledged write fsynced), which
    favours Synapse in any figure of writes; reads are not affected. Returns (socket
    directory, stop function)."""
    pg, sock = os.path.join(data, "pg"), os.path.join(data, "pgsock")
    for d in (pg, sock):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_pg + [f"{PG_BIN}/initdb", "-D", pg, "-U", "postgres", "--locale=C", "-E", "UTF8",
                            "--auth=trust"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(as_pg + [f"{PG_BIN}/pg_ctl", "-D", pg, "-l", os.path.join(pg, "server.log"), "-w", "-o",
                            f"-k {sock} -c listen_addresses='' -c fsync=on -c synchronous_commit=off", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(as_pg + [f"{PG_BIN}/createdb", "-h", sock, "-U", "postgres", "-O", "postgres", "synapse"],
                   check=True)

    def stop():
        subprocess.run(as_pg + [f"{PG_BIN}/pg_ctl", "-D", pg, "-m", "fast", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return sock, stop


def synapse_postgres_server(name, venv_python, root, port, template):
    """As `synapse_server`, on PostgreSQL (Synapse's database for anything but a trial):
    for the benchmarks whose rooms outgrow Synapse on SQLite (see bench/README.md)."""
    data = os.path.join(root, name)
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    sock, stop = postgres_cluster(data)
    with open(template) as f:
        text = f.read()
    start = text.index("database:\n")
    end = text.index("log_config:")
    text = (text[:start] + "database:\n  name: psycopg2\n  args:\n    user: postgres\n    database: synapse\n"
            f"    host: {sock}\n    cp_min: 2\n    cp_max: 8\n" + text[end:])
    pg_template = os.path.join(root, f"{name}-homeserver.yaml.in")
    with open(pg_template, "w") as f:
        f.write(text)
    srv = synapse_server(name, venv_python, root, port, pg_template, keep=True)
    srv.db_dir = os.path.join(data, "pg")
    srv.pg_sock = sock
    srv.on_stop = [stop]
    return srv


def postgres_relation_mib(srv, relation):
    """The size of one table of `synapse-postgres`'s database with its indexes, in MiB."""
    out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-h", srv.pg_sock, "-U", "postgres", "synapse",
                          "-tAc", f"SELECT pg_total_relation_size('{relation}')"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip()) / 2**20


# ---------------------------------------------------------------- client
class Client:
    def __init__(self, http, base):
        self.http, self.base = http, base
        self.token = None
        self.user_id = None

    def _h(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def req(self, method, path, body=None, params=None, ok=(200,), timeout=120):
        async with self.http.request(method, self.base + path, json=body, params=params, headers=self._h(),
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            data = await r.json(content_type=None)
            if r.status not in ok:
                raise RuntimeError(f"{method} {path} -> {r.status} {data}")
            return r.status, data


async def register(http, base, username):
    c = Client(http, base)
    body = {"username": username, "password": PASSWORD, "initial_device_display_name": "bench",
            "inhibit_login": True}
    st, data = await c.req("POST", "/_matrix/client/v3/register", body, ok=(200, 401))
    for _ in range(6):
        if st == 200:
            return
        session = data["session"]
        done = set(data.get("completed", []))
        flow = next(f["stages"] for f in data["flows"]
                    if set(f["stages"]) <= {"m.login.registration_token", "m.login.dummy"})
        stage = next(s for s in flow if s not in done)
        auth = {"type": stage, "session": session}
        if stage == "m.login.registration_token":
            auth["token"] = TOKEN
        st, data = await c.req("POST", "/_matrix/client/v3/register", dict(body, auth=auth), ok=(200, 401))
    raise RuntimeError(f"registration did not finish: {data}")


async def login(http, base, username):
    c = Client(http, base)
    _, data = await c.req("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": username},
        "password": PASSWORD})
    c.token, c.user_id = data["access_token"], data["user_id"]
    return c


async def synapse_create_token(http, base, shared_secret):
    """Synapse keeps registration tokens in its database: make one through the admin API
    (an admin registered with the shared secret), so users then register exactly as on Hearth."""
    c = Client(http, base)
    _, d = await c.req("GET", "/_synapse/admin/v1/register")
    nonce = d["nonce"]
    mac = hmac.new(shared_secret.encode(), b"\x00".join(
        [nonce.encode(), b"benchadmin", PASSWORD.encode(), b"admin"]), hashlib.sha1).hexdigest()
    _, d = await c.req("POST", "/_synapse/admin/v1/register", {
        "nonce": nonce, "username": "benchadmin", "password": PASSWORD, "admin": True, "mac": mac})
    c.token = d["access_token"]
    await c.req("POST", "/_synapse/admin/v1/registration_tokens/new", {"token": TOKEN})


async def gather_limited(n, coros):
    sem = asyncio.Semaphore(n)

    async def run(c):
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))


def txn():
    return uuid.uuid4().hex


async def send(c, room, body):
    _, d = await c.req("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn()}",
                       {"msgtype": "m.text", "body": body})
    return d["event_id"]


async def sync(c, since=None, timeout_ms=0, filt=None):
    params = {"timeout": str(timeout_ms)}
    if since:
        params["since"] = since
    if filt:
        params["filter"] = filt
    _, d = await c.req("GET", "/_matrix/client/v3/sync", params=params, timeout=timeout_ms / 1000 + 120)
    return d


async def sync_raw(c, since, timeout_ms):
    """An incremental sync; returns the time its body's last byte arrived, and the body."""
    params = {"timeout": str(timeout_ms), "since": since}
    async with c.http.get(c.base + "/_matrix/client/v3/sync", params=params, headers=c._h(),
                          timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000 + 120)) as r:
        body = await r.read()
        t = time.perf_counter()
        if r.status != 200:
            raise RuntimeError(f"sync -> {r.status} {body[:200]!r}")
    return t, body


def timeline_ids(d, room):
    r = d.get("rooms", {}).get("join", {}).get(room, {})
    return {e.get("event_id") for e in r.get("timeline", {}).get("events", [])}


async def wait_for_event(c, since, room, event_id):
    while True:
        d = await sync(c, since, 30000)
        if event_id in timeline_ids(d, room):
            return time.perf_counter()
        since = d["next_batch"]


# ---------------------------------------------------------------- the workload
@contextlib.contextmanager
def client_gc_paused():
    """Python's garbage collector, run before a timed step and held off during it.

    A collection falling inside the timed window (the pagination step leaves ~10,000
    parsed events behind) would be a pause of the client, not time the server took. In a
    loop of 40 first initial syncs on Hearth the client once saw 25 and 33 ms where the
    server's own logged latency was at most 17 ms; what the client adds is noise on
    Synapse's 250 ms, not on Hearth's 15."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def workload(srv, P, prof=None):
    res = {}
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as http:
        base = srv.base
        time.sleep(2)
        res["idle_rss_bytes"] = proc_status(srv.pid, "VmRSS")

        if srv.kind == "synapse":
            await synapse_create_token(http, base, "bench-shared-secret")

        # --- register + login
        names = [f"u{i:03d}" for i in range(P["users"])]
        t0 = time.perf_counter()
        await gather_limited(8, [register(http, base, n) for n in names])
        res["register_s"] = time.perf_counter() - t0
        log(srv.name, f"registered {len(names)} users in {res['register_s']:.1f}s")
        t0 = time.perf_counter()
        users = await gather_limited(8, [login(http, base, n) for n in names])
        res["login_s"] = time.perf_counter() - t0
        res.setdefault("hwm_after", {})["register+login"] = proc_status(srv.pid, "VmHWM")

        # --- rooms, all users join
        owner = users[0]
        rooms = []
        for i in range(P["rooms"]):
            _, d = await owner.req("POST", "/_matrix/client/v3/createRoom",
                                   {"preset": "public_chat", "name": f"bench {i}"})
            rooms.append(d["room_id"])
        _, d = await owner.req("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "name": "fill"})
        fill_room = d["room_id"]
        t0 = time.perf_counter()
        await gather_limited(16, [u.req("POST", f"/_matrix/client/v3/join/{r}", {})
                                  for u in users[1:] for r in rooms])
        res["join_s"] = time.perf_counter() - t0
        res.setdefault("hwm_after", {})["join"] = proc_status(srv.pid, "VmHWM")
        log(srv.name, f"{len(users)} users joined {len(rooms)} rooms in {res['join_s']:.1f}s")

        # --- concurrent send: every user sends M messages (sequentially per user, all users at once)
        lat = []

        async def sender(i, u):
            for j in range(P["msgs"]):
                room = rooms[(i + j) % len(rooms)]
                s0 = time.perf_counter()
                await send(u, room, f"message {j} from {u.user_id}")
                lat.append(time.perf_counter() - s0)

        send_perf = prof() if prof and os.environ.get("BENCH_PROFILE_PHASE") == "send" else None
        if send_perf:
            await asyncio.sleep(1)  # perf attaches
        cpu0, ns0 = cpu_ticks(srv.pid), cpu_ns(srv.pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(sender(i, u) for i, u in enumerate(users)))
        wall = time.perf_counter() - t0
        cpu1 = cpu_ticks(srv.pid)
        n = len(lat)
        res["send_events"] = n
        res["send_events_per_s"] = n / wall
        res["send_p50_ms"] = pct(lat, 50) * 1000
        res["send_p95_ms"] = pct(lat, 95) * 1000
        res["send_p99_ms"] = pct(lat, 99) * 1000
        res["cpu_ms_per_event"] = (cpu1 - cpu0) * 1000 / CLK_TCK / n
        # The same, with the background work the sends left behind (push evaluation,
        # indexing) done: what a message costs in all, not only while its request runs.
        res["send_settle_s"] = await settle(srv.pid)
        res["cpu_ms_per_event_settled"] = (cpu_ticks(srv.pid) - cpu0) * 1000 / CLK_TCK / n
        res["cpu_ms_per_event_settled_ns"] = (cpu_ns(srv.pid) - ns0) / 1e6 / n
        if send_perf:
            send_perf.send_signal(signal.SIGINT)
            send_perf.wait(60)
        res.setdefault("hwm_after", {})["send"] = proc_status(srv.pid, "VmHWM")
        log(srv.name, f"sent {n} events at {res['send_events_per_s']:.1f}/s")

        # --- fill one room for /messages pagination and bytes on disk
        fillers = users[: P["fill_concurrency"]]
        for u in fillers[1:]:
            await u.req("POST", f"/_matrix/client/v3/join/{fill_room}", {})
        total = P["paginate"]
        counter = iter(range(total))

        async def filler(u):
            for k in counter:
                await send(u, fill_room, f"fill {k} " + "x" * 64)

        t0 = time.perf_counter()
        await asyncio.gather(*(filler(u) for u in fillers))
        res["fill_events"] = total
        res["fill_events_per_s"] = total / (time.perf_counter() - t0)
        res.setdefault("hwm_after", {})["fill"] = proc_status(srv.pid, "VmHWM")
        log(srv.name, f"filled {total} events at {res['fill_events_per_s']:.1f}/s")
        # Later figures are each server's answer, not answers slowed by work left behind.
        res["fill_settle_s"] = await settle(srv.pid)

        # --- /messages pagination backwards through the whole room
        reader = users[0]
        t0 = time.perf_counter()
        seen, frm, pages = 0, None, 0
        while True:
            params = {"dir": "b", "limit": str(P["page_limit"])}
            if frm:
                params["from"] = frm
            _, d = await reader.req("GET", f"/_matrix/client/v3/rooms/{fill_room}/messages", params=params)
            pages += 1
            chunk = d.get("chunk", [])
            seen += sum(1 for e in chunk if e.get("type") == "m.room.message")
            if not chunk or not d.get("end") or d.get("end") == frm:
                break
            frm = d["end"]
        res["paginate_s"] = time.perf_counter() - t0
        res["paginate_events_seen"] = seen
        res["paginate_events_per_s"] = seen / res["paginate_s"]
        res.setdefault("hwm_after", {})["paginate"] = proc_status(srv.pid, "VmHWM")
        log(srv.name, f"paginated {seen} messages in {pages} pages, {res['paginate_s']:.2f}s")

        # --- initial sync for a user in the R rooms, with their history.
        # Timed until the last byte of the body has arrived: that is the server's answer.
        # The client's JSON parse (a few ms of Python for ~300 KB, the same for every
        # server) comes after the clock stops, is timed apart, and the body is checked.
        u = users[-1]
        times, parsed = [], []
        for _ in range(4):
            with client_gc_paused():
                t0 = time.perf_counter()
                async with http.get(base + "/_matrix/client/v3/sync", params={"timeout": "0"}, headers=u._h(),
                                    timeout=aiohttp.ClientTimeout(total=120)) as r:
                    body = await r.read()
                    t1 = time.perf_counter()
            if r.status != 200:
                raise RuntimeError(f"initial sync -> {r.status} {body[:200]!r}")
            d = json.loads(body)
            parsed.append(time.perf_counter() - t0)
            times.append(t1 - t0)
            if len(d.get("rooms", {}).get("join", {})) < P["rooms"]:
                raise RuntimeError("initial sync is missing rooms")
        res["initial_sync_first_ms"] = times[0] * 1000
        res["initial_sync_ms"] = statistics.median(times[1:]) * 1000
        res["initial_sync_first_parsed_ms"] = parsed[0] * 1000
        res["initial_sync_parsed_ms"] = statistics.median(parsed[1:]) * 1000
        res["initial_sync_bytes"] = len(body)
        res["initial_sync_rooms"] = len(d.get("rooms", {}).get("join", {}))
        res.setdefault("hwm_after", {})["initial_sync"] = proc_status(srv.pid, "VmHWM")

        # --- the first initial sync of each of up to 20 distinct users who had never synced
        # (no per-user cache can help: what a login on a new device costs each user).
        firsts = users[2:-1][:20]  # users[-1] synced above; users[0] and [1] sync below
        times = []
        await settle(srv.pid)
        phase_perf = prof() if prof and os.environ.get("BENCH_PROFILE_PHASE") == "first-sync" else None
        if phase_perf:
            await asyncio.sleep(1)  # perf attaches
        cpu0, ns0 = cpu_ticks(srv.pid), cpu_ns(srv.pid)
        for fu in firsts:
            with client_gc_paused():
                t0 = time.perf_counter()
                async with http.get(base + "/_matrix/client/v3/sync", params={"timeout": "0"}, headers=fu._h(),
                                    timeout=aiohttp.ClientTimeout(total=120)) as r:
                    body = await r.read()
                    times.append(time.perf_counter() - t0)
            if r.status != 200 or len(json.loads(body).get("rooms", {}).get("join", {})) < P["rooms"]:
                raise RuntimeError(f"first initial sync of {fu.user_id} -> {r.status} {body[:200]!r}")
        cpu1, ns1 = cpu_ticks(srv.pid), cpu_ns(srv.pid)
        if phase_perf:
            phase_perf.send_signal(signal.SIGINT)
            phase_perf.wait(60)
        res["initial_sync_distinct_users"] = len(firsts)
        res["initial_sync_distinct_each_ms"] = [round(t * 1000, 3) for t in times]
        res["initial_sync_distinct_p50_ms"] = pct(times, 50) * 1000
        res["initial_sync_distinct_p95_ms"] = pct(times, 95) * 1000
        res["initial_sync_distinct_cpu_ms"] = (cpu1 - cpu0) * 1000 / CLK_TCK / len(firsts)
        # The same from the live threads' schedstat (the 18 syncs' whole CPU is a few 10 ms
        # ticks): whether a slower run's server worked more, or waited.
        res["initial_sync_distinct_cpu_ns_ms"] = (ns1 - ns0) / 1e6 / len(firsts)

        # --- incremental sync wake-up
        a, b = users[0], users[1]
        room = rooms[0]
        since = (await sync(b))["next_batch"]
        wakes, wakes_from_start = [], []
        for k in range(P["wake_trials"]):
            d = await sync(b, since, 0)
            since = d["next_batch"]
            done = asyncio.Event()
            sent = {}

            async def poll():
                s = since
                while True:
                    d = await sync(b, s, 30000)
                    s = d["next_batch"]
                    if sent.get("id") and sent["id"] in timeline_ids(d, room):
                        return time.perf_counter(), s
                    if not sent.get("id"):
                        # might be the event before we recorded its id
                        await done.wait()
                        if sent["id"] in timeline_ids(d, room):
                            return time.perf_counter(), s

            task = asyncio.create_task(poll())
            await asyncio.sleep(0.25)
            t_start = time.perf_counter()
            eid = await send(a, room, f"wake {k}")
            t_ack = time.perf_counter()
            sent["id"] = eid
            done.set()
            t_recv, since = await task
            # the long-poll can return before the send's response is read: that counts as 0
            wakes.append(max(0.0, t_recv - t_ack))
            wakes_from_start.append(t_recv - t_start)
        res["wakeup_p50_ms"] = pct(wakes, 50) * 1000
        res["wakeup_p95_ms"] = pct(wakes, 95) * 1000
        res["wakeup_from_send_start_p50_ms"] = pct(wakes_from_start, 50) * 1000
        log(srv.name, f"wake-up p50 {res['wakeup_p50_ms']:.1f} ms")

        # --- fan-out: one send, F long-polling receivers
        F = min(P["fanout"], len(users) - 1)
        sender_u, receivers = users[0], users[1: F + 1]
        fan_room = rooms[-1]
        fans = []
        for k in range(P["fanout_trials"]):
            sinces = await asyncio.gather(*(sync(r) for r in receivers))
            sinces = [s["next_batch"] for s in sinces]
            holder = {}
            ready = asyncio.Event()

            # Each receiver's time is when the body carrying the event has arrived. Its JSON
            # is parsed and checked after the trial: parsing 99 bodies in turn on this one
            # event loop would otherwise add the client's work to the last receiver's time.
            async def recv(r, s):
                while True:
                    t, body = await sync_raw(r, s, 30000)
                    await ready.wait()
                    if holder["id"].encode() in body:
                        return t, body
                    s = json.loads(body)["next_batch"]

            tasks = [asyncio.create_task(recv(r, s)) for r, s in zip(receivers, sinces)]
            await asyncio.sleep(1.0)
            with client_gc_paused():
                t0 = time.perf_counter()
                holder["id"] = await send(sender_u, fan_room, f"fanout {k}")
                ready.set()
                ends = await asyncio.gather(*tasks)
            for _, body in ends:
                if holder["id"] not in timeline_ids(json.loads(body), fan_room):
                    raise RuntimeError("a fan-out receiver got the event outside the room's timeline")
            fans.append(max(t for t, _ in ends) - t0)
        res["fanout_receivers"] = F
        res["fanout_ms"] = statistics.median(fans) * 1000
        res["fanout_trials_ms"] = [round(f * 1000, 2) for f in fans]
        res.setdefault("hwm_after", {})["fanout"] = proc_status(srv.pid, "VmHWM")
        log(srv.name, f"fan-out to {F}: {res['fanout_ms']:.1f} ms")

        res["peak_rss_bytes"] = proc_status(srv.pid, "VmHWM")
        # events this workload wrote (createRoom's own state events not counted)
        res["events_written"] = (n + total + len(wakes) + len(fans) + len(users[1:]) * len(rooms)
                                 + len(fillers) - 1)
    return res


async def bench_one(srv, P, profile):
    out = {"name": srv.name, "kind": srv.kind}
    try:
        # Start-ups are timed with the OS's write-back done: otherwise the server that runs
        # after another pays, in its own fsyncs, for flushing the previous server's data.
        # Three starts, each on a new empty database; the median is the figure. The first
        # start of a run reads the server's own files from disk when the previous server's
        # data has pushed them out of the page cache: it is kept apart as "first".
        empties = []
        for k in range(3):
            if k:
                srv.stop()
                srv.reset_db()
            os.sync()
            empties.append(await srv.start())
        out["startup_empty_first_s"] = empties[0]
        out["startup_empty_s"] = statistics.median(empties)
        log(srv.name, "up in " + ", ".join(f"{t:.3f}" for t in empties) + f"s (empty database), pid {srv.pid}")
        # bytes on disk: measured after clean stops (flushed memtables, checkpointed WAL)
        srv.stop()
        out["disk_bytes_empty"] = dir_bytes(srv.db_dir)
        await srv.start()
        perf, start_perf = None, None
        if profile and os.environ.get("BENCH_PROFILER", "perf") == "perf":
            perf_data = os.path.join(profile, f"perf-{srv.name}.data")
            cg = os.environ.get("BENCH_PERF_CALLGRAPH", "")
            freq = os.environ.get("BENCH_PERF_FREQ", "499")  # samples/s; more for short phases
            cmd = ["perf", "record", "-e", "cpu-clock", "-F", freq, "-p", str(srv.pid), "-o", perf_data]
            if cg:
                cmd += ["--call-graph", cg]
            out["perf_data"] = perf_data

            def start_perf():
                return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # BENCH_PROFILE_PHASE=first-sync records the first initial syncs of distinct
            # users alone; otherwise the whole workload is recorded.
            if not os.environ.get("BENCH_PROFILE_PHASE"):
                perf, start_perf = start_perf(), None
        out.update(await workload(srv, P, start_perf))
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(60)
        srv.stop()
        out["disk_bytes_total_apparent"] = dir_bytes(srv.db_dir)
        out["disk_bytes_total_allocated"] = dir_bytes(srv.db_dir, apparent=False)
        out["disk_bytes_per_10k_events"] = ((out["disk_bytes_total_apparent"] - out["disk_bytes_empty"])
                                            * 10000 / out["events_written"])
        filled = []
        for k in range(3):
            if k:
                srv.stop()
            os.sync()
            filled.append(await srv.start())
        out["startup_filled_s"] = statistics.median(filled)
        log(srv.name, "up in " + ", ".join(f"{t:.3f}" for t in filled) + "s (filled database)")
    finally:
        srv.stop()
    return out


# ---------------------------------------------------------------- report
ROWS = [
    ("send throughput (events/s)", "send_events_per_s", "{:.1f}", "high"),
    ("send latency p50 (ms)", "send_p50_ms", "{:.1f}", "low"),
    ("send latency p95 (ms)", "send_p95_ms", "{:.1f}", "low"),
    ("send latency p99 (ms)", "send_p99_ms", "{:.1f}", "low"),
    ("server CPU per event (ms)", "cpu_ms_per_event", "{:.3f}", "low"),
    ("server CPU per event, background work included (ms)", "cpu_ms_per_event_settled", "{:.3f}", "low"),
    ("the same, from the threads' schedstat, without 10 ms ticks (ms)", "cpu_ms_per_event_settled_ns", "{:.3f}", "low"),
    ("fill throughput, 1 room (events/s)", "fill_events_per_s", "{:.1f}", "high"),
    ("initial /sync, first (ms)", "initial_sync_first_ms", "{:.1f}", "low"),
    ("initial /sync, first of each of 20 users, p50 (ms)", "initial_sync_distinct_p50_ms", "{:.1f}", "low"),
    ("initial /sync, first of each of 20 users, p95 (ms)", "initial_sync_distinct_p95_ms", "{:.1f}", "low"),
    ("server CPU per first initial /sync (ms)", "initial_sync_distinct_cpu_ms", "{:.1f}", "low"),
    ("the same, from the threads' schedstat (ms)", "initial_sync_distinct_cpu_ns_ms", "{:.2f}", "low"),
    ("initial /sync, repeat, median of 3 (ms)", "initial_sync_ms", "{:.1f}", "low"),
    ("initial /sync, repeat, with client JSON parse (ms)", "initial_sync_parsed_ms", "{:.1f}", "low"),
    ("initial /sync body (KiB)", "initial_sync_bytes", "kib", "low"),
    ("sync wake-up p50 (ms)", "wakeup_p50_ms", "{:.2f}", "low"),
    ("sync wake-up p95 (ms)", "wakeup_p95_ms", "{:.2f}", "low"),
    ("send start → long-poll returns p50 (ms)", "wakeup_from_send_start_p50_ms", "{:.2f}", "low"),
    ("fan-out to all receivers (ms)", "fanout_ms", "{:.1f}", "low"),
    ("/messages through fill room (s)", "paginate_s", "{:.2f}", "low"),
    ("idle RSS (MiB)", "idle_rss_bytes", "mib", "low"),
    ("peak RSS (MiB)", "peak_rss_bytes", "mib", "low"),
    ("start-up, empty DB, median of 3 (s)", "startup_empty_s", "{:.3f}", "low"),
    ("start-up, empty DB, first of the run (s)", "startup_empty_first_s", "{:.3f}", "low"),
    ("start-up, filled DB, median of 3 (s)", "startup_filled_s", "{:.3f}", "low"),
    ("disk per 10,000 events (MiB)", "disk_bytes_per_10k_events", "mib", "low"),
    ("database after clean stop (MiB)", "disk_bytes_total_apparent", "mib", "low"),
    ("register N users (s)", "register_s", "{:.2f}", "low"),
]


def fmt(v, f):
    if v is None:
        return "—"
    if f == "mib":
        return f"{v / 1048576:.1f}"
    if f == "kib":
        return f"{v / 1024:.0f}"
    return f.format(v)


def table(results, rows=ROWS):
    """Markdown: one row per (label, key, format, better) of `rows`, a column per server,
    then Hearth ÷ Synapse for each Hearth (bench/media.py passes its own rows)."""
    syn = next((r for r in results if r["kind"] == "synapse" and "error" not in r), None)
    heads = [r["name"] for r in results]
    cols = ["metric"] + heads + [f"{h}/synapse" for h in heads if not h.startswith("synapse")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for label, key, f, _better in rows:
        row = [label] + [fmt(r.get(key), f) for r in results]
        for r in results:
            if r["name"].startswith("synapse"):
                continue
            a, b = r.get(key), (syn or {}).get(key)
            row.append(f"{a / b:.3g}×" if a is not None and b else "—")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- side-by-side scripts
# The scaffolding bench/push.py, search.py, sliding_sync.py and media.py share: the same
# arguments, one fresh server after another, a broken one reported without hiding the
# others, and the same table and JSON.

def side_by_side_args(description, quick_help=None):
    """The arguments of a side-by-side benchmark (`--quick` when `quick_help` is given)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--hearth-bin", required=True)
    ap.add_argument("--synapse-python", required=True)
    ap.add_argument("--synapse-template", required=True)
    ap.add_argument("--servers", default="synapse,hearth-rocksdb,hearth-sqlite")
    ap.add_argument("--root", default="/tmp/hearth-bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--build-label", default="release")
    if quick_help is not None:
        ap.add_argument("--quick", action="store_true", help=quick_help or None)
    return ap


def named_server(a, name, root, port, template=None):
    """The server `name` of `--servers` (synapse, synapse-postgres, hearth-rocksdb,
    hearth-sqlite), not started."""
    if name == "synapse":
        return synapse_server(name, a.synapse_python, root, port, template or a.synapse_template)
    if name == "synapse-postgres":
        return synapse_postgres_server(name, a.synapse_python, root, port, template or a.synapse_template)
    if name.startswith("hearth-"):
        return hearth_server(name, a.hearth_bin, name.split("-", 1)[1], root, port)
    raise SystemExit(f"unknown server {name}")


async def each_server(names, first_port, make, run):
    """`run(server)` for each server `make(name, port)` gives, one after another; a server
    that fails is reported as such and the others still run."""
    results = []
    for port, name in enumerate(names.split(","), start=first_port + 1):
        srv = make(name, port)
        log(f"=== {name}")
        try:
            results.append(await run(srv))
        except Exception as e:  # keep going: a broken server must not hide the others
            log(name, "FAILED:", repr(e))
            results.append({"name": name, "kind": srv.kind, "error": repr(e)})
    return results


def run_meta(a, params, started, **extra):
    """The run's description in the JSON: when, which build, the parameters, the machine."""
    meta = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "build": a.build_label,
            "params": params}
    meta.update(extra)
    meta["machine"] = {"nproc": os.cpu_count(), "kernel": platform.release()}
    meta["elapsed_s"] = time.perf_counter() - started
    return meta


def report(title, results, rows, meta, json_path, **extra_json):
    """Prints the table under `title` and each failure; writes the JSON if asked."""
    tab = table(results, rows)
    print(f"\n{title}\n")
    print(tab)
    for r in results:
        if "error" in r:
            print(f"\n{r['name']} FAILED: {r['error']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"meta": meta, "results": results, "table_markdown": tab, **extra_json}, f, indent=2)
    return tab


def startup_order_coverage(binary):
    """Which code layout the measured binary has: scripts/build-release.sh leaves the list of
    functions it placed together beside the binary (release/startup-order.txt), made from
    that very build; without it the binary has the default layout and idle RSS is a few MiB
    higher. Names of shared-library functions (libc, libstdc++) are in the list too and
    never match."""
    path = os.path.join(os.path.dirname(os.path.abspath(binary)), "startup-order.txt")
    if not os.path.exists(path):
        return {"layout": "default (no startup-order.txt beside the binary)"}
    try:
        listed = [l.strip() for l in open(path) if l.strip()]
        nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return {"error": repr(e)}
    defined = {line.split()[-1] for line in nm.splitlines() if line.strip()}
    missing = [n for n in listed if n not in defined]
    own = sum(1 for n in missing if "6hearth" in n)
    return {"layout": "start-up code placed together", "listed": len(listed),
            "defined_in_binary": len(listed) - len(missing), "hearth_names_missing": own}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="minimal workload (callgrind profiling)")
    ap.add_argument("--hearth-bin", required=True)
    ap.add_argument("--synapse-python")
    ap.add_argument("--synapse-template")
    ap.add_argument("--servers", default="synapse,hearth-rocksdb,hearth-sqlite")
    ap.add_argument("--root", default="/tmp/hearth-bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", default=None, help="directory for perf data (Hearth servers only)")
    ap.add_argument("--build-label", default="release")
    a = ap.parse_args()
    P = TINY if a.tiny else QUICK if a.quick else FULL
    os.makedirs(a.root, exist_ok=True)
    results = []
    port = 18100
    t_all = time.perf_counter()
    for name in a.servers.split(","):
        port += 1
        if name == "synapse":
            srv = synapse_server(name, a.synapse_python, a.root, port, a.synapse_template)
        elif name.startswith("hearth-"):
            wrap = ()
            if a.profile and os.environ.get("BENCH_PROFILER") == "callgrind":
                wrap = ("valgrind", "--tool=callgrind",
                        f"--callgrind-out-file={os.path.abspath(a.profile)}/callgrind-{name}.%p.out")
            srv = hearth_server(name, a.hearth_bin, name.split("-", 1)[1], a.root, port, wrap)
        else:
            raise SystemExit(f"unknown server {name}")
        log(f"=== {name}")
        try:
            results.append(asyncio.run(bench_one(srv, P, a.profile if srv.kind == "hearth" else None)))
        except Exception as e:  # keep going: a broken server must not hide the others
            log(name, "FAILED:", repr(e))
            results.append({"name": name, "kind": srv.kind, "error": repr(e)})
    elapsed = time.perf_counter() - t_all
    mem = int(open("/proc/meminfo").read().split()[1]) * 1024
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    synchronous = subprocess.run(
        [a.synapse_python or sys.executable, "-c",
         "import sqlite3;c=sqlite3.connect(':memory:');print(c.execute('PRAGMA synchronous').fetchone()[0])"],
        capture_output=True, text=True).stdout.strip()
    meta = {
        "startup_order": startup_order_coverage(a.hearth_bin),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "mode": "tiny" if a.tiny else "quick" if a.quick else "full", "params": P,
        "build": a.build_label,
        "machine": {"nproc": os.cpu_count(), "cpu": cpu, "ram_bytes": mem, "kernel": platform.release()},
        "durability": ("both fsync every acknowledged write: Hearth HEARTH_DATABASE_FSYNC=true "
                       "(RocksDB WAL fsync / SQLite WAL fdatasync, grouped across concurrent writes, before each 200); "
                       "Synapse SQLite WAL with "
                       f"PRAGMA synchronous={synchronous} (2=FULL; SQLite's compiled default, Synapse does not change it)"),
        "elapsed_s": elapsed,
    }
    out = {"meta": meta, "results": results}
    tab = table(results)
    print()
    print(f"Hearth vs Synapse — {meta['mode']} mode, {meta['date_utc']}, build: {meta['build']}")
    print(f"machine: {meta['machine']['nproc']} CPUs ({cpu}), {mem / 2**30:.1f} GiB RAM")
    print(f"durability: {meta['durability']}")
    print(f"startup order: {meta['startup_order']}")
    if meta["startup_order"].get("hearth_names_missing", 0) > 5:
        print("WARNING: the binary's startup-order.txt does not fit its code; idle RSS is measured "
              "higher than the Dockerfile's build gives (build with scripts/build-release.sh)")
    print(f"workload: {P}")
    print()
    print(tab)
    for r in results:
        if "error" in r:
            print(f"\n{r['name']} FAILED: {r['error']}")
    print(f"\ntotal {elapsed:.0f}s")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(dict(out, table_markdown=tab), f, indent=2)


if __name__ == "__main__":
    main()
