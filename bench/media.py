#!/usr/bin/env python3
"""Media benchmark (issue 17): Hearth against Synapse, one server after the other, in one run.

Each server starts fresh (an empty data directory under --root), one user registers and
logs in (as in bench/workload.py: a registration token; Synapse's made through its admin
API), one 1 KiB file is uploaded and downloaded untimed (first-request warm-up), and then,
one request at a time over one keep-alive connection:

* **upload**: 20 files of 1 MiB, then 5 of 20 MiB, each of fresh random bytes
  (`application/octet-stream`, so neither server tries to thumbnail them), through
  `POST /_matrix/media/v3/upload`; MiB/s = bytes ÷ the sum of the request times (request
  sent → JSON answer read), and the p50 of the request times;
* **download**: each of those files once through the authenticated
  `GET /_matrix/client/v1/media/download/{server}/{id}`, timed to the body's last byte and
  checked byte for byte; MiB/s and p50;
* **thumbnails**: a 12-megapixel JPEG (4000×3000, gradients, a coarse texture and fine
  grain, quality 90, drawn with Pillow from a fixed seed: the same bytes for every server)
  is uploaded (timed: Synapse makes its five configured thumbnails inside this request,
  Hearth makes none), then `GET /_matrix/client/v1/media/thumbnail/…?width=800&height=600&
  method=scale` is timed on its first request (Hearth decodes and scales here) and then 5
  more times (both serve a stored file), and the same for `width=32&height=32&method=crop`.
  Each thumbnail's size is checked with Pillow. "JPEG ready" is the upload plus both first
  thumbnail requests: the time until a client has both pictures, whoever does the work when.

For every phase, the server process's resident memory: `VmRSS` just before the phase, and
its peak during the phase: `VmHWM` read at the end, having been reset to the current RSS at
the start (`echo 5 > /proc/<pid>/clear_refs`, Linux 4.0 and later, as root or the
server's owner), so it is the exact peak of the phase, however short. A thread also reads
`VmRSS` every 10 ms (kept in the JSON as a check, and the peak where the reset is not
allowed). Also the server's CPU time over the phase (Δ utime+stime from `/proc/<pid>/stat`,
in 10 ms ticks). Before each phase the client calls `sync()`, so no phase pays for writing
back the files of the one before.

Hearth fsyncs every upload (the file and its folder) before answering; Synapse 1.163 writes
its media files without fsync. The servers' limits are raised to 50,000,000 bytes
(`CONDUIT_MAX_REQUEST_SIZE`, Synapse's `max_upload_size`) so a 20 MiB file is accepted.

Prints a Markdown table with Hearth ÷ Synapse for every figure and writes JSON. Run by
`bench/run.sh --media`; never by CI.
"""
import asyncio
import contextlib
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time

import aiohttp
from PIL import Image, ImageChops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import (  # noqa: E402
    CLK_TCK,
    cpu_ticks,
    log,
    login,
    named_server,
    pct,
    proc_status,
    register,
    side_by_side_args,
    synapse_create_token,
    table,
)

MIB = 1024 * 1024
MAX_UPLOAD_BYTES = 50_000_000
PARAMS = dict(small_bytes=MIB, small_count=20, large_bytes=20 * MIB, large_count=5,
              jpeg_size=(4000, 3000), jpeg_quality=90, thumb_repeats=5, rss_sample_ms=10)
THUMBS = {"scale": (800, 600, "scale"), "crop": (32, 32, "crop")}


