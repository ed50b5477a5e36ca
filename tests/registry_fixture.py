"""A real registry for tests: Debian's docker-registry (CNCF distribution 2.8) on 127.0.0.1.

``start_registry(workdir)`` writes a temp config (filesystem storage under ``workdir``, a free
port, access log on) and starts ``docker-registry serve`` plain; ``auth=(user, password)`` adds
htpasswd authentication (the bcrypt file made here with the ``bcrypt`` package) and ``tls=True``
HTTPS with a self-signed certificate for 127.0.0.1 made here with ``openssl`` (its PEM is the
CA bundle a client must be given). ``token_server=`` a running :class:`TokenServer` makes the
registry use token authentication instead (distribution's ``auth: token``): the bearer flow
Docker Hub, GHCR and Harbor use, with a real token service (``TokenServer``, below) that checks
Basic credentials, gives anonymous clients pull access to ``public/*`` only, and signs ES256
JWTs the registry verifies against the service's certificate.

``Registry.requests()`` reads the access log, so a test can count what a client asked;
``Registry.blob_file(digest)`` is where the registry keeps a blob, so a test can corrupt it for
real.

``clear_registry_environment`` gives a test an empty Docker config and none of the developer's
registry variables; ``secure_registry_fixture(user, password)`` is a module-scoped fixture of a
registry with those htpasswd credentials and TLS.

``make_random_image`` makes an image of random-content layers in a store (packed by MemoBuild's
own layer writer), for tests that need blobs no other test shares, and for the benchmarks.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import bcrypt
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from memobuild.build.layers import write_tree_layer
from memobuild.cache.entries import LayerRef
from memobuild.cache.store import LocalStore
from memobuild.oci.image import HistoryEntry, Image, ImageConfig

REGISTRY_BINARY = "docker-registry"
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) ')


@dataclass(frozen=True)
class Request:
    """One line of the registry's access log."""

    method: str
    path: str
    status: int


@dataclass
class Registry:
    """A running docker-registry."""

    host: str  # 127.0.0.1:PORT, as image references name it
    port: int
    root: Path  # storage root
    log: Path
    process: subprocess.Popen[bytes]
    ca: Path | None = None  # the self-signed certificate (PEM) when TLS is on
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://{self.host}"

    def requests(self) -> list[Request]:
        text = self.log.read_text(errors="replace")
        return [
            Request(m.group("method"), m.group("path"), int(m.group("status")))
            for m in _ACCESS.finditer(text)
        ]

    def count(self, method: str, pattern: str) -> int:
        """Access-log lines with ``method`` whose path matches ``pattern`` (a regex)."""
        regex = re.compile(pattern)
        return sum(1 for r in self.requests() if r.method == method and regex.search(r.path))

    def blob_file(self, digest: str) -> Path:
        hex_part = digest.split(":", 1)[1]
        return self.root / "docker/registry/v2/blobs/sha256" / hex_part[:2] / hex_part / "data"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and key) for 127.0.0.1 and localhost, valid for a day."""
    cert, key = directory / "registry.crt", directory / "registry.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", "/CN=memobuild test registry",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def write_htpasswd(path: Path, username: str, password: str) -> Path:
    # Cost 4 (bcrypt's minimum): a test registry checks the password on every request.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{username}:{hashed}\n")
    return path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    """One request the token service answered: who asked (None: anonymous), for what."""

    user: str | None
    scopes: tuple[str, ...]
    status: int


@dataclass
class TokenServer:
    """A token service for the registry (distribution's token authentication spec)."""

    directory: Path
    username: str
    password: str
    service: str = "memobuild-test-registry"
    issuer: str = "memobuild-test-issuer"
    requests: list[TokenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "memobuild token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        self.certificate = self.directory / "token-signer.pem"
        self.certificate.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = int(self._server.server_address[1])
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _granted(self, user: str | None, scope: str) -> dict[str, object] | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            return None
        wanted = [a for a in actions.split(",") if a in ("pull", "push")]
        allowed = wanted if user is not None else (["pull"] if name.startswith("public/") else [])
        granted = [a for a in wanted if a in allowed]
        return {"type": "repository", "name": name, "actions": granted}

    def token(self, user: str | None, scopes: list[str]) -> str:
        now = int(time.time())
        access = [grant for scope in scopes if (grant := self._granted(user, scope)) is not None]
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                scopes = [s for value in query.get("scope", []) for s in value.split(" ")]
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if (name, password) != (server.username, server.password):
                        server.requests.append(TokenRequest(name, tuple(scopes), 401))
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    user = name
                body = json.dumps({"token": server.token(user, scopes), "expires_in": 300})
                server.requests.append(TokenRequest(user, tuple(scopes), 200))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        return Handler


def start_registry(
    workdir: Path,
    *,
    auth: tuple[str, str] | None = None,
    tls: bool = False,
    token_server: TokenServer | None = None,
) -> Registry:
    """Start a registry with its storage, config and log under ``workdir``."""
    if shutil.which(REGISTRY_BINARY) is None:
        raise RuntimeError(f"{REGISTRY_BINARY} is not installed (Debian package docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "storage"
    root.mkdir(exist_ok=True)
    port = free_port()
    http: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": "memobuild-test"}
    ca = None
    if tls:
        cert, key = make_certificate(workdir)
        http["tls"] = {"certificate": str(cert), "key": str(key)}
        ca = cert
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}},
        "http": http,
    }
    if auth is not None:
        htpasswd = write_htpasswd(workdir / "htpasswd", *auth)
        config["auth"] = {"htpasswd": {"realm": "memobuild-test", "path": str(htpasswd)}}
    if token_server is not None:
        config["auth"] = {
            "token": {
                "realm": token_server.realm,
                "service": token_server.service,
                "issuer": token_server.issuer,
                "rootcertbundle": str(token_server.certificate),
            }
        }
    config_path = workdir / "config.yml"
    config_path.write_text(json.dumps(config))  # YAML is a superset of JSON
    log = workdir / "registry.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config_path)], stdout=out, stderr=subprocess.STDOUT
        )
    registry = Registry(
        host=f"127.0.0.1:{port}",
        port=port,
        root=root,
        log=log,
        process=process,
        ca=ca,
        username=auth[0] if auth else None,
        password=auth[1] if auth else None,
    )
    _wait_ready(registry)
    return registry


