"""Pictures through Hearth with matrix-nio, on each storage engine.

alice uploads a PNG the test makes (a real, decodable image: zlib-compressed scanlines),
sets it as her avatar and sends it as an `m.image` into a room with bob; bob's client
sees the message, downloads the picture through the authenticated media endpoint
(`/_matrix/client/v1/media/download`) and gets the very bytes alice uploaded, and a
32x32 cropped thumbnail (a JPEG of that size); alice's profile gives the same `mxc://`
avatar back. The file's type and name come back too.
"""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest
from nio.api import ResizingMethod, RoomPreset
from nio.events import RoomMessageImage
from nio.responses import (
    DownloadResponse,
    ProfileGetAvatarResponse,
    RoomCreateResponse,
    ThumbnailResponse,
    UploadResponse,
)

from test_chat import initial_sync, register, sync_until, timeline

pytestmark = pytest.mark.parametrize("backend", ["rocksdb", "sqlite"])


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG with a gradient."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 128))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame marker."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    i = 2
    while i + 9 < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    raise AssertionError("no start-of-frame marker")


def test_an_image_uploaded_set_as_avatar_sent_and_downloaded(hearth, backend):
    assert hearth.env["CONDUIT_DATABASE_BACKEND"] == backend

    async def scenario():
        alice = await register(hearth, "alice")
        bob = await register(hearth, "bob")
        try:
            picture = png(64, 48)
            uploaded, _ = await alice.upload(lambda *_: picture, content_type="image/png", filename="sunset.png",
                                             filesize=len(picture))
            assert isinstance(uploaded, UploadResponse), uploaded
            uri = uploaded.content_uri
            assert uri.startswith(f"mxc://{hearth.server_name}/"), uri

            await alice.set_avatar(uri)
            avatar = await bob.get_avatar(alice.user_id)
            assert isinstance(avatar, ProfileGetAvatarResponse) and avatar.avatar_url == uri, avatar

            created = await alice.room_create(preset=RoomPreset.private_chat, invite=[bob.user_id])
            assert isinstance(created, RoomCreateResponse), created
            room = created.room_id
            await bob.join(room)
            since = await initial_sync(bob)
            content = {"msgtype": "m.image", "body": "sunset.png", "url": uri,
                       "info": {"mimetype": "image/png", "size": len(picture), "w": 64, "h": 48}}
            await alice.room_send(room, "m.room.message", content)
            seen, _ = await sync_until(
                bob, since, lambda r: any(isinstance(e, RoomMessageImage) for e in timeline(r, room)), "the image"
            )
            image = [e for r in seen for e in timeline(r, room) if isinstance(e, RoomMessageImage)][-1]
            assert image.url == uri

            got = await bob.download(mxc=image.url)
            assert isinstance(got, DownloadResponse), got
            assert got.body == picture, "the downloaded bytes differ from the upload"
            assert got.content_type == "image/png"
            assert got.filename == "sunset.png"

            # The 32x32 thumbnail Element shows in the timeline: a JPEG 32 pixels square.
            server_name, media_id = uri.removeprefix("mxc://").split("/", 1)
            thumb = await bob.thumbnail(server_name, media_id, 32, 32, ResizingMethod.crop)
            assert isinstance(thumb, ThumbnailResponse), thumb
            assert thumb.content_type == "image/jpeg", thumb.content_type
            assert jpeg_size(thumb.body) == (32, 32)
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())
