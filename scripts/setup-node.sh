#!/usr/bin/env bash
# Install the JavaScript client tests' packages (matrix-js-sdk, pinned exactly by
# tests/clients/js/package-lock.json) into tests/clients/js/node_modules with `npm ci`.
#
#   scripts/setup-node.sh
#
# Needs `node` of at least the major version matrix-js-sdk's `engines` asks for (read
# from the lock: 20 for js-sdk 36) and `npm`; fails with a clear message otherwise.
# Idempotent: skips the install when node_modules was installed from the same
# package.json and package-lock.json (a sha256 stamp, node_modules/.lock-hash, written
# only after a complete install). Only the npm registry is used.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/deps.sh
source "$repo_root/scripts/lib/deps.sh"
js_dir="$repo_root/tests/clients/js"
lock="$js_dir/package-lock.json"
stamp="$js_dir/node_modules/.lock-hash"
node="${NODE:-node}"
npm="${NPM:-npm}"

if [[ ! -f "$js_dir/package.json" || ! -f "$lock" ]]; then
    echo "setup-node: missing $js_dir/package.json or package-lock.json" >&2
    exit 1
fi
if ! need_major="$(lock_node_engine_major "$lock" matrix-js-sdk)"; then
    echo "setup-node: $lock records no \"node\": \">=N\" engines entry for matrix-js-sdk" >&2
    exit 1
fi
if ! have_major="$(node_major "$node")"; then
    echo "setup-node: '$node' not found on PATH (or not Node.js): matrix-js-sdk needs Node.js >= $need_major" >&2
    exit 1
fi
if ((have_major < need_major)); then
    echo "setup-node: '$node' is $("$node" --version) but matrix-js-sdk needs Node.js >= $need_major" \
        "(Debian 12's nodejs package is 18: install Node.js $need_major or newer)" >&2
    exit 1
fi
if ! "$npm" --version >/dev/null 2>&1; then
    echo "setup-node: '$npm' not found on PATH (or does not run)" >&2
    exit 1
fi

want_hash="$(cat "$js_dir/package.json" "$lock" | sha256sum | cut -d' ' -f1)"
have_hash=""
[[ -f "$stamp" ]] && have_hash="$(cat "$stamp")"
if [[ "$have_hash" == "$want_hash" && -f "$js_dir/node_modules/matrix-js-sdk/package.json" ]]; then
    echo "setup-node: node_modules up to date ($js_dir/node_modules)" >&2
else
    echo "setup-node: npm ci in $js_dir (node $("$node" --version), npm $("$npm" --version))" >&2
    # `npm ci` installs exactly the lock (and fails if package.json disagrees with it),
    # after removing any node_modules there was, stamp included.
    (cd "$js_dir" && "$npm" ci --no-audit --no-fund >&2)
    # Only stamp after a complete install, so an interrupted run retries.
    echo "$want_hash" >"$stamp"
fi
echo "$js_dir/node_modules"
