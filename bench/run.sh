#!/usr/bin/env bash
# Hearth vs Synapse benchmark, one command:
#   bench/run.sh            full workload (100 users, 10,000-event pagination; ~9 min here, plus the build)
#   bench/run.sh --quick    small workload, under five minutes for all three servers
#   bench/run.sh --profile  short run of Hearth (RocksDB) alone under `perf record`
#   bench/run.sh --federation  Hearth -> Hearth against Synapse -> Synapse over TLS: latency
#                           from send to the remote user's /sync, and messages/s delivered
#                           (bench/federation.py; writes bench/results/federation-latest.json)
#   bench/run.sh --push     push: latency from a message's send to its pushes at a loopback gateway
#                           (100 users with pushers in one room), CPU per sent event with and
#                           without pushers (bench/push.py; writes bench/results/push-latest.json)
#   bench/run.sh --search   search: latency over a room of 100,000 messages (--quick: 10,000),
#                           time until a message is searchable, /messages with bundled
#                           aggregations (bench/search.py; writes bench/results/search-latest.json)
#   bench/run.sh --media    media: upload/download MiB/s of 1 MiB and 20 MiB files, thumbnails of
#                           a 12-megapixel JPEG, peak RSS of each phase (bench/media.py; writes
#                           bench/results/media-latest.json)
#   bench/run.sh --big-join Hearth and Synapse each joining a room of 10,000 members hosted on
#                           Synapse: time and peak RSS (bench/big_join.py, HEARTH_BENCH_MEMBERS
#                           changes the size; writes bench/results/big-join-latest.json)
#   bench/run.sh --sliding-sync  simplified sliding sync (MSC4186) of a user in 200 rooms: first
#                           response time and size ([0,19] and [0,199]), wake-up after a message,
#                           and the same user's /sync (bench/sliding_sync.py; HEARTH_BENCH_QUICK=1
#                           for a 40-room smoke test; writes bench/results/sliding-sync-latest.json)
# Builds Hearth in release into its own target dir (never the shared one), installs Synapse
# into ~/.cache/hearth-bench-venv, runs Synapse, Hearth-RocksDB and Hearth-SQLite on
# loopback, prints a table and writes bench/results/latest.json. Not part of CI.
#
# Environment knobs:
#   HEARTH_BENCH_TARGET  cargo target dir     (default ~/.cache/hearth-target-release)
#   HEARTH_BENCH_BIN     use this hearth binary, skip the build (label it with HEARTH_BENCH_LABEL)
#   HEARTH_BENCH_VENV    Synapse venv          (default ~/.cache/hearth-bench-venv)
#   HEARTH_BENCH_ROOT    scratch data dirs     (default /tmp/hearth-bench)
#   HEARTH_BENCH_SERVERS comma list           (default synapse,hearth-rocksdb,hearth-sqlite)
#   BENCH_PERF_CALLGRAPH e.g. "dwarf" for call graphs in --profile (needs debuginfo, see README)
#   BENCH_PROFILE_PHASE  "first-sync": --profile records only the first initial syncs of
#                        distinct users; "send": only the sends and the background work
#                        they leave (else the whole quick workload)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=bench
SYNAPSE_VERSION=1.163.2
AIOHTTP_VERSION=3.14.5
TARGET="${HEARTH_BENCH_TARGET:-$HOME/.cache/hearth-target-release}"
VENV="${HEARTH_BENCH_VENV:-$HOME/.cache/hearth-bench-venv}"
ROOT="${HEARTH_BENCH_ROOT:-/tmp/hearth-bench}"
SERVERS="${HEARTH_BENCH_SERVERS:-synapse,hearth-rocksdb,hearth-sqlite}"

mode=full
for arg in "$@"; do
    case "$arg" in
        --quick) mode=quick ;;
        --profile) mode=profile ;;
        --federation) mode=federation ;;
        --media) mode=media ;;
        --push) mode=push ;;
        --search) mode=search ;;
        --big-join) mode=big-join ;;
        --sliding-sync) mode=sliding-sync ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

# 1. Hearth, release, separate target dir.
if [[ -n "${HEARTH_BENCH_BIN:-}" ]]; then
    BIN="$HEARTH_BENCH_BIN"
    LABEL="${HEARTH_BENCH_LABEL:-custom binary $BIN}"
else
    # The Dockerfile's build: release, then (amd64 with valgrind) linked again with the code a
    # start runs placed together. The run's JSON says which layout the binary got.
    echo "== building Hearth (release, as the Dockerfile does) into $TARGET" >&2
    BIN="$(CARGO_TARGET_DIR="$TARGET" bash scripts/build-release.sh)"
    LABEL=release
fi

# 2. Synapse + aiohttp + Pillow in a venv (wheels only). Pillow is a dependency of Synapse
#    (its thumbnailer); bench/media.py also draws its test JPEG with it.
#    psycopg2 (its binary wheel) for Synapse on PostgreSQL (`synapse-postgres`, the search
#    benchmark's Synapse: see bench/README.md).
if ! "$VENV/bin/python" -c "import synapse, aiohttp, PIL, psycopg2, sys; sys.exit(synapse.__version__ != '$SYNAPSE_VERSION')" 2>/dev/null; then
    echo "== installing matrix-synapse==$SYNAPSE_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --only-binary :all: "matrix-synapse==$SYNAPSE_VERSION" "aiohttp==$AIOHTTP_VERSION" pillow \
        "psycopg2-binary==2.9.13" >&2
