#!/usr/bin/env bash
# Throws schemathesis at every operation of the Matrix client-server API, generated from
# the spec's own OpenAPI document (../shared/matrix-spec, or $MATRIX_SPEC), against the
# built binary on loopback, and fails on any 5xx: bad input must get a Matrix error.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${HEARTH_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth}"
VENV="${HEARTH_VENV:-$HOME/.cache/hearth-venv}"
SPEC="${MATRIX_SPEC:-../shared/matrix-spec/client-server-api.json}"
if [ ! -f "$SPEC" ]; then
  echo "fuzz-api: no spec at $SPEC; skipping"
  exit 0
fi
"$VENV/bin/python" -m pip install -q "schemathesis==4.32.5"
# One worker: with two threads, hypothesis describing a filter lambda calls `ast.parse`
# in both at once, which CPython 3.11 (the venv's) can fail with "SystemError: AST
# constructor recursion depth mismatch", as it did in a coverage phase here (twice in ~20
# runs); schemathesis reports that as a "Runtime Error".
WORKERS="${HEARTH_FUZZ_WORKERS:-1}"

# Federation off: the fuzzer's random user ids would otherwise send Hearth asking other
# servers (a 502 when they cannot be reached, as on Synapse); tests/api/federation.rs
# covers those paths.
DATA="$(mktemp -d)"
PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
env -i PATH="$PATH" CONDUIT_CONFIG= CONDUIT_SERVER_NAME=fuzz.test CONDUIT_DATABASE_PATH="$DATA" CONDUIT_PORT="$PORT" \
  CONDUIT_ALLOW_REGISTRATION=true CONDUIT_ALLOW_FEDERATION=false CONDUIT_REGISTRATION_TOKEN=fuzz HEARTH_DATABASE_FSYNC=false RUST_LOG=warn \
  "$BIN" > "$DATA.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$DATA" "$DATA.log"' EXIT
"$VENV/bin/python" - "$PORT" <<'PY'
import sys, time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/_matrix/client/versions", timeout=1)
        break
    except Exception:
        time.sleep(0.1)
PY
TOKEN="$("$VENV/bin/python" - "$PORT" <<'PY'
import json, sys, urllib.request, urllib.error
base = f"http://127.0.0.1:{sys.argv[1]}/_matrix/client/v3/register"
def post(body):
    req = urllib.request.Request(base, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        return json.load(urllib.request.urlopen(req))
    except urllib.error.HTTPError as e:
        return json.load(e)
body = {"username": "fuzzer", "password": "fuzz-pw"}
session = post(body)["session"]
post({**body, "auth": {"type": "m.login.registration_token", "token": "fuzz", "session": session}})
print(post({**body, "auth": {"type": "m.login.dummy", "session": session}})["access_token"])
PY
)"
# The run's error sections in full (the tail alone lost which request failed, and how).
report() {
  # Lines cut to 400 characters and 200 of them (a traceback can quote a whole source
  # file on one line); no `head`, whose early exit would end this script under pipefail.
  sed -n '/ ERRORS /,/ SUMMARY /p; / FAILURES /,/ SUMMARY /p' "$DATA.st" | cut -c1-400 | sed -n '1,200p'
  sed -n '/ SUMMARY /,$p' "$DATA.st"
}
# True when the run failed only on errors of schemathesis's own (titled "Runtime Error":
# an exception inside the tool, not a network error, timeout or check failure).
# The error titles are read whole before matching: a `| grep -qv` that stops early could
# get its writer killed by SIGPIPE, and under pipefail the negated pipeline would then
# read as "only tool errors" and hide a real one.
only_tool_errors() {
  local titles
  ! grep -q '^Failures:' "$DATA.st" && grep -q '^Errors:' "$DATA.st" || return 1
  titles="$(sed -n '/^Errors:/,/^$/p' "$DATA.st" | sed '1d;/^$/d')"
  ! grep -qv 'Runtime Error' <<< "$titles"
}
fuzz() {
  "$VENV/bin/st" run "$SPEC" --url "http://127.0.0.1:$PORT" -H "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error --max-examples 5 --workers "$WORKERS" --request-timeout 10 --seed "$1" > "$DATA.st" 2>&1
}
if ! fuzz 1; then
  report
  if ! only_tool_errors; then
    echo "fuzz-api: the server answered a generated request with a server error, or did not answer"; exit 1
  fi
  # Once in a while schemathesis itself raises inside a phase (seen once in CI, never
  # reproduced in 30 runs here). That says nothing about the server: say so, run again.
  echo "fuzz-api: schemathesis raised an error of its own (above); running once more"
  if ! fuzz 1; then
    report; echo "fuzz-api: the second run failed too"; exit 1
  fi
fi
grep -E "generated" "$DATA.st" | tail -1
if grep -qi "panicked" "$DATA.log"; then
  grep -i -A3 "panicked" "$DATA.log" | head -20; echo "fuzz-api: the server panicked"; exit 1
fi
echo "fuzz-api: no server errors"
