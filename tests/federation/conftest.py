"""Fixtures for the federation interop tests: one Hearth and one real Synapse, talking
to each other over TLS on loopback (helpers in interop.py).

* `pki`: a throw-away CA and one leaf certificate for IPs 127.0.0.1 and 127.0.0.2 (and DNS
  `localhost`), made with `cryptography` into a temp dir. Every server serves the same leaf;
  each trusts the CA for its outbound federation requests (Hearth:
  `HEARTH_FEDERATION_CA_FILE`, Synapse: `federation_custom_ca_list`), and the tests trust it.
* `hearth`: the built binary (`$HEARTH_BIN`, else `$CARGO_TARGET_DIR/debug/hearth`), server
  name `127.0.0.1:<port>`, TLS with the leaf, 127.0.0.1/32 admitted by its outbound address
  policy, no trusted key servers.
* `synapse`: `python -m synapse.app.homeserver` of this venv (matrix-synapse pinned in
  requirements.txt), server name `127.0.0.1:<port>`, one TLS listener for client and
  federation, SQLite, the bench's rate limits (bench/synapse/homeserver.yaml.in), no
  trusted key servers, loopback reachable (`federation_ip_range_blacklist: []`).

Both are module-scoped: each test module starts one of each. A server name that is an IP
literal with a port is used as is by both (no .well-known, no SRV), so no DNS is needed.
When a test fails, the logs of every server still up are attached to its report.
"""

from __future__ import annotations

import sys

import pytest

from interop import (
    SERVERS,
    Pki,
    Server,
    make_pki,
    start_hearth,
    start_synapse,
)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def hearth(tmp_path_factory: pytest.TempPathFactory, pki: Pki):
    server = None
    try:
        server = start_hearth(tmp_path_factory.mktemp("hearth"), pki)
        yield server
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory, pki: Pki):
    server = None
    try:
        server = start_synapse(tmp_path_factory.mktemp("synapse"), pki, sys.executable)
        yield server
    finally:
        if server is not None:
            server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the logs of every server still up (or died under the test) to a failed test's report."""
    report = yield
    if report.failed:
        for server in SERVERS:
            if not server.torn_down:
                report.sections.append((f"{server.kind} {server.server_name} logs", server.logs()))
    return report
