"""Uploads under crashes and memory limits, against the real binary, on each storage engine.

1. `kill -9` in the middle of an upload: an upload answered 200 before the crash comes
   back whole after the restart; the one cut short leaves nothing behind: no temporary
   file, no file under `media/` that no record names (only the acknowledged upload's file
   is there), and the server still takes new uploads of the same bytes.
2. A 20 MB upload and its download do not make the server hold the body: the process's
   peak resident memory (`VmHWM`) grows by much less than the body's size. The body
   streams to disk while it is hashed, and back out of the file in chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest

from test_chat import register

pytestmark = pytest.mark.parametrize("backend", ["rocksdb", "sqlite"])

MiB = 1024 * 1024


def media_files(hearth) -> list[Path]:
    """Files under the media folder's two hash levels (temporary files and thumbnails aside)."""
    root = Path(hearth.env["CONDUIT_DATABASE_PATH"]) / "media"
    return [
        f
        for f in root.glob("??/??/*")
        if f.is_file()
    ]


def tmp_files(hearth) -> list[Path]:
    return list((Path(hearth.env["CONDUIT_DATABASE_PATH"]) / "media" / "tmp").iterdir())


def status_kib(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM`-style line of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


async def upload(session: aiohttp.ClientSession, hearth, token: str, body, content_type: str) -> dict:
    async with session.post(
        f"{hearth.url}/_matrix/media/v3/upload",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    ) as res:
        payload = await res.json()
        assert res.status == 200, payload
        return payload


async def download(session: aiohttp.ClientSession, hearth, token: str, mxc: str) -> bytes:
    path = mxc.removeprefix("mxc://")
    async with session.get(
        f"{hearth.url}/_matrix/client/v1/media/download/{path}",
        headers={"Authorization": f"Bearer {token}"},
    ) as res:
        assert res.status == 200, await res.text()
        return await res.read()


def test_kill_during_an_upload_leaves_no_half_file_and_loses_no_acknowledged_one(hearth, backend):
    kept = os.urandom(300_000)
    cut = os.urandom(4 * MiB)

    async def before_crash() -> tuple[str, str]:
        client = await register(hearth, "alice")
        token = client.access_token
        await client.close()
        async with aiohttp.ClientSession() as session:
            done = await upload(session, hearth, token, kept, "application/octet-stream")

            # Half of `cut`, then the sender waits: the server has a partial temporary file.
            half_sent = asyncio.Event()
            never = asyncio.Event()

            async def body():
                for i in range(0, len(cut) // 2, 64 * 1024):
                    yield cut[i:i + 64 * 1024]
                half_sent.set()
                await never.wait()

            sending = asyncio.create_task(upload(session, hearth, token, body(), "application/octet-stream"))
            await asyncio.wait_for(half_sent.wait(), 30)
            for _ in range(300):
                partial = tmp_files(hearth)
                if partial and sum(p.stat().st_size for p in partial) >= len(cut) // 4:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"the upload never reached the server's temporary file: {tmp_files(hearth)}")
            hearth.crash()
            sending.cancel()
            try:
                await sending
            except (asyncio.CancelledError, aiohttp.ClientError, AssertionError):
                pass
        return token, done["content_uri"]

    token, kept_uri = asyncio.run(before_crash())
    assert tmp_files(hearth), "the crash left the partial upload's temporary file (the restart must sweep it)"

    hearth.start()
    assert tmp_files(hearth) == [], "the temporary file of the upload cut short is swept at start"
    files = media_files(hearth)
    digest = hashlib.sha256(kept).hexdigest()
    stored = [(f.parent.parent.name, f.parent.name, f.name) for f in files]
    # Conduit 0.10's layout: the content's SHA-256, split 2/2/60.
    assert stored == [(digest[:2], digest[2:4], digest[4:])], "only the acknowledged upload's file is stored"


    async def after_restart():
        async with aiohttp.ClientSession() as session:
            assert await download(session, hearth, token, kept_uri) == kept, "the acknowledged upload is whole"
            again = await upload(session, hearth, token, cut, "application/octet-stream")
            assert await download(session, hearth, token, again["content_uri"]) == cut

    asyncio.run(after_restart())


@pytest.mark.parametrize("hearth_extra_env", [{"CONDUIT_MAX_REQUEST_SIZE": str(50 * MiB)}])
def test_a_20_mb_upload_and_download_are_streamed(hearth, backend, hearth_extra_env):
    body = os.urandom(20 * MiB)
    pid = hearth.proc.pid

    async def scenario():
        client = await register(hearth, "alice")
        token = client.access_token
        await client.close()
        async with aiohttp.ClientSession() as session:
            # Warm up every path once (thread pools, buffers), then measure the peak.
            small = await upload(session, hearth, token, os.urandom(256 * 1024), "application/octet-stream")
            await download(session, hearth, token, small["content_uri"])
            peak_before = status_kib(pid, "VmHWM")

            async def chunks():
                for i in range(0, len(body), 256 * 1024):
                    yield body[i:i + 256 * 1024]

            done = await upload(session, hearth, token, chunks(), "application/octet-stream")
            after_upload = status_kib(pid, "VmHWM")
            got = await download(session, hearth, token, done["content_uri"])
            after_download = status_kib(pid, "VmHWM")
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest(), "the same 20 MB back"
        return peak_before, after_upload, after_download

    peak_before, after_upload, after_download = asyncio.run(scenario())
    print(f"peak RSS: {peak_before} KiB before, +{after_upload - peak_before} after the upload, +{after_download - peak_before} after the download")
    limit_kib = len(body) // 1024 // 4
    assert after_upload - peak_before < limit_kib, (
        f"the upload raised the peak RSS by {after_upload - peak_before} KiB (body: {len(body) // 1024} KiB)"
    )
    assert after_download - peak_before < limit_kib, (
        f"the download raised the peak RSS by {after_download - peak_before} KiB (body: {len(body) // 1024} KiB)"
    )
