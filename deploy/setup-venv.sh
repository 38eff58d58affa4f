#!/usr/bin/env bash
# Make sure the project venv (${HEARTH_VENV:-$HOME/.cache/hearth-venv}) exists and has the
# deployment tools of deploy/requirements.txt (plus any extra requirement files given as
# arguments); print the venv's path on the last line of stdout. Idempotent: a stamp of each
# file's hash in the venv skips pip when nothing changed. Works on a bare Debian 12 as root.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HEARTH_VENV:-$HOME/.cache/hearth-venv}"

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
    echo "setup-venv: installing python3 and python3-venv" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
fi

# The venv itself (and the client tests' packages) come from the existing script, so both
# share one venv; it rebuilds the venv when tests/clients/requirements.txt changes, which
# drops our stamps too, and we reinstall below.
bash "$repo_root/scripts/setup-python.sh" >/dev/null

for req in "$repo_root/deploy/requirements.txt" "$@"; do
    name="$(basename "$req" .txt)"
    stamp="$venv/.hearth-deploy-$name.sha256"
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        continue
    fi
    echo "setup-venv: installing $req into $venv" >&2
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$req" >&2
    echo "$want" > "$stamp"
done
echo "$venv"
