"""Helpers of the federation interop tests: the throw-away PKI, a TLS JSON client, the
two servers' processes and configs, and registering users on each. The fixtures that
use them are in conftest.py."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]
BENCH_SYNAPSE_TEMPLATE = REPO / "bench" / "synapse" / "homeserver.yaml.in"

STARTUP_TIMEOUT_S = 90.0
SHUTDOWN_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0

HEARTH_REGISTRATION_TOKEN = "federation-interop-token"
SYNAPSE_SHARED_SECRET = "federation-interop-shared-secret"
PASSWORD = "correct horse battery staple"

# Every server started, so that a failing test's report can carry the logs of those not
# yet torn down (the ones the test used).
SERVERS: list["Server"] = []


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    leaf_cert: Path
    leaf_key: Path

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only the throw-away CA (hostname checked)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


def make_pki(directory: Path) -> Pki:
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=7)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hearth federation test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    # A second loopback address, for a server the others' address policy
                    # can tell apart (test_synapse_as_notary.py).
                    x509.IPAddress(ipaddress.ip_address("127.0.0.2")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pki = Pki(directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key")
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.leaf_cert.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    pki.leaf_key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pki.leaf_key.chmod(0o600)
    return pki


# --------------------------------------------------------------------------- HTTP


def fail(message: str) -> None:
    """Stops a test (or the federation benchmark, which also uses these helpers and has no
    pytest) with `message` and no traceback through the helpers."""
    try:
        import pytest
    except ImportError:
        raise RuntimeError(message) from None
    pytest.fail(message, pytrace=False)


class HttpError(Exception):
    def __init__(self, status: int, body: object, url: str):
        super().__init__(f"HTTP {status} from {url}: {body!r}")
        self.status = status
        self.body = body


def request(
    ctx: ssl.SSLContext,
    method: str,
    url: str,
    body: object | None = None,
    token: str | None = None,
    timeout: float = REQUEST_TIMEOUT_S,
) -> object:
    """JSON in, JSON out; raises HttpError on a non-2xx answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            parsed: object = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        raise HttpError(e.code, parsed, url) from None
    return json.loads(raw) if raw else {}


# ------------------------------------------------------------------------ servers


@dataclass
class Server:
    kind: str
    cmd: list[str]
    env: dict[str, str]
    workdir: Path
    port: int
    pki: Pki
    log_files: list[Path]
    host: str = "127.0.0.1"
    # The port in the server name, when other servers reach it through a relay on another
    # port than the one it listens on (and clients use).
    name_port: int | None = None
    proc: subprocess.Popen | None = None
    torn_down: bool = False
    stdout_path: Path = field(init=False)
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stdout_path = self.workdir / f"{self.kind}.stdout.log"
        self.stderr_path = self.workdir / f"{self.kind}.stderr.log"

    @property
    def server_name(self) -> str:
        return f"{self.host}:{self.name_port or self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def call(self, method: str, path: str, body: object | None = None, token: str | None = None) -> object:
        return request(self.pki.ssl_context(), method, self.url + path, body, token)

    def logs(self) -> str:
        parts = []
        for path in [self.stdout_path, self.stderr_path, *self.log_files]:
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                text = "<not created>"
            parts.append(f"----- {self.kind} {path.name} ({path}) -----\n{text}")
        return "\n".join(parts)

    def start(self) -> None:
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        SERVERS.append(self)
        # Ready when it answers over TLS with a certificate the test CA vouches for.
        ctx = self.pki.ssl_context()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last = "no attempt yet"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                fail(f"{self.kind} exited with code {code} before answering\n{self.logs()}")
            try:
                request(ctx, "GET", f"{self.url}/_matrix/client/versions", timeout=2)
                return
            except HttpError as e:
                last = str(e)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = repr(e)
            time.sleep(0.2)
        self.kill()
        fail(
            f"{self.kind} did not answer /_matrix/client/versions over TLS within "
            f"{STARTUP_TIMEOUT_S:.0f}s (last: {last})\n{self.logs()}"
        )

    def pause(self) -> None:
        """SIGSTOP: the process stays, answers nothing, and its kernel still takes connections."""
        assert self.proc is not None and self.proc.poll() is None, f"{self.kind} is not running"
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        self.torn_down = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()


