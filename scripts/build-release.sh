#!/usr/bin/env bash
# The release build of Hearth that users get: the Dockerfile's build stage and bench/run.sh
# both run this, so the benchmark measures the binary the image ships.
#
# 1. `cargo build --release`.
# 2. Where the link can use it (x86_64 Linux with rust-lld, the default linker there) and
#    valgrind is installed: list the functions that binary runs while it starts and idles
#    (scripts/startup-order.sh), then link again with them placed together at the front of
#    `.text` (crates/hearth/build.rs reads the list from HEARTH_STARTUP_ORDER). The kernel
#    maps code in 64 KiB windows around each fault, so start-up code spread over the whole
#    binary keeps 11-12 MiB of it resident; placed together, about 3 MiB. The list is made
#    from the very code being built, every time, so it can never be stale, and nothing
#    generated is committed.
#    Elsewhere (arm64 boards use GNU ld, which has no such option; no valgrind) the binary
#    keeps the default layout, with a note on stderr.
#
# Usage: scripts/build-release.sh [--out PATH]    (the binary is copied to PATH when given)
# CARGO_TARGET_DIR defaults to ~/.cache/hearth-target-release. The list, when made, is left
# beside the binary as release/startup-order.txt (bench/workload.py reports it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        *) echo "build-release: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target-release}"
bin="$CARGO_TARGET_DIR/release/hearth"
list="$CARGO_TARGET_DIR/release/startup-order.txt"

unset HEARTH_STARTUP_ORDER
rm -f "$list"
cargo build --release --locked -p hearth >&2

why_not=""
if [[ "$(uname -m)" != x86_64 ]]; then
    why_not="the link on $(uname -m) cannot order functions"
elif ! command -v valgrind >/dev/null 2>&1; then
    why_not="valgrind is not installed (apt-get install valgrind)"
elif ! command -v curl >/dev/null 2>&1; then
    why_not="curl is not installed"
fi
if [[ -z "$why_not" ]]; then
    bash scripts/startup-order.sh "$bin" "$list.tmp"
    mv "$list.tmp" "$list"
    HEARTH_STARTUP_ORDER="$list" cargo build --release --locked -p hearth >&2
else
    echo "build-release: default code layout ($why_not); idle memory is a few MiB higher" >&2
fi
if [[ -n "$out" ]]; then
    install -D -m 0755 "$bin" "$out"
fi
echo "$bin"
