"""HTTP for the registry client: one requests session, bounded timeouts, retries with back-off.

Faults that survive the retries become `RegistryFault(cause)`, where the cause is the part of
the user's one-line error after the image reference, e.g. `cannot connect to registry
127.0.0.1:1 (connection refused)` or `registry quay.io: manifest unknown (HTTP 404)`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import requests

from linuxkit_py.errors import UserError

# Statuses worth another try: rate limiting and the server errors a restart or a busy
# backend produce (501 and 505 are permanent answers).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0  # seconds; a longer Retry-After is capped, the pull still ends
POOL_SIZE = 16
# Go's HTTP client never sends loopback traffic through a proxy; neither do we.
_NO_PROXY = {"http": None, "https": None, "all": None}


class Readable(Protocol):
    """A request body stream (a file, or a wrapper counting what was sent)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


# A request body: bytes, or a function opening a fresh stream (closed after the request) for each try.
Body = bytes | Callable[[], Readable] | None


class RegistryFault(Exception):
    """A registry conversation failed for good; `cause` is a one-line description without secrets."""

    def __init__(self, cause: str, hint: str | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.hint = hint


class TransientFault(RegistryFault):
    """A fault another try may mend (connection error, 429, 5xx), for a request sent without retries."""


class StreamInterrupted(Exception):
    """A response body stopped early (connection reset, read timeout); the caller may retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # e.g. `connection reset`


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """exc and everything it wraps (requests -> urllib3 -> socket errors)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        reason = getattr(e, "reason", None)  # urllib3 keeps the socket error here
        wrapped = [e.__cause__, e.__context__, reason, *e.args]
        todo.extend(w for w in wrapped if isinstance(w, BaseException))


def describe_connection_error(exc: BaseException, timeout: float) -> tuple[str, bool]:
    """(short cause such as `connection refused`, whether another try may help)."""
    import http.client  # here, as requests is: a build from the cache never loads them (5 MiB)
    import ssl

    import requests
    import urllib3.exceptions

    chain = list(_exception_chain(exc))
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted: {e.verify_message}", False
    for e in chain:
        if isinstance(e, ssl.SSLError):
            return f"TLS error: {e.reason or e}", False
        if isinstance(e, socket.gaierror):
            return f"cannot resolve host name: {e.strerror}", False
        if isinstance(e, requests.exceptions.ConnectTimeout | requests.exceptions.ReadTimeout | TimeoutError
                      | urllib3.exceptions.ReadTimeoutError):
            return f"no answer within {timeout:g} s", True
        if isinstance(e, ConnectionRefusedError):
            return "connection refused", True
        if isinstance(e, ConnectionResetError):
            return "connection reset", True
        if isinstance(e, http.client.IncompleteRead | urllib3.exceptions.ProtocolError):
            return "connection closed early", True
        if isinstance(e, OSError) and e.strerror:
            return e.strerror.lower(), True
    transient = isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout)
    return type(exc).__name__, transient


def error_message(response: requests.Response) -> str:
    """The registry's own words for a failed request (distribution's `errors[0].message`)."""
    try:
        doc = response.json()
        first = doc["errors"][0]
        message = str(first.get("message") or first.get("code") or "").strip()
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        message = ""
    return (message or response.reason or "error").splitlines()[0][:200]


def http_fault(peer: str, response: requests.Response) -> RegistryFault:
    """`registry H: manifest unknown (HTTP 404)` for an unexpected status."""
    return RegistryFault(f"{peer}: {error_message(response)} (HTTP {response.status_code})")


