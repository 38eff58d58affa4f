"""Threads and edits with matrix-js-sdk 36, as Element runs it (threads on), in
tests/clients/js/threads.mjs: alice starts a thread that bob replies in and edits a
message; a fresh client of bob's finds server-side thread support, lists the room's
threads through `/threads` with the summary bundled, and sees the edit bundled on the
original in `/messages`. The script asserts that itself; this test checks its report
again against the events it says were sent.

Needs `node` (>= 20) and tests/clients/js/node_modules: run `scripts/setup-node.sh`.
"""

from __future__ import annotations

from test_js_sdk_media import JS_DIR, node_or_fail, run_script

SCRIPT = JS_DIR / "threads.mjs"


def test_js_sdk_lists_threads_and_shows_edits(hearth):
    result = run_script(node_or_fail(), SCRIPT, hearth, [])
    assert result["listed"] == [result["root"]], result
    assert result["count"] == 2, result
    assert result["latest"].startswith("$") and result["latest"] != result["root"], result
    assert result["bundled"] == result["edit"], result
    assert result["hierarchy"][0] == result["space"] and len(result["hierarchy"]) == 2, result
    assert result["jumped"] is True, result
