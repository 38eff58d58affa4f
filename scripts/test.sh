#!/usr/bin/env bash
# All of Hearth's tests: formatting, the Rust suites (unit, and end-to-end over HTTP on
# both storage engines), then real Matrix client libraries against the built binary.
# Run `scripts/install-deps.sh` once first (CI's `.ci/run` does both).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}"
VENV="${HEARTH_VENV:-$HOME/.cache/hearth-venv}"
SYNAPSE_VENV="${HEARTH_SYNAPSE_VENV:-$HOME/.cache/hearth-synapse-venv}"

# The checks scripts/install-deps.sh makes, on fake directory trees.
bash scripts/test-deps.sh
cargo fmt --all --check
# Build everything once with the test profile's feature set (dev-dependencies unify features;
# a separate `cargo build --bins` would compile RocksDB's C++ a second time). The binary the
# client tests use comes out of this build too.
cargo test --workspace --no-run
cargo test --workspace -- --test-threads "${HEARTH_TEST_THREADS:-4}"

export HEARTH_BIN="$CARGO_TARGET_DIR/debug/hearth"
# Deployment artefacts: kustomize renders validated strictly, Dockerfile lint, the
# runtime layout started with each overlay's ConfigMap and Secret.
bash scripts/validate-deploy.sh --binary "$HEARTH_BIN"
# Every client-server operation of the spec, fuzzed: no input may get a 5xx.
bash scripts/fuzz-api.sh
# Real Matrix clients against the built binary.
"$VENV/bin/python" -m pytest -q tests/clients
# Element X's engine (matrix-sdk-ui) over simplified sliding sync: its own crate and target dir.
bash scripts/test-element-x.sh
# sytest (matrix-org's suite) on both engines, when ../shared/sytest is there: every test
# of its single-server list passes, less tests/sytest/known-failures.txt.
bash scripts/sytest.sh "$HEARTH_BIN"
# Federation with a real Synapse over TLS (its own venv); its summary line closes the run.
"$SYNAPSE_VENV/bin/python" -m pytest -q tests/federation
