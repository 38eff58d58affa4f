#!/usr/bin/env bash
# Installs what building and testing Hearth needs on a bare Debian machine, checking first for
# exactly what is used (scripts/lib/deps.sh):
#   - libclang, which bindgen loads to generate RocksDB's bindings (libclang-dev);
#   - a C and a C++ compiler that build RocksDB's and SQLite's sources (gcc, g++);
#   - curl, with which the scripts wait for a started Hearth to answer;
#   - a python3 that can make venvs (python3-venv), then the venv of the client tests and
#     that of the federation tests (a real Synapse, from wheels);
#   - node and npm for the matrix-js-sdk client tests (tests/clients/js, by
#     scripts/setup-node.sh): node of at least the major version js-sdk's `engines` asks for
#     (read from its package-lock.json: 20 for js-sdk 36). Debian 13's `nodejs` is 20;
#     Debian 12's is 18, too old: there the install below cannot help and the check after
#     it fails, asking for Node.js 20 or newer from elsewhere (NodeSource, nvm, ...).
#   - when ../shared/sytest is there (scripts/sytest.sh runs it), the Debian packages its
#     runner installs with `run.sh setup` (Perl modules, openssl, stunnel4), each checked with
#     dpkg; missing ones are installed by that same `run.sh setup`.
# Idempotent. `--build-only` stops after what `cargo build` needs (the README's run command).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/deps.sh
source scripts/lib/deps.sh

build_only=""
js_lock=tests/clients/js/package-lock.json
[[ "${1:-}" == --build-only ]] && build_only=1

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
find_libclang / >/dev/null || need_apt+=(libclang-dev)
compiles c "${CC:-cc}" || need_apt+=(gcc libc6-dev)
compiles c++ "${CXX:-c++}" || need_apt+=(g++)
if [[ -z "$build_only" ]]; then
    command -v curl >/dev/null || need_apt+=(curl)
    python_can_make_venvs "${PYTHON:-python3}" || need_apt+=(python3 python3-venv)
    node_need="$(lock_node_engine_major "$js_lock" matrix-js-sdk)" ||
        { echo "install-deps: $js_lock records no \"node\": \">=N\" engines for matrix-js-sdk" >&2; exit 1; }
    node_at_least node "$node_need" || need_apt+=(nodejs)
    command -v npm >/dev/null || need_apt+=(npm)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need_apt[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Check again: an install that "succeeded" without giving us the thing is a failure here, not
# a bindgen panic twenty minutes into the build.
lib="$(find_libclang /)" || { echo "install-deps: no libclang that bindgen can load (libclang.so or libclang-N.so)" >&2; exit 1; }
echo "install-deps: libclang: $lib" >&2
compiles c "${CC:-cc}" || { echo "install-deps: the C compiler '${CC:-cc}' cannot build a test program" >&2; exit 1; }
compiles c++ "${CXX:-c++}" || { echo "install-deps: the C++ compiler '${CXX:-c++}' cannot build a test program" >&2; exit 1; }
[[ -n "$build_only" ]] && exit 0
python_can_make_venvs "${PYTHON:-python3}" || { echo "install-deps: '${PYTHON:-python3}' cannot make venvs" >&2; exit 1; }

bash scripts/setup-python.sh >/dev/null
bash scripts/setup-python.sh tests/federation/requirements.txt \
    "${HEARTH_SYNAPSE_VENV:-$HOME/.cache/hearth-synapse-venv}" >/dev/null
# After the venvs, so that on a machine whose Node.js is too old the Python suites are ready.
node_at_least node "$node_need" || {
    echo "install-deps: matrix-js-sdk needs Node.js >= $node_need; node is $(node --version 2>/dev/null || echo missing)" \
        "(Debian 12's nodejs package is 18: install Node.js $node_need or newer, e.g. from NodeSource)" >&2
    exit 1
}
command -v npm >/dev/null || { echo "install-deps: npm not found after installing it" >&2; exit 1; }
bash scripts/setup-node.sh >/dev/null

sytest_runner="${HEARTH_SYTEST_DIR:-$(cd .. && pwd)/shared/sytest}/run.sh"
if [[ -f "$sytest_runner" ]]; then
    sytest_debs=()
    mapfile -t sytest_debs < <(sytest_packages "$sytest_runner") ||
        { echo "install-deps: $sytest_runner lists no PERL_DEBS" >&2; exit 1; }
    if [[ -n "$(debs_missing "${sytest_debs[@]}")" ]]; then
        echo "installing sytest's packages ($sytest_runner setup)" >&2
        bash "$sytest_runner" setup >&2
    fi
    still="$(debs_missing "${sytest_debs[@]}")"
    [[ -z "$still" ]] || { echo "install-deps: sytest's packages still missing: $still" >&2; exit 1; }
fi
