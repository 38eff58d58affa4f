#!/usr/bin/env bash
# List the functions a Hearth binary runs while it starts and sits idle, for the release link
# to place side by side at the front of `.text`. Called by scripts/build-release.sh, which
# builds, runs this on the binary it built, and links again with the list.
#
# Why: the kernel maps code in 64 KiB windows around each page fault ("fault-around"). With
# the default layout, the ~3 MiB of functions a start runs are spread over the whole 17 MiB
# of code (RocksDB's static initialisers alone sit in 300 object files), so an idle server
# had 11-12 MiB of code resident. Packed together, they take about 3 MiB. A cold start also
# reads fewer pages from disk.
#
# How: the binary runs under valgrind's callgrind twice, on a new database and on the
# existing one, each answering /_matrix/client/versions and then idling 3 s. Every function
# callgrind saw run is listed, by linker symbol name. Closures and generic instances carry
# hashes in their names, so a list fits only the code it was made from: that is why it is
# made during each release build and never committed.
#
# Usage: scripts/startup-order.sh BINARY OUTPUT   (needs valgrind and curl)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:?usage: startup-order.sh BINARY OUTPUT}"
OUT="${2:?usage: startup-order.sh BINARY OUTPUT}"
PORT="${HEARTH_ORDER_PORT:-18990}"
command -v valgrind >/dev/null || { echo "startup-order.sh: valgrind is needed" >&2; exit 2; }
command -v curl >/dev/null || { echo "startup-order.sh: curl is needed" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run_once() { # $1: output file
    env CONDUIT_CONFIG= CONDUIT_SERVER_NAME=order.local CONDUIT_ADDRESS=127.0.0.1 \
        CONDUIT_PORT="$PORT" CONDUIT_DATABASE_PATH="$work/db" HEARTH_LOG=warn \
        valgrind --tool=callgrind --demangle=no --dump-instr=no --compress-strings=no \
        --compress-pos=no --callgrind-out-file="$1" "$BIN" >>"$work/log" 2>&1 &
    local pid=$! up=
    for _ in $(seq 1 900); do
        if curl -fs -o /dev/null "http://127.0.0.1:$PORT/_matrix/client/versions"; then up=1; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n "$up" ]] || { cat "$work/log" >&2; echo "startup-order.sh: Hearth did not start" >&2; exit 1; }
    sleep 3
    kill -TERM "$pid"
    wait "$pid" || true
}

run_once "$work/new.out"   # a new database
run_once "$work/open.out"  # the same database, opened again

# `fn=` lines name every function that ran; addresses without a symbol and
# callgrind's pseudo-entries are left out.
grep -h '^fn=' "$work/new.out" "$work/open.out" | sed 's/^fn=//' | grep -v '^0x\|^(' | LC_ALL=C sort -u >"$OUT"
echo "wrote $(wc -l <"$OUT") names to $OUT" >&2
