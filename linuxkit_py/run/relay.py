"""`python -m linuxkit_py.run.relay HOST PORT`: copy stdin to a TCP connection to HOST:PORT and the
connection's answers to stdout, until both sides are done.

qemu's user network runs it once per guest connection for a `guestfwd=tcp:IP:PORT-cmd:...` rule
(QemuOptions.guestfwd): a guest connecting to IP:PORT (say the cloud metadata address
169.254.169.254:80) talks to a server on this machine. qemu's other guestfwd form, a chardev, is one
connection made when qemu starts and shared by every guest connection, which HTTP cannot use.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

CHUNK = 65536


def _copy_in(sock: socket.socket) -> None:
    """stdin -> the socket; then half-close, so the server sees the end of the request."""
    try:
        while chunk := os.read(0, CHUNK):
            sock.sendall(chunk)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def relay(host: str, port: int) -> int:
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError as exc:
        print(f"linuxkit-py relay: cannot connect to {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    sock.settimeout(None)
    threading.Thread(target=_copy_in, args=(sock,), daemon=True).start()
    try:
        while chunk := sock.recv(CHUNK):
            os.write(1, chunk)
    except OSError:
        return 1
    finally:
        sock.close()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m linuxkit_py.run.relay HOST PORT", file=sys.stderr)
        return 2
    return relay(argv[0], int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
