"""Fixtures for the real-client end-to-end tests.

`hearth` starts the built binary the way the user's Kubernetes Deployment starts
Conduit: with a clean environment holding exactly the ConfigMap `conduit-config`
plus the Secret's `CONDUIT_REGISTRATION_TOKEN` (base64-decoded, as Kubernetes
injects it), both read from seed-deployment.yaml. Only what a test must change is
changed: the database path (a pytest tmp dir), the address (127.0.0.1) and the
port (a free one).

Two fixtures let a test vary the deployment, by parametrising them
(`@pytest.mark.parametrize("backend", ["rocksdb", "sqlite"])` overrides the fixture):

* `backend`: the value of `CONDUIT_DATABASE_BACKEND` (default: the ConfigMap's).
* `hearth_extra_env`: further variables for the server's environment (default: none).

A test may crash the server (`HearthServer.crash()`, a SIGKILL) and start it again on
the same data directory, port and environment (`HearthServer.start()`); teardown only
requires a clean SIGTERM exit of a process that is still running.

The binary is `$HEARTH_BIN`, else `$CARGO_TARGET_DIR/debug/hearth`, else
`/root/.cache/hearth-target/debug/hearth`. Build it before running pytest.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
SEED_FILE = HERE / "seed-deployment.yaml"

STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0

SERVER_KEY = pytest.StashKey["HearthServer"]()


# --------------------------------------------------------------------------- seed


@dataclass(frozen=True)
class Seed:
    """The user's deployment: ConfigMap data and the decoded registration token."""

    configmap: dict[str, str]
    registration_token: str

    @property
    def server_name(self) -> str:
        return self.configmap["CONDUIT_SERVER_NAME"]


def load_seed(path: Path = SEED_FILE) -> Seed:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]

    def find(kind: str, name: str) -> dict:
        found = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"{path}: expected one {kind} named {name}, found {len(found)}"
        return found[0]

    configmap = find("ConfigMap", "conduit-config")["data"]
    secret = find("Secret", "conduit-secret")["data"]
    # Kubernetes hands ConfigMap values over as strings; the YAML quotes them all.
    assert all(isinstance(v, str) for v in configmap.values()), configmap
    token = base64.b64decode(secret["CONDUIT_REGISTRATION_TOKEN"], validate=True).decode("utf-8")
    return Seed(configmap=dict(configmap), registration_token=token)


@pytest.fixture(scope="session")
def seed() -> Seed:
    return load_seed()


# ------------------------------------------------------------------------- binary


def hearth_binary() -> Path:
    if os.environ.get("HEARTH_BIN"):
        return Path(os.environ["HEARTH_BIN"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "hearth"
    return Path("/root/.cache/hearth-target/debug/hearth")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- server


@dataclass
class HearthServer:
    binary: Path
    env: dict[str, str]
    workdir: Path
    port: int
    seed: Seed
    proc: subprocess.Popen | None = None
    starts: int = 0
    stdout_path: Path = field(init=False)
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stdout_path = self.workdir / "hearth.stdout.log"
        self.stderr_path = self.workdir / "hearth.stderr.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_name(self) -> str:
        return self.seed.server_name

    @property
    def registration_token(self) -> str:
        return self.seed.registration_token

    def logs(self) -> str:
        parts = []
        for name, path in (("stdout", self.stdout_path), ("stderr", self.stderr_path)):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                text = "<not created>"
            parts.append(f"----- hearth {name} ({path}) -----\n{text}")
        return "\n".join(parts)

    def start(self) -> None:
        # Append: a restarted server's logs follow those of the run before.
        self.starts += 1
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            for f in (out, err):
                f.write(f"===== hearth start #{self.starts} =====\n".encode())
                f.flush()
            self.proc = subprocess.Popen(
                [str(self.binary)],
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last_error = "no attempt yet"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                pytest.fail(
                    f"hearth exited with code {code} before answering "
                    f"/_matrix/client/versions\n{self.logs()}",
                    pytrace=False,
                )
            try:
                with urllib.request.urlopen(f"{self.url}/_matrix/client/versions", timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last_error = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last_error = f"HTTP {e.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last_error = repr(e)
            time.sleep(0.1)
        self.kill()
        pytest.fail(
            f"hearth did not answer 200 on /_matrix/client/versions within "
            f"{STARTUP_TIMEOUT_S:.0f}s (last: {last_error})\n{self.logs()}",
            pytrace=False,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def crash(self) -> None:
        """SIGKILL the running server (no chance to flush or shut down) and reap it."""
        assert self.proc is not None and self.proc.poll() is None, "hearth is not running"
        self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        assert code == -signal.SIGKILL, f"hearth exited with {code}, not by SIGKILL"

    def stop(self) -> None:
        """SIGTERM, then require a clean exit (code 0) within the timeout."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(
                f"hearth died during the test (exit code {self.proc.returncode})\n{self.logs()}",
                pytrace=False,
            )
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"hearth did not exit within {SHUTDOWN_TIMEOUT_S:.0f}s of SIGTERM; killed it\n{self.logs()}",
                pytrace=False,
            )
        if code != 0:
            pytest.fail(f"hearth exited with code {code} after SIGTERM (expected 0)\n{self.logs()}", pytrace=False)


def deployment_env(
    seed: Seed,
    database_path: Path,
    port: int,
    backend: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """What the Deployment's container sees, adapted only where a test must."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
    }
    env.update(seed.configmap)  # envFrom: configMapRef conduit-config
    env["CONDUIT_REGISTRATION_TOKEN"] = seed.registration_token  # secretKeyRef conduit-secret
    # The only adaptations: a private database, loopback, a free port.
    env["CONDUIT_DATABASE_PATH"] = str(database_path)
    env["CONDUIT_ADDRESS"] = "127.0.0.1"
    env["CONDUIT_PORT"] = str(port)
    env["RUST_LOG"] = "info"
    # What a test varies on purpose: the storage engine, and whatever else it names.
    if backend is not None:
        env["CONDUIT_DATABASE_BACKEND"] = backend
    env.update(extra or {})
    return env


@pytest.fixture
def backend(seed: Seed) -> str:
    """The database backend; parametrise `backend` to override the ConfigMap's."""
    return seed.configmap["CONDUIT_DATABASE_BACKEND"]


@pytest.fixture
def hearth_extra_env() -> dict[str, str]:
    """Extra environment for the server; parametrise `hearth_extra_env` to set some."""
    return {}


@pytest.fixture
def hearth(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    seed: Seed,
    backend: str,
    hearth_extra_env: dict[str, str],
):
    binary = hearth_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"Hearth binary not found at {binary}: build it first (cargo build -p hearth) "
            f"or point HEARTH_BIN at it",
            pytrace=False,
        )
    # The Deployment mounts a persistent volume at the database path, so it exists.
    database = tmp_path / "matrix-conduit"
    database.mkdir()
    port = free_port()
    server = HearthServer(
        binary=binary,
        env=deployment_env(seed, database, port, backend=backend, extra=hearth_extra_env),
        workdir=tmp_path,
        port=port,
        seed=seed,
    )
    request.node.stash[SERVER_KEY] = server
    try:
        server.start()
        yield server
    finally:
        if server.proc is not None and server.proc.returncode is None:
            server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the server's stdout/stderr to the report of a failed test."""
    report = yield
    if report.failed and report.when == "call":
        server = item.stash.get(SERVER_KEY, None)
        if server is not None:
            report.sections.append(("hearth logs", server.logs()))
    return report