fi
# PostgreSQL for `synapse-postgres` (Debian's, run as its `postgres` user).
if [[ "$mode" == search && ! -x /usr/lib/postgresql/15/bin/initdb ]]; then
    echo "== installing PostgreSQL (Debian) for Synapse on PostgreSQL" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql-15 >&2
fi
PY="$VENV/bin/python"
mkdir -p "$BENCH/results"

common=(--hearth-bin "$BIN" --synapse-python "$PY" --synapse-template "$BENCH/synapse/homeserver.yaml.in"
        --root "$ROOT" --build-label "$LABEL")

if [[ "$mode" == federation ]]; then
    "$PY" "$BENCH/federation.py" --hearth-bin "$BIN" --synapse-python "$PY" --label "$LABEL" \
        --json "$BENCH/results/federation-latest.json"
    exit 0
fi

if [[ "$mode" == big-join ]]; then
    "$PY" "$BENCH/big_join.py" --hearth-bin "$BIN" --synapse-python "$PY" --label "$LABEL" \
        --members "${HEARTH_BENCH_MEMBERS:-10000}" --json "$BENCH/results/big-join-latest.json"
    exit 0
fi

if [[ "$mode" == push ]]; then
    "$PY" "$BENCH/push.py" "${common[@]}" --servers "$SERVERS" --json "$BENCH/results/push-latest.json"
    exit 0
fi

if [[ "$mode" == search ]]; then
    # Synapse on SQLite slows to a few events a second as a room grows past 40,000 messages
    # (bench/README.md): the search benchmark runs Synapse on PostgreSQL unless told otherwise.
    "$PY" "$BENCH/search.py" "${common[@]}" --servers "${HEARTH_BENCH_SERVERS:-synapse-postgres,hearth-rocksdb,hearth-sqlite}" \
        ${HEARTH_BENCH_QUICK:+--quick} \
        --json "$BENCH/results/search-latest.json"
    exit 0
fi

if [[ "$mode" == sliding-sync ]]; then
    out="$BENCH/results/sliding-sync-latest.json"
    [[ -n "${HEARTH_BENCH_QUICK:-}" ]] && out="$BENCH/results/sliding-sync-quick.json"
    "$PY" "$BENCH/sliding_sync.py" "${common[@]}" --servers "$SERVERS" ${HEARTH_BENCH_QUICK:+--quick} \
        --json "$out"
    exit 0
fi

if [[ "$mode" == media ]]; then
    "$PY" "$BENCH/media.py" "${common[@]}" --servers "$SERVERS" --json "$BENCH/results/media-latest.json"
    exit 0
fi

if [[ "$mode" == profile ]]; then
    out="$BENCH/results/profile"
    rm -rf "$out"
    mkdir -p "$out"
    # perf if it can sample here (software cpu-clock event: works in VMs without PMU access),
    # else valgrind's callgrind on a tiny workload.
    if command -v perf >/dev/null && perf record -e cpu-clock -o /dev/null true >/dev/null 2>&1; then
        "$PY" "$BENCH/workload.py" --quick "${common[@]}" --servers hearth-rocksdb \
            --profile "$out" --json "$out/profile-run.json"
        perf report -i "$out/perf-hearth-rocksdb.data" --no-children --sort dso,symbol --stdio \
            > "$out/perf-report.txt" 2>/dev/null || true
        echo
        echo "== where Hearth (RocksDB) spends its CPU over the quick workload (full: $out/perf-report.txt):"
        grep -v -e '^#' -e '^$' "$out/perf-report.txt" | sed -e 's/[ -]*$//' -e 's/^\(.\{160\}\).*/\1/' | sed -n '1,40p' || true
    elif command -v valgrind >/dev/null; then
        echo "== perf unavailable: profiling with callgrind on a tiny workload" >&2
        BENCH_PROFILER=callgrind "$PY" "$BENCH/workload.py" --tiny "${common[@]}" --servers hearth-rocksdb \
            --profile "$out" --json "$out/profile-run.json"
        # one file per server start (pid in the name); the largest is the workload's
        cg="$(ls -S "$out"/callgrind-hearth-rocksdb.*.out | head -n1)"
        callgrind_annotate "$cg" > "$out/callgrind-report.txt" 2>/dev/null || true
        sed -n '1,60p' "$out/callgrind-report.txt"
    else
        echo "neither perf (apt-get install linux-perf) nor valgrind is installed" >&2
        exit 1
    fi
    exit 0
fi

quick=()
[[ "$mode" == quick ]] && quick=(--quick)
"$PY" "$BENCH/workload.py" "${quick[@]}" "${common[@]}" --servers "$SERVERS" --json "$BENCH/results/latest.json"
