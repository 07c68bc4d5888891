"""`linuxkit-py serve`: a directory over HTTP (listings included), as `linuxkit serve` does for iPXE boots."""

from __future__ import annotations

import functools
import logging
import socket
from pathlib import Path
from typing import Any

from linuxkit_py.errors import UserError

log = logging.getLogger("linuxkit_py")

DEFAULT_ADDRESS = ":8080"  # LinuxKit's --port default: port 8080 on every interface


def parse_address(text: str) -> tuple[str, int]:
    """LinuxKit's `--port`: `[HOST]:PORT` (`:8080`, `127.0.0.1:9000`, `[::1]:80`); a bare PORT also works."""
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not port.isdigit() or int(port) > 65535 or (":" in host and not bracketed):
        raise UserError(f"--port {text!r}: not an address", hint="use [HOST]:PORT, e.g. :8080 or 127.0.0.1:8080")
    return host, int(port)


def _server(address: tuple[str, int], directory: Path) -> Any:
    """A threading HTTP server of `directory`; http.server is loaded here, not by every command (8 MiB)."""
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            log.warning("%s %s", self.command, self.path)  # LinuxKit logs every request

        def log_message(self, format: str, *args: Any) -> None:
            log.info(format, *args)

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET

    return Server(address, functools.partial(Handler, directory=str(directory)))


def serve_directory(directory: Path, address: str = DEFAULT_ADDRESS) -> int:
    """Serve `directory` at `address` until interrupted (Ctrl-C: exit status 130, from the CLI)."""
    host, port = parse_address(address)
    if not directory.is_dir():
        raise UserError(f"--directory {directory}: no such directory")
    try:
        server = _server((host, port), directory)
    except OSError as exc:
        raise UserError(f"cannot listen on {address}: {exc.strerror}") from exc
    with server:
        shown = f"[{host}]" if ":" in host else (host or "0.0.0.0")
        log.warning("serving %s on http://%s:%d/", directory, shown, server.server_address[1])
        server.serve_forever()
    return 0