def retry_after_seconds(response: requests.Response, default: float) -> float:
    """The Retry-After header (seconds or an HTTP date), capped; `default` if absent or bad."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        import email.utils

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _system_ca_bundle() -> str:
    import requests.utils

    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        path = os.environ.get(name)
        if path and os.path.isfile(path):
            return path
    return requests.utils.DEFAULT_CA_BUNDLE_PATH


class Transport:
    """Requests with timeouts and bounded retries, shared by the threads of one pull or push."""

    def __init__(self, timeout: float = 30.0, retries: int = 4, backoff: float = 0.5,
                 ca_files: tuple[str, ...] = (), sleep: Callable[[float], None] = time.sleep) -> None:
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.sleep = sleep
        # requests (100 ms to import) is loaded by the builds that talk to a registry, not by every build.
        import requests.adapters

        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = "linuxkit-py"
        self._ca_bundle: IO[bytes] | None = None
        self.verify: bool | str = True
        if ca_files:
            self._ca_bundle = self._combined_ca_bundle(ca_files)
            self.verify = self._ca_bundle.name

    @staticmethod
    def _combined_ca_bundle(ca_files: tuple[str, ...]) -> IO[bytes]:
        """requests takes one CA file: the system bundle plus the user's CA files (like --cert-file)."""
        bundle = tempfile.NamedTemporaryFile(prefix="linuxkit-py-ca-", suffix=".pem")  # noqa: SIM115
        try:
            bundle.write(Path(_system_ca_bundle()).read_bytes() + b"\n")
            for name in ca_files:
                try:
                    bundle.write(Path(name).read_bytes() + b"\n")
                except OSError as exc:
                    raise UserError(f"cannot read CA file {name}: {exc.strerror}") from exc
            bundle.flush()
        except BaseException:
            bundle.close()
            raise
        return bundle

    def close(self) -> None:
        self.session.close()
        if self._ca_bundle is not None:
            self._ca_bundle.close()
            self._ca_bundle = None

    def delay(self, attempt: int) -> float:
        """Back-off before retry number `attempt` (0-based): backoff, 2*backoff, 4*backoff..."""
        return self.backoff * (2**attempt)

    def get(self, url: str, headers: dict[str, str], peer: str, host: str,
            auth: tuple[str, str] | None = None) -> requests.Response:
        """GET with retries (see `request`)."""
        return self.request("GET", url, headers, peer, host, auth=auth)

    def request(self, method: str, url: str, headers: dict[str, str], peer: str, host: str,
                auth: tuple[str, str] | None = None, body: Body = None, retry: bool = True) -> requests.Response:
        """One request, tried again on connection errors, 429 and 5xx; the last response is returned as is.

        `peer` names the server in messages (`registry quay.io`), `host` is its host[:port]. The body
        is not read yet: use read_body or iter_body (both close the response), or close it. `body` is
        bytes or a function opening a fresh stream for each try. With `retry=False` nothing is tried
        again: a connection error another try might mend raises TransientFault.
        """
        import requests

        proxies: dict[str, Any] = dict(_NO_PROXY) if is_loopback(host) else {}
        attempt = 0
        while True:
            data = body() if callable(body) else body
            try:
                response = self.session.request(
                    method, url, headers=headers, data=data, stream=True, timeout=(self.timeout, self.timeout),
                    verify=self.verify, proxies=proxies, auth=auth, allow_redirects=True)
            except requests.RequestException as exc:
                cause, transient = describe_connection_error(exc, self.timeout)
                if isinstance(exc, requests.exceptions.ReadTimeout):
                    cause = f"{peer}: {cause}"
                else:
                    cause = self._connect_cause(peer, cause)
                if transient and not retry:
                    raise TransientFault(cause) from None
                if not transient or attempt >= self.retries:
                    raise RegistryFault(cause) from None
                self.sleep(self.delay(attempt))
                attempt += 1
                continue
            finally:
                if data is not None and not isinstance(data, bytes):
                    data.close()
            if retry and response.status_code in RETRY_STATUSES and attempt < self.retries:
                wait = retry_after_seconds(response, self.delay(attempt))
                response.close()
                self.sleep(wait)
                attempt += 1
                continue
            return response

    @staticmethod
    def _connect_cause(peer: str, cause: str) -> str:
        if cause.startswith("TLS"):
            return f"{peer}: {cause}"
        return f"cannot connect to {peer} ({cause})"

    def iter_body(self, response: requests.Response, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The response body in chunks; a broken stream raises StreamInterrupted."""
        import requests

        try:
            yield from response.iter_content(chunk_size)
        except (requests.RequestException, OSError) as exc:
            reason, _ = describe_connection_error(exc, self.timeout)
            raise StreamInterrupted(reason) from None
        finally:
            with contextlib.suppress(Exception):
                response.close()

    def iter_arrived(self, response: requests.Response, limit: int = 1 << 20) -> Iterator[bytes]:
        """The response body as it arrives: each piece is what one read finds (at most `limit` bytes), so a broken
        stream loses nothing that arrived before the break, and a process whose other threads keep the GIL busy
        reads the body in few large pieces (each read gives the GIL up and waits to get it back: 64 KiB reads of a
        133 MB blob were 2,000 such waits). A broken stream raises StreamInterrupted."""
        import requests
        import urllib3.exceptions

        raw = response.raw
        try:
            while chunk := raw.read1(limit, decode_content=True):
                yield chunk
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            reason, _ = describe_connection_error(exc, self.timeout)
            raise StreamInterrupted(reason) from None
        finally:
            with contextlib.suppress(Exception):
                response.close()

    def read_body(self, response: requests.Response, peer: str, limit: int) -> bytes:
        """The whole (small) body; more than `limit` bytes is a fault, not a memory hog."""
        data = bytearray()
        for chunk in self.iter_body(response, 1 << 16):
            data += chunk
            if len(data) > limit:
                response.close()
                raise RegistryFault(f"{peer}: document larger than {limit} bytes")
        return bytes(data)

    def retrying(self, attempt: int, exc: StreamInterrupted, fault: str) -> int:
        """After an interrupted body: wait and return the next attempt number, or raise `fault`."""
        if attempt >= self.retries:
            raise RegistryFault(f"{fault} ({exc.reason})") from None
        self.sleep(self.delay(attempt))
        return attempt + 1
