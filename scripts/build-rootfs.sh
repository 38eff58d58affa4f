#!/usr/bin/env bash
# Produce the runtime layout of Hearth's container image (see Dockerfile) without Docker,
# in a directory that goes on top of a debian:bookworm-slim root with ca-certificates and
# libstdc++6:
#
#   usr/local/bin/hearth            the binary (0755)
#   var/lib/matrix-conduit/         the data directory (0750, uid/gid 10001 when run as root)
#   etc/passwd.hearth, etc/group.hearth
#                                   the user's entries, to append to the base's /etc/passwd
#                                   and /etc/group
#   image-manifest.json             entrypoint, user, env defaults, port, volume, stop
#                                   signal and health check, as in the Dockerfile
#
# Usage: scripts/build-rootfs.sh [--binary PATH] [--out DIR]
#   --binary PATH  use an existing build (e.g. the debug binary in tests) instead of
#                  running `cargo build --release -p hearth`
#   --out DIR      where to write the layout (default ./dist/rootfs); replaced if it exists
#                  and holds a previous layout (or is empty), refused otherwise
# Pack it, for example: tar --numeric-owner -C dist/rootfs -czf hearth-rootfs.tar.gz .
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary=""
out="./dist/rootfs"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) [[ $# -ge 2 ]] || usage; binary="$2"; shift 2 ;;
        --binary=*) binary="${1#*=}"; shift ;;
        --out) [[ $# -ge 2 ]] || usage; out="$2"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        -h | --help) usage 0 ;;
        *) echo "build-rootfs: unknown argument '$1'" >&2; usage ;;
    esac
done

# The values below are the Dockerfile's; scripts/validate-deploy.sh checks they agree.
UID_GID=10001
USER_NAME=hearth
DATA_DIR=var/lib/matrix-conduit
PORT=6167

if [[ -z "$binary" ]]; then
    echo "build-rootfs: building the release binary (cargo build --release -p hearth)" >&2
    (cd "$repo_root" && cargo build --release --locked -p hearth)
    binary="${CARGO_TARGET_DIR:-$repo_root/target}/release/hearth"
fi
if [[ ! -f "$binary" || ! -x "$binary" ]]; then
    echo "build-rootfs: '$binary' is not an executable file" >&2
    exit 1
fi

case "$out" in
    "" | / | . | .. | "$HOME" | "$HOME/")
        echo "build-rootfs: refusing to use '$out' as the output directory" >&2
        exit 1 ;;
esac
if [[ -e "$out" ]]; then
    if [[ -f "$out/image-manifest.json" ]] || [[ -d "$out" && -z "$(ls -A "$out")" ]]; then
        rm -rf "$out"
    else
        echo "build-rootfs: '$out' exists and is not a previous rootfs; not touching it" >&2
        exit 1
    fi
fi

mkdir -p "$out/usr/local/bin" "$out/etc" "$out/$DATA_DIR"
install -m 0755 "$binary" "$out/usr/local/bin/hearth"
chmod 0750 "$out/$DATA_DIR"
owned="false"
if [[ "$(id -u)" == 0 ]]; then
    chown "$UID_GID:$UID_GID" "$out/$DATA_DIR"
    owned="true"
else
    echo "build-rootfs: not root, so $DATA_DIR is owned by you; pack with" \
         "tar --owner=$UID_GID --group=$UID_GID for that directory" >&2
fi

echo "$USER_NAME:x:$UID_GID:$UID_GID:Hearth homeserver:/$DATA_DIR:/usr/sbin/nologin" > "$out/etc/passwd.hearth"
echo "$USER_NAME:x:$UID_GID:" > "$out/etc/group.hearth"

version="$("$out/usr/local/bin/hearth" --version 2>/dev/null || echo unknown)"
cat > "$out/image-manifest.json" <<EOF
{
  "comment": "Runtime layout of Hearth's image without Docker: scripts/build-rootfs.sh. Base: debian:bookworm-slim + ca-certificates libstdc++6.",
  "version": "$version",
  "entrypoint": ["hearth"],
  "binary": "/usr/local/bin/hearth",
  "user": "$UID_GID:$UID_GID",
  "user_name": "$USER_NAME",
  "working_dir": "/$DATA_DIR",
  "volumes": ["/$DATA_DIR"],
  "data_dir_owned_by_user": $owned,
  "exposed_ports": ["$PORT/tcp"],
  "stop_signal": "SIGTERM",
  "env": {
    "CONDUIT_ADDRESS": "0.0.0.0",
    "CONDUIT_PORT": "$PORT",
    "CONDUIT_DATABASE_PATH": "/$DATA_DIR",
    "MALLOC_MMAP_THRESHOLD_": "1048576"
  },
  "healthcheck": {
    "path": "/_hearth/health",
    "interval_s": 30,
    "timeout_s": 5,
    "start_period_s": 60,
    "retries": 3
  },
  "runtime_packages": ["ca-certificates", "libstdc++6"]
}
EOF
echo "build-rootfs: wrote $out ($version)" >&2
