#!/usr/bin/env python3
"""Measure Hearth's resident memory, to size the Kubernetes requests and limits.

Starts the given `hearth` binary on a fresh temporary data directory (loopback only),
reads VmRSS/VmHWM from /proc/PID/status at each step, and drives it with the standard
library's HTTP client:

  1. idle, right after start-up;
  2. after N registrations with the registration token (UIA: token, then dummy), one at a time;
  3. after N logins, one at a time, plus whoami/profile reads;
  4. after bursts of C concurrent logins (each login is one argon2id verification, which
     allocates 19 MiB while it runs, on tokio's blocking pool);
  5. idle again;
then SIGTERM, and reports the exit code and how long the shutdown took.

Usage: python3 deploy/measure-memory.py --binary target/release/hearth [--backend rocksdb]
       [--users 50] [--concurrency 1,8,32]
Prints one line per step and a JSON summary on the last line.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

TOKEN = "measure-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mem(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    return out


def call(base, method, path, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def register(base, name, password):
    st, b = call(base, "POST", "/_matrix/client/v3/register", {"username": name, "password": password})
    assert st == 401, (st, b)
    session = b["session"]
    st, b = call(base, "POST", "/_matrix/client/v3/register", {
        "username": name, "password": password,
        "auth": {"type": "m.login.registration_token", "token": TOKEN, "session": session}})
    if st == 401:
        st, b = call(base, "POST", "/_matrix/client/v3/register", {
            "username": name, "password": password, "auth": {"type": "m.login.dummy", "session": session}})
    assert st == 200, (st, b)
    return b["access_token"]


def login(base, name, password):
    st, b = call(base, "POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": password})
    assert st == 200, (st, b)
    return b["access_token"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--backend", default="rocksdb", choices=["rocksdb", "sqlite"])
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--concurrency", default="1,8,32")
    a = ap.parse_args()

    data = tempfile.mkdtemp(prefix="hearth-measure-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, CONDUIT_CONFIG="", CONDUIT_SERVER_NAME="measure.test",
               CONDUIT_DATABASE_PATH=data, CONDUIT_DATABASE_BACKEND=a.backend,
               CONDUIT_ADDRESS="127.0.0.1", CONDUIT_PORT=str(port),
               CONDUIT_ALLOW_REGISTRATION="true", CONDUIT_REGISTRATION_TOKEN=TOKEN,
               CONDUIT_MAX_CONCURRENT_REQUESTS="200", CONDUIT_LOG="warn")
    proc = subprocess.Popen([a.binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows = {}

    def step(name):
        m = mem(proc.pid)
        rows[name] = m
        print(f"{name:28s} VmRSS {m['VmRSS'] / 1024:7.1f} MiB   VmHWM {m['VmHWM'] / 1024:7.1f} MiB   "
              f"threads {m['Threads']}", flush=True)

    try:
        deadline = time.time() + 60
        while True:
            try:
                if call(base, "GET", "/_matrix/client/versions")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                sys.exit(f"hearth did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        time.sleep(2)
        step("idle after start")

        users = [(f"user{i}", f"password-{i}-long-enough") for i in range(a.users)]
        t = time.time()
        tokens = [register(base, n, p) for n, p in users]
        step(f"after {a.users} registrations")
        print(f"  ({(time.time() - t) / a.users * 1000:.0f} ms per registration)")

        t = time.time()
        for (n, p), tok in zip(users, tokens):
            login(base, n, p)
            call(base, "GET", "/_matrix/client/v3/account/whoami", token=tok)
            call(base, "GET", f"/_matrix/client/v3/profile/@{n}:measure.test")
        step(f"after {a.users} logins")
        print(f"  ({(time.time() - t) / a.users * 1000:.0f} ms per login+reads)")

        for c in [int(x) for x in a.concurrency.split(",") if x]:
            with concurrent.futures.ThreadPoolExecutor(c) as ex:
                list(ex.map(lambda up: login(base, *up), [users[i % len(users)] for i in range(c * 2)]))
            step(f"after logins, {c} at once")

        time.sleep(5)
        step("idle at the end")
    finally:
        t = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "killed after 60 s"
        stop_s = round(time.time() - t, 2)
        print(f"SIGTERM -> exit {rc} in {stop_s} s")
        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps({"backend": a.backend, "steps_kib": rows, "exit": rc, "stop_seconds": stop_s}))


if __name__ == "__main__":
    main()
