"""Stand-ins for cloud metadata servers, on 127.0.0.1, for boot tests of pkg/metadata.

The guest reaches one at the cloud's real address (169.254.169.254:80, 169.254.42.42:80) through
qemu's user network (QemuOptions.guestfwd); nothing leaves this machine. Each server answers the
paths it is given, the way the cloud documents them, and records every request it got.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

# An answer: bytes (200), (status, bytes), or a callable of the request giving one of those.
Answer = bytes | tuple[int, bytes | Iterable[bytes]] | Callable[["Request"], "bytes | tuple[int, bytes]"]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


NEXT_CLOUD = "/_test/next"  # a guest's GET of this makes the server the next of its `clouds`


@dataclass
class MetadataServer:
    """Answers `routes` ("GET /path" -> Answer); other requests get 404. `required` headers (name ->
    value) must be on every request, else 403 (GCP's Metadata-Flavor: Google), as the cloud does.
    `clouds`: route tables the server goes through, one per GET of NEXT_CLOUD (one boot, several clouds)."""

    routes: dict[str, Answer]
    required: dict[str, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    clouds: list[dict[str, Answer]] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def _answer(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request(self.command, self.path, headers)
                server.requests.append(request)
                if self.path == NEXT_CLOUD and server.clouds:
                    server.routes = server.clouds.pop(0)
                answer: Answer | None = server.routes.get(f"{self.command} {self.path}")
                if any(headers.get(k.lower()) != v for k, v in server.required.items()):
                    answer = (403, b"missing header\n")
                if self.path == NEXT_CLOUD:
                    answer = b"ok\n"
                if callable(answer):
                    answer = answer(request)
                if answer is None:
                    answer = (404, b"not found\n")
                status, body = answer if isinstance(answer, tuple) else (200, answer)
                self.send_response(status)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for chunk in [body] if isinstance(body, bytes) else body:
                        self.wfile.write(chunk)
                except OSError:
                    pass  # the guest stopped reading (a capped download)

            do_GET = do_PUT = _answer  # noqa: N815 - http.server's names

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> MetadataServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths(self, method: str = "GET") -> list[str]:
        return [r.path for r in self.requests if r.method == method]


def repeated(chunk: bytes, total: int) -> Iterator[bytes]:
    """`total` bytes of `chunk` over and over, generated as they are sent (a 100 MB user-data)."""
    sent = 0
    while sent < total:
        piece = chunk[: total - sent]
        sent += len(piece)
        yield piece


def aws_routes(*, hostname: bytes, user_data: bytes | None, key: bytes | None, token: str | None) -> dict[str, Answer]:
    """EC2's instance metadata service. With `token`, IMDSv2 only: a PUT /latest/api/token gives it and
    every GET must carry it (401 otherwise), as an instance with HttpTokens=required."""
    base = "/latest/meta-data/"
    values: dict[str, bytes] = {"hostname": hostname, "public-ipv4": b"203.0.113.7", "local-ipv4": b"172.31.5.9",
                                "placement/availability-zone": b"eu-west-1b", "instance-type": b"t3.micro",
                                "instance-id": b"i-0123456789abcdef0", "local-hostname": b"ip-172-31-5-9.internal"}
    if key is not None:
        values["public-keys/0/openssh-key"] = key
    routes: dict[str, Answer] = {}

    def guarded(body: bytes) -> Answer:
        if token is None:
            return body
        return lambda request: body if request.headers.get("x-aws-ec2-metadata-token") == token else (401, b"")

    for name, body in values.items():
        routes[f"GET {base}{name}"] = guarded(body)
    if user_data is not None:
        routes["GET /latest/user-data"] = guarded(user_data)
    if token is not None:
        routes["PUT /latest/api/token"] = lambda request: (
            token.encode() if request.headers.get("x-aws-ec2-metadata-token-ttl-seconds") else (400, b""))
    return routes


def gcp_routes(*, hostname: bytes, project_keys: bytes, user_data: bytes) -> dict[str, Answer]:
    """GCP's metadata server (computeMetadata/v1; every request needs Metadata-Flavor: Google)."""
    base = "/computeMetadata/v1/"
    return {"GET /": b"computeMetadata/\n",
            f"GET {base}instance/hostname": hostname,
            f"GET {base}project/attributes/ssh-keys": project_keys,
            f"GET {base}instance/attributes/user-data": user_data}


def openstack_routes() -> dict[str, Answer]:
    """OpenStack's EC2-compatible tree (what LinuxKit reads on OpenStack)."""
    routes = aws_routes(hostname=b"os-vm.novalocal", user_data=b"#!/bin/sh\necho openstack\n",
                        key=b"ssh-ed25519 AAAAopenstack os@key", token=None)
    routes["GET /latest/meta-data/instance-id"] = b"i-00000042"
    return routes


def hetzner_routes() -> dict[str, Answer]:
    base = "/latest/meta-data/"
    return {"GET /": b"latest\n", f"GET {base}hostname": b"hetzner-1", f"GET {base}public-ipv4": b"198.51.100.4",
            f"GET {base}local-ipv4": b"10.0.0.2", f"GET {base}instance-id": b"4242",
            f"GET {base}public-keys": b'["ssh-ed25519 AAAAhetzner1 a@b", "ssh-ed25519 AAAAhetzner2 c@d"]',
            "GET /latest/user-data": b"hetzner user-data\n"}


def digitalocean_routes() -> dict[str, Answer]:
    base = "/metadata/v1/"
    return {"GET /": b"metadata/\n", f"GET {base}": b"id\nhostname\n", f"GET {base}hostname": b"droplet-1",
            f"GET {base}interfaces/public/0/ipv4/address": b"192.0.2.10",
            f"GET {base}interfaces/private/0/ipv4/address": b"10.130.0.2", f"GET {base}region": b"ams3",
            f"GET {base}id": b"123456", f"GET {base}public-keys": b"ssh-ed25519 AAAAdo do@key\n",
            f"GET {base}user-data": b"do user-data\n"}


def vultr_routes() -> dict[str, Answer]:
    base = "/v1/"
    return {"GET /": b"v1\n", f"GET {base}": b"hostname\n", f"GET {base}hostname": b"vultr-1",
            f"GET {base}interfaces/0/ipv4/address": b"192.0.2.20", f"GET {base}interfaces/1/ipv4/address": b"10.1.96.3",
            f"GET {base}interfaces/1/ipv4/netmask": b"255.255.240.0", f"GET {base}region/regioncode": b"AMS",
            f"GET {base}instanceid": b"a1b2c3", f"GET {base}public-keys": b"ssh-ed25519 AAAAvultr v@key\n"}


def scaleway_routes() -> dict[str, Answer]:
    """Scaleway's metadata (169.254.42.42): KEY=VALUE lines; user-data only to a privileged source port."""
    conf = (b"ID=11111111-2222\nNAME=scw-1\nHOSTNAME=scw-1\nLOCATION_ZONE_ID=fr-par-1\nPUBLIC_IP_ADDRESS=51.15.0.1\n"
            b"PRIVATE_IP=10.68.0.5\nSSH_PUBLIC_KEYS=1\nSSH_PUBLIC_KEYS_0_KEY='ssh-ed25519 AAAAscw s@key'\n")
    return {"GET /": b"conf\n", "GET /conf": conf, "GET /user_data/cloud-init": b"scaleway user-data\n"}
