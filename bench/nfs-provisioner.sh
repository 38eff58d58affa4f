#!/usr/bin/env bash
# hearth-nfs-provisioner's figures (issue 25, "Speed"): claims provisioned per second, released
# volumes deleted per second, CPU per claim, resident memory at rest and after a burst, and the
# binary's size; against the fake API server of the crate's end-to-end tests, on loopback, with
# a temporary directory as the share. A benchmark, not a test: nothing here fails on a number.
#
#   bench/nfs-provisioner.sh              3 runs of 1,000 claims; medians
#   bench/nfs-provisioner.sh --quick      1 run of 200 claims
#
# Builds the release binary (`cargo build --release -p nfs-provisioner`, no RocksDB) into
# ${NFS_PROVISIONER_BENCH_TARGET:-${CARGO_TARGET_DIR:-~/.cache/hearth-target-release}}, or takes
# NFS_PROVISIONER_BENCH_BIN; the harness (crates/nfs-provisioner/tests/bench.rs, an #[ignore]d
# test) is built in the dev profile with the same target dir. Writes
# bench/results/nfs-provisioner-latest.json and prints a Markdown table.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
runs=3
claims=1000
if [[ "${1:-}" == --quick ]]; then runs=1; claims=200; fi
export CARGO_TARGET_DIR="${NFS_PROVISIONER_BENCH_TARGET:-${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target-release}}"

binary="${NFS_PROVISIONER_BENCH_BIN:-}"
if [[ -z "$binary" ]]; then
    cargo build --release --locked -p nfs-provisioner >&2
    binary="$CARGO_TARGET_DIR/release/hearth-nfs-provisioner"
fi
stripped="$(mktemp)"
figures="$(mktemp)"
trap 'rm -f "$stripped" "$figures"' EXIT
strip -o "$stripped" "$binary" 2>/dev/null || cp "$binary" "$stripped"

cargo test --locked -p nfs-provisioner --test bench --no-run >&2
for i in $(seq 1 "$runs"); do
    echo "bench: run $i of $runs, $claims claims" >&2
    line="$(NFS_PROVISIONER_BENCH_BIN="$binary" NFS_PROVISIONER_BENCH_CLAIMS="$claims" \
        cargo test --locked -q -p nfs-provisioner --test bench -- --ignored --nocapture 2>/dev/null \
        | sed -n 's/^BENCH-JSON //p')"
    [[ -n "$line" ]] || { echo "bench: run $i printed no figures" >&2; exit 1; }
    echo "$line" >> "$figures"
done

python3 - "$figures" "$stripped" "$claims" "$repo_root/bench/results/nfs-provisioner-latest.json" <<'PY'
import json, os, platform, statistics, sys, time
figures, stripped, claims, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
runs = [json.loads(l) for l in open(figures) if l.strip()]
med = lambda k: statistics.median(r[k] for r in runs)
mib = lambda kib: f"{kib / 1024:.1f} MiB"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
summary = {
    "date": time.strftime("%Y-%m-%d"), "machine": f"{cpu}, {os.cpu_count()} cores, {platform.machine()}",
    "kernel": platform.release(), "claims": claims, "runs": runs,
    "binary_bytes": runs[0]["binary_bytes"], "stripped_bytes": os.path.getsize(stripped),
    "median": {k: med(k) for k in runs[0] if isinstance(runs[0][k], (int, float))},
}
with open(out, "w") as f:
    json.dump(summary, f, indent=2)
m = summary["median"]
print(f"{summary['date']}, {summary['machine']}, {len(runs)} run(s) of {claims} claims, medians:\n")
print("| figure | value |\n|---|---|")
rows = [
    ("binary (release, as built / stripped)", f"{summary['binary_bytes'] / 1e6:.1f} MB / {summary['stripped_bytes'] / 1e6:.1f} MB"),
    ("start → Lease held and first claim provisioned", f"{m['ready_ms']:.0f} ms"),
    ("idle RSS, leader watching claims and volumes", mib(m["idle_rss_kib"])),
    (f"{claims} claims at once: all PVs created", f"{m['burst_ms']:.0f} ms"),
    ("claims provisioned per second", f"{m['claims_per_second']:.0f}"),
    ("CPU per claim (user + system)", f"{m['cpu_ms_per_claim']:.2f} ms"),
    ("RSS after the burst (peak)", f"{mib(m['after_burst_rss_kib'])} ({mib(m['after_burst_hwm_kib'])})"),
    (f"{claims} volumes released at once: all deleted", f"{m['release_ms']:.0f} ms"),
    ("released volumes deleted per second", f"{m['deletions_per_second']:.0f}"),
    ("CPU per deletion", f"{m['cpu_ms_per_deletion']:.2f} ms"),
    ("RSS at rest afterwards (peak)", f"{mib(m['rest_rss_kib'])} ({mib(m['rest_hwm_kib'])})"),
    ("SIGTERM → exit 0 (Lease released)", f"{m['sigterm_exit_ms']:.0f} ms"),
]
for k, v in rows:
    print(f"| {k} | {v} |")
print(f"\nwritten: {out}")
PY
