"""Pictures through Hearth with matrix-js-sdk's own media helpers, on each storage engine.

The same story as test_media.py (matrix-nio), told by matrix-js-sdk 36 (issue 17) in
tests/clients/js/media.mjs: alice uploads a PNG this test makes (`uploadContent`), sets it
as her avatar (`setAvatarUrl`) and sends it as an `m.image` (`sendImageMessage`) into a
room with bob; bob's syncing client sees the message, turns its mxc into an authenticated
URL with the SDK's `getHttpUriForMxc(..., useAuthentication=true)`, downloads it with his
access token as a Bearer header and gets the very bytes alice uploaded, and fetches a
32x32 "crop" thumbnail URL from the same helper. The script asserts all that itself; this
test checks its report again independently: the sha256 of the bytes it made against the
download's, the thumbnail decoded here (a 32x32 JPEG), and alice's avatar mxc.

Needs `node` (>= 20) and tests/clients/js/node_modules: run `scripts/setup-node.sh`.
A missing install fails the test; it is never skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from test_media import jpeg_size, png

pytestmark = pytest.mark.parametrize("backend", ["rocksdb", "sqlite"])

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = JS_DIR / "media.mjs"
SCRIPT_TIMEOUT_S = 120


def node_or_fail() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: run scripts/setup-node.sh (it needs Node.js >= 20)", pytrace=False)
    sdk_package = JS_DIR / "node_modules" / "matrix-js-sdk" / "package.json"
    if not sdk_package.is_file():
        pytest.fail(f"{sdk_package} is missing: run scripts/setup-node.sh", pytrace=False)
    return node


def run_script(node: str, script: Path, hearth, extra: list[str], timeout_s: int = SCRIPT_TIMEOUT_S) -> dict:
    """Runs a js-sdk scenario script against `hearth`; the JSON object it printed."""
    try:
        run = subprocess.run(
            [node, str(script), "--server", hearth.url, "--token", hearth.registration_token, *extra,
             "--timeout-ms", str((timeout_s - 10) * 1000)],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script.name} did not exit within {timeout_s}s\nstderr:\n{e.stderr}", pytrace=False)
    assert run.returncode == 0, f"{script.name} exited with {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return json.loads(run.stdout)


def test_js_sdk_uploads_sets_avatar_sends_and_downloads_an_image(hearth, backend, tmp_path):
    assert hearth.env["CONDUIT_DATABASE_BACKEND"] == backend
    node = node_or_fail()
    picture = png(64, 48)
    image = tmp_path / "sunset.png"
    image.write_bytes(picture)

    result = run_script(node, SCRIPT, hearth, ["--image", str(image), "--server-name", hearth.server_name])

    assert result["sdk_version"].startswith("36."), result["sdk_version"]
    mxc = result["mxc"]
    assert mxc.startswith(f"mxc://{hearth.server_name}/"), mxc
    assert result["avatar_url"] == mxc
    assert result["event_url"] == mxc
    assert result["alice"] == f"@alice:{hearth.server_name}"

    # The bytes: what this test made, what the script read, what bob downloaded.
    assert result["upload_sha256"] == hashlib.sha256(picture).hexdigest()
    assert result["download_sha256"] == hashlib.sha256(picture).hexdigest()
    assert result["download_url"].startswith(f"{hearth.url}/_matrix/client/v1/media/download/{hearth.server_name}/")
    assert result["download_content_type"] == "image/png"
    assert result["anonymous_download_status"] == 401

    # The thumbnail, decoded here: a JPEG 32 pixels square, from the authenticated endpoint.
    assert result["thumbnail_url"].startswith(f"{hearth.url}/_matrix/client/v1/media/thumbnail/{hearth.server_name}/")
    assert "width=32" in result["thumbnail_url"] and "height=32" in result["thumbnail_url"]
    assert "method=crop" in result["thumbnail_url"]
    thumbnail = base64.b64decode(result["thumbnail_base64"])
    assert len(thumbnail) == result["thumbnail_size"]
    assert result["thumbnail_content_type"] == "image/jpeg", result["thumbnail_content_type"]
    assert jpeg_size(thumbnail) == (32, 32)
