#!/usr/bin/env bash
# Create (or refresh) a Python venv for one of the Python test suites, and print
# its path on the last line of stdout.
#
#   scripts/setup-python.sh [REQUIREMENTS [VENV]]
#
# Without arguments: the real-client tests' venv, tests/clients/requirements.txt
# into ${HEARTH_VENV:-$HOME/.cache/hearth-venv}. The federation tests pass their own
# requirements file and venv (Synapse must not share a venv with matrix-nio); a
# requirements file may hold pip options such as `--only-binary :all:`.
#
# The venv is (re)built when it is missing, broken, or when the requirements file
# (or the python version) changed since the last successful install (tracked by a
# sha256 stamp file inside the venv). Only the machine's `python3 -m venv` and PyPI
# are used.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
requirements="${1:-$repo_root/tests/clients/requirements.txt}"
venv="${2:-${HEARTH_VENV:-$HOME/.cache/hearth-venv}}"
stamp="$venv/.hearth-requirements.sha256"
python="${PYTHON:-python3}"

case "$venv" in
    "" | / | "$HOME" | "$HOME/")
        echo "setup-python: refusing to use '$venv' as the venv directory" >&2
        exit 1
        ;;
esac
if [[ ! -f "$requirements" ]]; then
    echo "setup-python: missing $requirements" >&2
    exit 1
fi
if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup-python: '$python' not found on PATH" >&2
    exit 1
fi

want_hash="$( { "$python" --version 2>&1; cat "$requirements"; } | sha256sum | cut -d' ' -f1)"
have_hash=""
if [[ -f "$stamp" ]]; then
    have_hash="$(cat "$stamp")"
fi

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import sys' >/dev/null 2>&1 \
    && [[ "$have_hash" == "$want_hash" ]]; then
    echo "setup-python: venv up to date ($venv)" >&2
else
    echo "setup-python: (re)creating venv at $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! "$python" -m venv "$venv"; then
        echo "setup-python: '$python -m venv' failed; on Debian install python3-venv" >&2
        exit 1
    fi
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$requirements" >&2
    # Only stamp after a complete install, so an interrupted run retries.
    echo "$want_hash" > "$stamp"
fi

echo "$venv"