def hearth_binary() -> Path:
    if os.environ.get("HEARTH_BIN"):
        return Path(os.environ["HEARTH_BIN"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "hearth"
    return Path.home() / ".cache" / "hearth-target" / "debug" / "hearth"


def hearth_env(
    database: Path,
    port: int,
    pki: Pki,
    host: str = "127.0.0.1",
    trusted_servers: list[str] | None = None,
    name_port: int | None = None,
) -> dict[str, str]:
    """A clean environment: server name <host>:<port>, TLS with the leaf, the test CA
    trusted for outbound federation, 127.0.0.1 (only) admitted by the address policy, the
    given notaries trusted (none by default)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        # Key fetching and verification failures are logged at debug: shown with a failing test.
        "RUST_LOG": "info,hearth::transport=debug,hearth::api=debug",
        "CONDUIT_SERVER_NAME": f"{host}:{name_port or port}",
        "CONDUIT_DATABASE_PATH": str(database),
        "CONDUIT_ADDRESS": host,
        "CONDUIT_PORT": str(port),
        "CONDUIT_ALLOW_REGISTRATION": "true",
        "CONDUIT_REGISTRATION_TOKEN": HEARTH_REGISTRATION_TOKEN,
        "CONDUIT_ALLOW_FEDERATION": "true",
        "CONDUIT_TLS_CERTS": str(pki.leaf_cert),
        "CONDUIT_TLS_KEY": str(pki.leaf_key),
        "HEARTH_FEDERATION_CA_FILE": str(pki.ca_cert),
        "HEARTH_IP_RANGE_ALLOWLIST": '["127.0.0.1/32"]',
        "HEARTH_TRUSTED_SERVERS": json.dumps(trusted_servers or []),
    }


def start_hearth(
    workdir: Path,
    pki: Pki,
    host: str = "127.0.0.1",
    trusted_servers: list[str] | None = None,
    kind: str = "hearth",
    port: int | None = None,
    name_port: int | None = None,
) -> Server:
    """A Hearth listening on `port` (default: a free one); `name_port`, when given, is the
    port of its server name (a relay in front of it, see `Relay`)."""
    binary = hearth_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        fail(f"Hearth binary not found at {binary}: build it or set HEARTH_BIN")
    database = workdir / "db"
    database.mkdir()
    port = port or free_port(host)
    env = hearth_env(database, port, pki, host=host, trusted_servers=trusted_servers, name_port=name_port)
    server = Server(kind, [str(binary)], env, workdir, port, pki, log_files=[], host=host, name_port=name_port)
    server.start()
    return server


def start_synapse(
    data: Path,
    pki: Pki,
    python: str,
    log_level: str = "INFO",
    port: int | None = None,
    name_port: int | None = None,
    overrides: dict | None = None,
) -> Server:
    """Synapse (run by `python`, a venv with matrix-synapse) in `data`, with a fresh signing
    key, serving TLS with the test leaf on `port` (default: a free one); `name_port` as for
    `start_hearth`; `overrides` replace top-level settings of the config."""
    port = port or free_port()
    config_path = data / "homeserver.yaml"
    log_path = data / "synapse.log"
    config = synapse_config(data, port, pki)
    config["server_name"] = f"127.0.0.1:{name_port or port}"
    config.update(overrides or {})
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    (data / "log.config").write_text(yaml.safe_dump(synapse_log_config(log_path, log_level), sort_keys=False))
    synapse_cmd = [python, "-m", "synapse.app.homeserver", "-c", str(config_path)]
    env = dict(os.environ)
    # Writes the signing key (signing_key_path) and exits.
    subprocess.run(
        [*synapse_cmd, "--generate-keys"],
        check=True, env=env, cwd=data, stdout=subprocess.DEVNULL, timeout=STARTUP_TIMEOUT_S,
    )
    server = Server("synapse", synapse_cmd, env, data, port, pki, log_files=[log_path], name_port=name_port)
    server.start()
    return server


def synapse_log_config(log_path: Path, level: str = "INFO") -> dict:
    """`level` (INFO: federation requests and key fetches show) to one file, with the
    request id."""
    return {
        "version": 1,
        "formatters": {"p": {"format": "%(asctime)s %(name)s %(levelname)s %(request)s %(message)s"}},
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(log_path),
                "formatter": "p",
                "filters": ["context"],
            }
        },
        "root": {"level": level, "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def synapse_config(data: Path, port: int, pki: Pki) -> dict:
    # The bench's rate limits (all far out of the way), and nothing else of its template:
    # that one is a plain-HTTP, client-only, federation-off Synapse.
    template = yaml.safe_load(BENCH_SYNAPSE_TEMPLATE.read_text().replace("@PORT@", "0"))
    rate_limits = {k: v for k, v in template.items() if k.startswith("rc_")}
    return {
        "server_name": f"127.0.0.1:{port}",
        "pid_file": str(data / "homeserver.pid"),
        "public_baseurl": f"https://127.0.0.1:{port}/",
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation"], "compress": False}],
            }
        ],
        "tls_certificate_path": str(pki.leaf_cert),
        "tls_private_key_path": str(pki.leaf_key),
        "federation_custom_ca_list": [str(pki.ca_cert)],
        # Synapse 1.163 refuses outbound requests to loopback by default (ip_range_blacklist).
        # ip_range_whitelist is not enough for federation: the federation client also wraps its
        # agent in a BlocklistingAgentWrapper that checks IP-literal server names against the
        # blocklist alone. The legacy federation_ip_range_blacklist replaces the blocklist for
        # federation (0.0.0.0 and :: stay blocked); the whitelist covers the other clients.
        "federation_ip_range_blacklist": [],
        "ip_range_whitelist": ["127.0.0.1", "127.0.0.2"],
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        # Off by default in Synapse: its public room directory is not served over federation.
        "allow_public_rooms_over_federation": True,
        # Synapse's default publishes no room in its directory (deny all); allow every user.
        "room_list_publication_rules": [{"action": "allow"}],
        "database": {"name": "sqlite3", "args": {"database": str(data / "homeserver.db")}},
        "log_config": str(data / "log.config"),
        "media_store_path": str(data / "media_store"),
        "signing_key_path": str(data / "signing.key"),
        "report_stats": False,
        "presence": {"enabled": False},
        "enable_registration": False,
        "registration_shared_secret": SYNAPSE_SHARED_SECRET,
        "macaroon_secret_key": "federation-interop-macaroon-secret",
        "form_secret": "federation-interop-form-secret",
        **rate_limits,
    }


class Relay:
    """A TCP relay in front of a server: the port other servers reach it at (its server
    name's port), forwarding to the port it listens on. TLS passes through untouched.

    `cut()` is a network partition: every relayed connection is dropped and new ones are
    closed as soon as they are taken, so a request fails at once and its sender keeps it
    for later. `heal()` relays again. (Pausing a server with SIGSTOP alone does not
    partition it: its kernel still accepts connections and keeps the requests, which the
    server reads as soon as it resumes.) `hold()` keeps connections up but stops passing
    bytes on (a link that has become very slow) until `release()`."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.host, self.target_port = host, target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.is_cut = False
        self.flowing = threading.Event()
        self.flowing.set()
        self.open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.is_cut:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._drop(s)

    def _drop(self, s: socket.socket) -> None:
        with self.lock:
            self.open.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        with self.lock:
            self.is_cut = True
            dropping = list(self.open)
        for s in dropping:
            self._drop(s)

    def hold(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    def heal(self) -> None:
        with self.lock:
            self.is_cut = False

    def close(self) -> None:
        self.release()
        self.cut()
        self.listener.close()


# -------------------------------------------------------------------------- users


@dataclass(frozen=True)
class User:
    user_id: str
    access_token: str


def register_on_hearth(hearth: Server, username: str) -> User:
    """Register through UIA with the registration token (and whatever dummy stage follows)."""
    body: dict = {"username": username, "password": PASSWORD, "initial_device_display_name": "federation test"}
    for _ in range(5):
        try:
            d = hearth.call("POST", "/_matrix/client/v3/register", body)
            return User(d["user_id"], d["access_token"])
        except HttpError as e:
            if e.status != 401 or not isinstance(e.body, dict) or "flows" not in e.body:
                raise
            uia = e.body
        flow = next(f["stages"] for f in uia["flows"] if "m.login.registration_token" in f["stages"])
        stage = next(s for s in flow if s not in uia.get("completed", []))
        auth: dict = {"type": stage, "session": uia["session"]}
        if stage == "m.login.registration_token":
            auth["token"] = HEARTH_REGISTRATION_TOKEN
        body = {**body, "auth": auth}
    raise AssertionError(f"registering {username} on Hearth did not finish")


def register_on_synapse(synapse: Server, username: str) -> User:
    """Synapse's shared-secret admin registration (HMAC-SHA1 over nonce, user, password, admin)."""
    nonce = synapse.call("GET", "/_synapse/admin/v1/register")["nonce"]
    mac = hmac.new(
        SYNAPSE_SHARED_SECRET.encode(),
        b"\x00".join([nonce.encode(), username.encode(), PASSWORD.encode(), b"notadmin"]),
        hashlib.sha1,
    ).hexdigest()
    d = synapse.call(
        "POST",
        "/_synapse/admin/v1/register",
        {"nonce": nonce, "username": username, "password": PASSWORD, "admin": False, "mac": mac},
    )
    return User(d["user_id"], d["access_token"])


def set_displayname(server: Server, user: User, name: str) -> None:
    path = f"/_matrix/client/v3/profile/{urllib.parse.quote(user.user_id)}/displayname"
    server.call("PUT", path, {"displayname": name}, token=user.access_token)


def hearth_admin(hearth: Server, *args: str) -> subprocess.CompletedProcess:
    """`hearth admin ARGS…` for a running Hearth: sent over its admin channel."""
    return subprocess.run(
        [hearth.cmd[0], "admin", *args],
        env=hearth.env,
        cwd=hearth.workdir,
        capture_output=True,
        text=True,
        timeout=REQUEST_TIMEOUT_S * 3,
    )