def _wait_ready(registry: Registry, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{registry.url}/v2/", verify=False, timeout=1)  # noqa: S501 - readiness
            if response.status_code in (200, 401):
                return
        time.sleep(0.05)
    registry.stop()
    raise RuntimeError(f"the registry did not start:\n{registry.log.read_text()[-2000:]}")


@contextlib.contextmanager
def running_registry(
    workdir: Path,
    *,
    auth: tuple[str, str] | None = None,
    tls: bool = False,
    token_server: TokenServer | None = None,
) -> Iterator[Registry]:
    registry = start_registry(workdir, auth=auth, tls=tls, token_server=token_server)
    try:
        yield registry
    finally:
        registry.stop()


# The variables through which a developer's environment would give credentials or a registry.
REGISTRY_ENV = (
    "MEMOBUILD_REGISTRY_USER",
    "MEMOBUILD_REGISTRY_PASSWORD",
    "MEMOBUILD_REGISTRY_TOKEN",
    "MEMOBUILD_REGISTRY_HOST",
    "MEMOBUILD_REGISTRY_CA",
)


def clear_registry_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, also: tuple[str, ...] = ()
) -> Path:
    """No credentials for the test: an empty Docker config (returned) and none of
    ``REGISTRY_ENV`` (nor of the variables in ``also``)."""
    config = tmp_path / "docker-config"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    for name in (*REGISTRY_ENV, *also):
        monkeypatch.delenv(name, raising=False)
    return config


def secure_registry_fixture(user: str, password: str) -> Callable[..., Iterator[Registry]]:
    """A module-scoped fixture: a registry with htpasswd ``user``/``password`` and TLS with a
    self-signed certificate. A test module assigns it: ``secure_registry = ...``."""

    @pytest.fixture(scope="module")
    def secure_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
        """htpasswd authentication and TLS with a self-signed certificate."""
        workdir = tmp_path_factory.mktemp("secure-registry")
        with running_registry(workdir, auth=(user, password), tls=True) as running:
            yield running

    return secure_registry


def make_random_image(
    store: LocalStore,
    workdir: Path,
    *,
    layers: int = 1,
    layer_bytes: int = 1 << 20,
    files_per_layer: int = 4,
    architecture: str = "amd64",
    variant: str | None = None,
) -> Image:
    """An image of ``layers`` gzip layers, each ``files_per_layer`` files of random bytes
    adding up to ``layer_bytes``; the blobs are put in ``store``."""
    refs = []
    for index in range(layers):
        tree = workdir / f"layer-{index}"
        tree.mkdir(parents=True)
        for number in range(files_per_layer):
            (tree / f"random-{number}.bin").write_bytes(os.urandom(layer_bytes // files_per_layer))
        blob = write_tree_layer(tree, workdir / f"layer-{index}.tar.gz", source_date_epoch=0)
        store.put_blob_file(blob.path, blob.digest)
        refs.append(LayerRef(blob.digest, blob.diff_id, blob.size))
        blob.path.unlink()
        shutil.rmtree(tree)
    return Image(
        config=ImageConfig(env=("PATH=/bin",), cmd=("sh",)),
        layers=tuple(refs),
        history=tuple(HistoryEntry(created_by=f"random layer {i}") for i in range(layers)),
        architecture=architecture,
        os="linux",
        variant=variant,
    )
