#!/usr/bin/env bash
# Element X's engine against Hearth's simplified sliding sync (MSC4186; issue 23, "Tests (CI)").
#
# Builds tests/element-x (a Rust program on matrix-sdk and matrix-sdk-ui 0.18, in its own
# crate with its own Cargo.lock, outside the repository's workspace so that `cargo test
# --workspace` never builds it), then runs it against a Hearth binary. The program starts
# Hearth the way tests/clients/conftest.py does (the seed deployment's ConfigMap and token,
# a temporary database, 127.0.0.1, a free port), puts a logging proxy in front of it, and
# runs Element X-like clients (password login, SyncService, RoomListService) through seven
# scenarios: every joined room seen; an invite seen and accepted; a DM flagged as DM; a new
# message moving its room to the top; a read receipt and typing arriving; an encrypted
# room's messages decrypted; nothing lost across a stopped sync, a dropped connection and
# a reused pos. It prints PASS/FAIL per scenario (a failure shows the sliding-sync
# exchanges behind it), then one line `element-x: N passed, M failed`, and exits non-zero
# if anything failed or the build failed.
#
# Usage: scripts/test-element-x.sh [SCENARIO...]   (joined-rooms invite dm recency
#        receipts-typing e2ee reconnect; default: all)
#
# Environment:
#   HEARTH_BIN            the Hearth binary to test (default, as scripts/fuzz-api.sh:
#                         ${CARGO_TARGET_DIR:-~/.cache/hearth-target}/debug/hearth). It is
#                         copied before it runs, so rebuilding it meanwhile is harmless.
#   ELEMENT_X_TARGET_DIR  where this crate is built (default ~/.cache/element-x-target).
#                         CARGO_TARGET_DIR is deliberately NOT used for it: in this project it
#                         names Hearth's own target directory (scripts/test.sh exports it), and
#                         this crate's ~430 dependencies have no business there.
#   CARGO_BUILD_JOBS      honoured by cargo as usual (e.g. 1 on a busy two-core machine).
#   EX_KEEP=1             keep the work directory (exchanges.log, sdk.log, Hearth's logs) even
#                         when everything passed; it is always kept on failure.
#   EX_SERVER_URL         run the same scenarios against an already-running homeserver instead
#                         (a reference run, e.g. Synapse with native sliding sync; users then
#                         register with EX_REGISTRATION_TOKEN). HEARTH_BIN must still exist.
#
# Needs only what scripts/install-deps.sh --build-only provides (Rust, a C compiler) and
# crates.io; the dependencies use rustls (aws-lc-rs), no OpenSSL, no SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."

HEARTH_BIN="${HEARTH_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth}"
export HEARTH_BIN
target="${ELEMENT_X_TARGET_DIR:-$HOME/.cache/element-x-target}"
scenarios=7

if [[ ! -x "$HEARTH_BIN" ]]; then
    echo "element-x: no Hearth binary at $HEARTH_BIN (build it: cargo build -p hearth; or set HEARTH_BIN)" >&2
    echo "element-x: 0 passed, $scenarios failed (no Hearth binary)"
    exit 1
fi

if ! CARGO_TARGET_DIR="$target" cargo build --locked --manifest-path tests/element-x/Cargo.toml >&2; then
    echo "element-x: 0 passed, $scenarios failed (the test crate did not build)"
    exit 1
fi

exec "$target/debug/hearth-element-x-test" "$@"
