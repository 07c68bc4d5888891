"""Servers for the registry tests: Debian's docker-registry, a JWT token server, TLS certificates.

The real registry does the work wherever it can; the token server is what Docker Hub's
auth.docker.io is to registry-1.docker.io (a small, separate service by design).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import ipaddress
import json
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

SERVICE = "test-registry"
ISSUER = "test-issuer"
# htpasswd line for bob / s3cret-basic (bcrypt, cost 4 so the registry checks it fast).
BASIC_USER, BASIC_PASSWORD = "bob", "s3cret-basic"
HTPASSWD = f"{BASIC_USER}:$2b$04$CDALFU3pC5kvS.9xWk59auXbsMb62Ts..qBk9GU0fntqPge8d7VM6\n"
_ACCESS_LOG = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[0-9.]+" (\d+)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RegistryProcess:
    """`docker-registry serve cfg.yml` on a free 127.0.0.1 port, over a given storage directory."""

    def __init__(
        self,
        workdir: Path,
        storage: Path,
        auth: dict[str, Any] | None = None,
        tls: tuple[Path, Path] | None = None,
        ca: Path | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.storage = storage
        self.port = free_port()
        self.tls = tls
        self.ca = ca
        http_cfg: dict[str, Any] = {"addr": self.host}
        if tls:
            http_cfg["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": http_cfg,
        }
        if auth:
            config["auth"] = auth
        self.config_path = workdir / "cfg.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def start(self) -> RegistryProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()}")
            try:
                r = requests.get(f"{self.url}/v2/", timeout=1, verify=str(self.ca) if self.ca else True)
                if r.status_code in (200, 401):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer on {self.host}: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def requests_log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the registry logged so far."""
        text = self.log_path.read_text(errors="replace")
        return [(m[1], m[2], int(m[3])) for m in _ACCESS_LOG.finditer(text)]


# -- certificates ---------------------------------------------------------------------------


@dataclass
class KeyPair:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        crt, key = directory / f"{name}.crt", directory / f"{name}.key"
        crt.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        return crt, key


def make_cert(common_name: str, issuer: KeyPair | None = None, ip: str | None = None) -> KeyPair:
    """A self-signed CA (issuer None) or a certificate it signs; with `ip`, a server cert for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    signer = issuer.key if issuer else key
    return KeyPair(key, builder.sign(signer, hashes.SHA256()))


# -- token server ---------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Docker-style token service: RS256 JWTs with the signing cert in `x5c`.

    Anonymous clients get pull access to everything but `private/*`; `users` may pull anything;
    a wrong password is refused with 401. Repositories in `short_lived` get tokens the registry
    accepts for about two seconds (it allows 60 s of clock skew past `exp`).
    """

    signer: KeyPair
    users: dict[str, str] = field(default_factory=lambda: {"alice": "wonderland"})
    short_lived: set[str] = field(default_factory=set)
    issued: list[tuple[str, str | None]] = field(default_factory=list)  # (scope, user)
    port: int = 0
    _server: http.server.ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def scopes_issued(self, scope: str) -> int:
        return sum(1 for s, _ in self.issued if s == scope)

    def token(self, user: str | None, scope: str) -> str:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        allowed = user is not None or not name.startswith("private/")
        now = int(time.time())
        exp = now - 58 if name in self.short_lived else now + 300
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": exp,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": [{"type": kind, "name": name, "actions": actions.split(",") if allowed else []}],
        }
        cert_der = self.signer.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(cert_der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.signer.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def start(self) -> TokenServer:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if outer.users.get(name) != password:
                        self._send(401, {"details": "incorrect username or password"})
                        return
                    user = name
                if url.path != "/token" or query.get("service") != [SERVICE] or "scope" not in query:
                    self._send(400, {"details": "bad request"})
                    return
                scope = query["scope"][0]
                outer.issued.append((scope, user))
                token = outer.token(user, scope)
                self._send(200, {"token": token, "access_token": token, "expires_in": 300})

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# -- a scripted fake, for faults the real registry cannot produce ------------------------------

Reply = Callable[[http.server.BaseHTTPRequestHandler], None]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def send(
    status: int,
    body: bytes = b"",
    content_type: str = "application/octet-stream",
    headers: dict[str, str] | None = None,
    truncate: int | None = None,
) -> Reply:
    """A reply; with `truncate`, the connection is dropped after that many body bytes."""

    def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body[:truncate] if truncate is not None else body)
        if truncate is not None:
            handler.close_connection = True

    return reply


def stall(release: threading.Event, body: bytes = b"", sent: int = 0) -> Reply:
    """A reply that stops after the headers and `sent` body bytes (no headers if `body` is empty),
    until `release` is set."""

    def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
        if body:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/octet-stream")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[:sent])
            handler.wfile.flush()
        release.wait(30)
        handler.close_connection = True

    return reply


@dataclass
class FakeRegistry:
    """Serves scripted replies by path; the last reply for a path repeats."""

    routes: dict[str, list[Reply]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    port: int = 0
    release: threading.Event = field(default_factory=threading.Event)  # ends stalled replies

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_image(
        self,
        repo: str,
        tag: str,
        layer: bytes,
        served_layer: bytes | None = None,
        first_replies: dict[str, list[Reply]] | None = None,
    ) -> dict[str, str]:
        """An OCI image whose layer descriptor says `layer` while the server sends `served_layer`."""
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": digest(layer),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        paths = {
            "manifest": f"/v2/{repo}/manifests/{tag}",
            "config": f"/v2/{repo}/blobs/{digest(config)}",
            "layer": f"/v2/{repo}/blobs/{digest(layer)}",
        }
        bodies = {
            "manifest": manifest,
            "config": config,
            "layer": layer if served_layer is None else served_layer,
        }
        for key, path in paths.items():
            kind = (
                "application/vnd.oci.image.manifest.v1+json"
                if key == "manifest"
                else "application/octet-stream"
            )
            self.routes[path] = [*(first_replies or {}).get(key, []), send(200, bodies[key], kind)]
        return {"manifest": digest(manifest), "config": digest(config), "layer": digest(layer)}

    def serve(self) -> http.server.ThreadingHTTPServer:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path
                if path.startswith("/v2/") and "/manifests/sha256:" in path:
                    path = path.rsplit("/", 1)[0] + "/1"  # any digest gets the tag's manifest
                replies = outer.routes.get(path)
                n = outer.hits.get(path, 0)
                outer.hits[path] = n + 1
                if not replies:
                    send(404, b'{"errors":[{"code":"NOT_FOUND","message":"not here"}]}', "application/json")(
                        self
                    )
                    return
                replies[min(n, len(replies) - 1)](self)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return server
