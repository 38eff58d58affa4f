#!/usr/bin/env bash
# All of Hearth's tests: formatting, the Rust suites (unit, and end-to-end over HTTP on
# both storage engines), then real Matrix client libraries against the built binary.
# Run `scripts/install-deps.sh` once first (CI's `.ci/run` does both).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}"
VENV="${HEARTH_VENV:-$HOME/.cache/hearth-venv}"

cargo fmt --all --check
cargo build --workspace --bins
cargo test --workspace -- --test-threads "${HEARTH_TEST_THREADS:-4}"

export HEARTH_BIN="$CARGO_TARGET_DIR/debug/hearth"
"$VENV/bin/python" -m pytest -q tests/clients