# ---------------------------------------------------------------- the test picture
def make_jpeg(width, height, quality, seed=17):
    """A photo-like JPEG: smooth colour gradients, a coarse blotchy texture and per-pixel
    grain, so it compresses like a photo (~3.6 MB at 12 MP, quality 90), not like a flat
    test card. Deterministic: the same bytes for every server in a run."""
    rng = random.Random(seed)

    def noise(w, h):
        return Image.frombytes("L", (w, h), rng.randbytes(w * h))

    size = (width, height)
    base = Image.merge("RGB", (Image.linear_gradient("L").resize(size),
                               Image.radial_gradient("L").resize(size),
                               Image.linear_gradient("L").rotate(90).resize(size)))
    texture = Image.merge("RGB", [noise(width // 16, height // 16).resize(size, Image.BICUBIC)
                                  for _ in range(3)])
    picture = Image.blend(base, texture, 0.35)
    grain = Image.merge("RGB", [noise(width, height).point(lambda v: v // 10) for _ in range(3)])
    picture = ImageChops.add(picture, grain, 1, -12)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality)
    return out.getvalue()


# ---------------------------------------------------------------- memory and CPU per phase
def reset_peak_rss(pid):
    """Resets the process's VmHWM to its current VmRSS (`echo 5 > /proc/<pid>/clear_refs`,
    Linux 4.0 and later; needs the right to ptrace it, as the process's owner or root).
    False when the kernel or the permissions do not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRss:
    """The server's resident memory over a block: `before`, VmRSS at entry; `sampled`, the
    largest VmRSS read every `interval` s by a thread; `hwm`, VmHWM at exit after a reset at
    entry (None when it could not be reset: it would be the lifetime peak); `peak`, the
    larger of the two (the exact peak when `hwm` is known)."""

    def __init__(self, pid, interval):
        self.pid, self.interval = pid, interval
        self.samples = 0

    def _sample(self):
        v = proc_status(self.pid, "VmRSS")
        self.samples += 1
        if v is not None and v > self.sampled:
            self.sampled = v

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self.reset = reset_peak_rss(self.pid)
        self.before = self.sampled = proc_status(self.pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.hwm = proc_status(self.pid, "VmHWM") if self.reset else None
        self.peak = max(self.sampled, self.hwm or 0)


@contextlib.contextmanager
def phase(srv, res, name):
    """Times a phase and records the server's RSS before it, its peak during it (see
    PeakRss) and the server CPU it took, in res["phases"][name]."""
    os.sync()
    cpu0, t0 = cpu_ticks(srv.pid), time.perf_counter()
    with PeakRss(srv.pid, PARAMS["rss_sample_ms"] / 1000) as rss:
        yield
    res.setdefault("phases", {})[name] = {
        "wall_s": time.perf_counter() - t0,
        "server_cpu_ms": (cpu_ticks(srv.pid) - cpu0) * 1000 / CLK_TCK,
        "rss_before_bytes": rss.before,
        "rss_peak_bytes": rss.peak,
        "rss_peak_sampled_bytes": rss.sampled,
        "rss_samples": rss.samples,
        "vmhwm_reset_at_start": rss.reset,
        "vmhwm_after_bytes": rss.hwm if rss.reset else proc_status(srv.pid, "VmHWM"),
    }


# ---------------------------------------------------------------- media requests
async def upload(c, data, content_type, filename):
    """(seconds, mxc URI) of one upload, answer read."""
    headers = {"Authorization": f"Bearer {c.token}", "Content-Type": content_type}
    t0 = time.perf_counter()
    async with c.http.post(c.base + "/_matrix/media/v3/upload", params={"filename": filename}, data=data,
                           headers=headers, timeout=aiohttp.ClientTimeout(total=300)) as r:
        body = await r.json(content_type=None)
        dt = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError(f"upload of {len(data)} bytes -> {r.status} {body}")
    return dt, body["content_uri"]


async def fetch(c, path, params=None):
    """(seconds to the body's last byte, body, content type) of an authenticated GET."""
    t0 = time.perf_counter()
    async with c.http.get(c.base + path, params=params, headers={"Authorization": f"Bearer {c.token}"},
                          timeout=aiohttp.ClientTimeout(total=300)) as r:
        body = await r.read()
        dt = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError(f"GET {path} {params or ''} -> {r.status} {body[:300]!r}")
        return dt, body, r.headers.get("Content-Type", "")


def media_path(kind, mxc):
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    return f"/_matrix/client/v1/media/{kind}/{server}/{media_id}"


async def transfer(srv, c, res, label, files):
    """Uploads `files` one at a time, then downloads each once (checked); the figures go
    into res as up_<label>_* and down_<label>_*."""
    total = sum(len(f) for f in files)
    with phase(srv, res, f"upload {label}"):
        ups = [await upload(c, data, "application/octet-stream", f"random-{label}-{i}.bin")
               for i, data in enumerate(files)]
    downs = []
    with phase(srv, res, f"download {label}"):
        for data, (_, mxc) in zip(files, ups):
            dt, body, _ = await fetch(c, media_path("download", mxc))
            if body != data:
                raise RuntimeError(f"download of {mxc}: {len(body)} bytes differ from the {len(data)} uploaded")
            downs.append(dt)
    for way, times in (("up", [t for t, _ in ups]), ("down", downs)):
        res[f"{way}_{label}_mib_per_s"] = total / MIB / sum(times)
        res[f"{way}_{label}_p50_ms"] = pct(times, 50) * 1000
        res[f"{way}_{label}_ms"] = [round(t * 1000, 2) for t in times]
    log(srv.name, f"{label}: up {res[f'up_{label}_mib_per_s']:.0f} MiB/s, "
                  f"down {res[f'down_{label}_mib_per_s']:.0f} MiB/s")


async def thumbnails(srv, c, res, jpeg):
    with phase(srv, res, "upload 12 MP JPEG"):
        dt, mxc = await upload(c, jpeg, "image/jpeg", "photo.jpg")
    res["jpeg_upload_ms"] = dt * 1000
    for name, (w, h, method) in THUMBS.items():
        params = {"width": str(w), "height": str(h), "method": method}
        with phase(srv, res, f"first thumbnail {name}"):
            dt, body, ctype = await fetch(c, media_path("thumbnail", mxc), params)
        res[f"thumb_{name}_first_ms"] = dt * 1000
        got = Image.open(io.BytesIO(body))
        res[f"thumb_{name}_returned"] = {"size": list(got.size), "bytes": len(body), "content_type": ctype}
        if got.size != (w, h):
            raise RuntimeError(f"{method} {w}x{h} thumbnail is {got.size[0]}x{got.size[1]}")
        repeats = []
        with phase(srv, res, f"thumbnail {name}, stored, x{PARAMS['thumb_repeats']}"):
            for _ in range(PARAMS["thumb_repeats"]):
                repeats.append((await fetch(c, media_path("thumbnail", mxc), params))[0])
        res[f"thumb_{name}_repeat_ms"] = statistics.median(repeats) * 1000
    res["jpeg_ready_ms"] = res["jpeg_upload_ms"] + res["thumb_scale_first_ms"] + res["thumb_crop_first_ms"]
    log(srv.name, f"JPEG upload {res['jpeg_upload_ms']:.0f} ms, first 800x600 {res['thumb_scale_first_ms']:.0f} ms, "
                  f"first 32x32 {res['thumb_crop_first_ms']:.0f} ms")


async def bench_one(srv, files_small, files_large, jpeg):
    res = {"name": srv.name, "kind": srv.kind}
    try:
        os.sync()
        res["startup_s"] = await srv.start()
        time.sleep(2)
        res["idle_rss_bytes"] = proc_status(srv.pid, "VmRSS")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            if srv.kind == "synapse":
                await synapse_create_token(http, srv.base, "bench-shared-secret")
            await register(http, srv.base, "media")
            c = await login(http, srv.base, "media")
            # warm-up, untimed: the first request of a route may load code
            _, mxc = await upload(c, os.urandom(1024), "application/octet-stream", "warm-up.bin")
            await fetch(c, media_path("download", mxc))
            res["rss_after_login_bytes"] = proc_status(srv.pid, "VmRSS")
            # the lifetime peak so far (start-up, registration's password hash): the phases
            # below reset it
            res["vmhwm_before_phases_bytes"] = proc_status(srv.pid, "VmHWM")
            await transfer(srv, c, res, "1mib", files_small)
            await transfer(srv, c, res, "20mib", files_large)
            await thumbnails(srv, c, res, jpeg)
    finally:
        srv.stop()
    return res


# ---------------------------------------------------------------- report
N1, N20, K = PARAMS["small_count"], PARAMS["large_count"], PARAMS["thumb_repeats"]
# phase key (as in the JSON) -> its name in the table
PHASES = {
    "upload 1mib": f"upload 1 MiB ×{N1}",
    "download 1mib": f"download 1 MiB ×{N1}",
    "upload 20mib": f"upload 20 MiB ×{N20}",
    "download 20mib": f"download 20 MiB ×{N20}",
    "upload 12 MP JPEG": "upload 12 MP JPEG",
    "first thumbnail scale": "first 800×600 thumbnail",
    f"thumbnail scale, stored, x{K}": f"stored 800×600 ×{K}",
    "first thumbnail crop": "first 32×32 thumbnail",
    f"thumbnail crop, stored, x{K}": f"stored 32×32 ×{K}",
}
ROWS = [
    (f"upload 1 MiB ×{N1} (MiB/s)", "up_1mib_mib_per_s", "{:.1f}", "high"),
    ("upload 1 MiB, p50 (ms)", "up_1mib_p50_ms", "{:.1f}", "low"),
    (f"download 1 MiB ×{N1} (MiB/s)", "down_1mib_mib_per_s", "{:.1f}", "high"),
    ("download 1 MiB, p50 (ms)", "down_1mib_p50_ms", "{:.1f}", "low"),
    (f"upload 20 MiB ×{N20} (MiB/s)", "up_20mib_mib_per_s", "{:.1f}", "high"),
    ("upload 20 MiB, p50 (ms)", "up_20mib_p50_ms", "{:.1f}", "low"),
    (f"download 20 MiB ×{N20} (MiB/s)", "down_20mib_mib_per_s", "{:.1f}", "high"),
    ("download 20 MiB, p50 (ms)", "down_20mib_p50_ms", "{:.1f}", "low"),
    ("upload 12 MP JPEG (ms)", "jpeg_upload_ms", "{:.1f}", "low"),
    ("thumbnail 800×600 scale, first request (ms)", "thumb_scale_first_ms", "{:.1f}", "low"),
    (f"thumbnail 800×600 scale, stored, median of {K} (ms)", "thumb_scale_repeat_ms", "{:.2f}", "low"),
    ("thumbnail 32×32 crop, first request (ms)", "thumb_crop_first_ms", "{:.1f}", "low"),
    (f"thumbnail 32×32 crop, stored, median of {K} (ms)", "thumb_crop_repeat_ms", "{:.2f}", "low"),
    ("JPEG ready: upload + both first thumbnails (ms)", "jpeg_ready_ms", "{:.1f}", "low"),
    ("idle RSS (MiB)", "idle_rss_bytes", "mib", "low"),
]
ROWS += [(f"peak RSS: {label} (MiB)", f"peak {key}", "mib", "low") for key, label in PHASES.items()]
ROWS += [(f"RSS before: {label} (MiB)", f"before {key}", "mib", "low") for key, label in PHASES.items()]
ROWS += [(f"server CPU: {label} (ms)", f"cpu {key}", "{:.0f}", "low") for key, label in PHASES.items()]


def flat(r):
    """A result with its per-phase figures as top-level keys, for the table."""
    out = dict(r)
    for key, v in r.get("phases", {}).items():
        out[f"peak {key}"] = v["rss_peak_bytes"]
        out[f"before {key}"] = v["rss_before_bytes"]
        out[f"cpu {key}"] = v["server_cpu_ms"]
    return out


def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main():
    a = side_by_side_args(__doc__.split("\n\n")[0]).parse_args()
    root = os.path.join(a.root, "media")
    os.makedirs(root, exist_ok=True)

    # Synapse's template with the upload limit raised (its default, 50M, is 52,428,800 bytes:
    # set to Hearth's figure instead, so both accept exactly the same).
    template = os.path.join(root, "homeserver-media.yaml.in")
    with open(a.synapse_template) as f, open(template, "w") as out:
        out.write(f.read() + f"\n# bench/media.py\nmax_upload_size: {MAX_UPLOAD_BYTES}\n")

    t = time.perf_counter()
    jpeg = make_jpeg(*PARAMS["jpeg_size"], PARAMS["jpeg_quality"])
    log(f"12 MP JPEG: {len(jpeg):,} bytes, drawn in {time.perf_counter() - t:.1f}s")

    results = []
    port = 18200
    t_all = time.perf_counter()
    for name in a.servers.split(","):
        port += 1
        srv = named_server(a, name, root, port, template)
        if srv.kind == "hearth":
            srv.env["CONDUIT_MAX_REQUEST_SIZE"] = str(MAX_UPLOAD_BYTES)
        # fresh random bytes for every file and every server: Hearth stores identical
        # uploads once, and no server may be handed what it has seen before
        small = [os.urandom(PARAMS["small_bytes"]) for _ in range(PARAMS["small_count"])]
        large = [os.urandom(PARAMS["large_bytes"]) for _ in range(PARAMS["large_count"])]
        log(f"=== {name}")
        try:
            results.append(asyncio.run(bench_one(srv, small, large, jpeg)))
        except Exception as e:  # keep going: a broken server must not hide the others
            log(name, "FAILED:", repr(e))
            results.append({"name": name, "kind": srv.kind, "error": repr(e)})
        del small, large

    mem = int(open("/proc/meminfo").read().split()[1]) * 1024
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    dirty = git("status", "--porcelain", "--", "crates")
    meta = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "build": a.build_label,
        "commit": git("rev-parse", "--short", "HEAD"),
        "crates_modified_in_work_tree": len(dirty.splitlines()) if dirty else 0,
        "params": PARAMS,
        "jpeg_bytes": len(jpeg),
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "machine": {"nproc": os.cpu_count(), "cpu": cpu, "ram_bytes": mem, "kernel": platform.release()},
        "durability": "Hearth fsyncs each uploaded file and its folder before the 200; Synapse 1.163 does not "
                      "fsync media files",
        "elapsed_s": time.perf_counter() - t_all,
    }
    tab = table([flat(r) for r in results], ROWS)
    print()
    print(f"Media, Hearth vs Synapse — {meta['date_utc']}, build: {meta['build']} ({meta['commit']}, "
          f"{meta['crates_modified_in_work_tree']} files under crates/ modified)")
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), {mem / 2**30:.1f} GiB RAM; JPEG {len(jpeg):,} bytes")
    print()
    print(tab)
    for r in results:
        if "error" in r:
            print(f"\n{r['name']} FAILED: {r['error']}")
    print(f"\ntotal {meta['elapsed_s']:.0f}s")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "results": results, "table_markdown": tab}, f, indent=2)


if __name__ == "__main__":
    main()
