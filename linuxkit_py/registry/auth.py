"""Registry authentication: Docker's config.json credentials and the Bearer/Basic challenges.

Credentials come from `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`):
`credHelpers.<host>`, then `credsStore`, then `auths.<host>` (`auth` = base64 of `user:password`,
or `username` + `password`). Docker Hub's entry is keyed `https://index.docker.io/v1/`.
Bearer tokens are fetched from the challenge's realm, one per registry host and repository,
and kept for the life of the client; a token the registry refuses is fetched again once.
Nothing here ever puts a password or a token into a message.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from linuxkit_py.errors import UserError
from linuxkit_py.registry.transport import RegistryFault, StreamInterrupted, Transport, error_message

DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
MAX_TOKEN_RESPONSE = 1 << 20


@dataclass(frozen=True)
class Credential:
    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def default_docker_config_dir() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    return Path(env).expanduser() if env else Path.home() / ".docker"


def config_key_host(key: str) -> str:
    """Docker's rule for `auths` keys: drop the scheme and any path (`https://h/v1/` -> `h`)."""
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0].lower()


def _aliases(host: str) -> tuple[str, ...]:
    host = host.lower()
    return DOCKER_HUB_HOSTS if host in DOCKER_HUB_HOSTS else (host,)


class CredentialStore:
    """Credentials by registry host, read lazily from a Docker config directory."""

    def __init__(self, config_dir: Path | None = None) -> None:
        self.config_dir = config_dir or default_docker_config_dir()
        self._doc: dict[str, object] | None = None
        self._found: dict[str, Credential | None] = {}
        self._lock = threading.Lock()

    @property
    def config_path(self) -> Path:
        return self.config_dir / "config.json"

    def _config(self) -> dict[str, object]:
        if self._doc is None:
            try:
                doc = json.loads(self.config_path.read_bytes())
            except FileNotFoundError:
                doc = {}
            except OSError as exc:
                raise UserError(f"cannot read {self.config_path}: {exc.strerror}") from exc
            except ValueError as exc:
                raise UserError(f"{self.config_path}: not valid JSON: {exc}") from exc
            self._doc = doc if isinstance(doc, dict) else {}
        return self._doc

    def get(self, host: str) -> Credential | None:
        """The credential for a registry host[:port], or None for anonymous access."""
        with self._lock:
            if host not in self._found:
                self._found[host] = self._lookup(host)
            return self._found[host]

    def _lookup(self, host: str) -> Credential | None:
        doc = self._config()
        aliases = _aliases(host)
        helpers = doc.get("credHelpers")
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if config_key_host(key) in aliases and isinstance(helper, str):
                    return self._from_helper(helper, host)
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            found = self._from_helper(store, host)
            if found is not None:
                return found
        auths = doc.get("auths")
        if isinstance(auths, dict):
            for key, entry in auths.items():
                if config_key_host(key) in aliases and isinstance(entry, dict):
                    found = self._from_entry(key, entry)
                    if found is not None:
                        return found
        return None

    def _from_entry(self, key: str, entry: dict[str, object]) -> Credential | None:
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            try:
                user, sep, password = base64.b64decode(encoded, validate=False).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, sep, password = "", "", ""
            if not sep or not user:
                raise UserError(f"{self.config_path}: auths.{key}.auth is not base64 of user:password")
            return Credential(user, password)
        name, secret = entry.get("username"), entry.get("password")
        if isinstance(name, str) and name and isinstance(secret, str):
            return Credential(name, secret)
        return None

    def _from_helper(self, helper: str, host: str) -> Credential | None:
        """Ask `docker-credential-<helper> get` (the credential-helper protocol)."""
        program = f"docker-credential-{helper}"
        server = DOCKER_HUB_SERVER if host.lower() in DOCKER_HUB_HOSTS else host
        try:
            done = subprocess.run([program, "get"], input=server.encode(), capture_output=True, timeout=60)
        except FileNotFoundError:
            raise UserError(f"{self.config_path} names credential helper {program}, which is not installed")\
                from None
        except subprocess.TimeoutExpired:
            raise UserError(f"credential helper {program} did not answer within 60 s") from None
        if done.returncode != 0:
            return None  # "credentials not found": anonymous access
        try:
            answer = json.loads(done.stdout)
            user, secret = answer["Username"], answer["Secret"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"credential helper {program} answered with no JSON credentials") from None
        if not isinstance(user, str) or not isinstance(secret, str) or not user:
            return None
        return Credential(user, secret)


_PARAM_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://auth",service="reg",scope="..."` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _PARAM_RE.finditer(rest):
        value = match.group(2) if match.group(2) is not None else match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


class Authenticator:
    """Answers 401 challenges and remembers what worked, per host (Basic) and repository (Bearer)."""

    def __init__(self, transport: Transport, credentials: CredentialStore) -> None:
        self.transport = transport
        self.credentials = credentials
        self._tokens: dict[tuple[str, str], str] = {}
        self._basic_hosts: set[str] = set()
        self._lock = threading.Lock()

    def authorization(self, host: str, repository: str) -> str | None:
        """The Authorization header value to send, if any is known yet."""
        with self._lock:
            token = self._tokens.get((host, repository))
            if token is not None:
                return f"Bearer {token}"
            basic = host in self._basic_hosts
        if basic:
            credential = self.credentials.get(host)
            return credential.basic_header() if credential else None
        return None

    def answer(self, host: str, repository: str, challenge: str, sent: str | None) -> None:
        """Prepare credentials for a retry after a 401 that carried `challenge` (raises if none fit)."""
        scheme, params = parse_challenge(challenge)
        if not scheme:
            raise self.required(host)
        if scheme == "basic":
            if self.credentials.get(host) is None:
                raise self.required(host)
            with self._lock:
                self._basic_hosts.add(host)
            return
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryFault(f"registry {host}: unsupported authentication challenge {scheme!r}")
        key = (host, repository)
        with self._lock:
            current = self._tokens.get(key)
            if current is not None and f"Bearer {current}" != sent:
                return  # another thread already fetched a fresh token
            # Holding the lock while fetching keeps parallel downloads to one token request.
            self._tokens[key] = self._fetch_token(host, repository, params)

    def _fetch_token(self, host: str, repository: str, params: dict[str, str]) -> str:
        realm = params["realm"]
        query = {"scope": params.get("scope") or f"repository:{repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        split = urlsplit(realm)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise RegistryFault(f"registry {host}: bad token realm in its challenge")
        token_host = split.netloc
        peer = f"token server {token_host}"
        credential = self.credentials.get(host)
        auth = (credential.username, credential.password) if credential else None
        url = with_query(realm, query)
        response = self.transport.get(url, {"Accept": "application/json"}, peer, token_host, auth=auth)
        if response.status_code in (401, 403):
            response.close()
            if credential is None:
                raise self.required(host)
            raise RegistryFault(
                f"authentication refused by {token_host} (HTTP {response.status_code})",
                hint=f"check the credentials for {host} in {self.credentials.config_path}")
        if response.status_code != 200:
            message = error_message(response)
            response.close()
            raise RegistryFault(f"{peer}: {message} (HTTP {response.status_code})")
        try:
            body = self.transport.read_body(response, peer, MAX_TOKEN_RESPONSE)
        except StreamInterrupted as exc:
            raise RegistryFault(f"{peer}: reply interrupted ({exc.reason})") from None
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryFault(f"{peer}: answer without a token")
        return token

    def required(self, host: str) -> RegistryFault:
        return RegistryFault(f"registry {host}: authentication required (HTTP 401)",
                             hint="the repository does not exist or needs credentials "
                             f"for {host} in {self.credentials.config_path}")

    def refused(self, host: str) -> RegistryFault:
        """The fault for a 401 that survived a fresh answer to the challenge."""
        if self.credentials.get(host) is None:
            return self.required(host)
        return RegistryFault(
            f"authentication refused by registry {host} (HTTP 401)",
            hint=f"check the credentials for {host} in {self.credentials.config_path}")


def with_query(base: str, query: dict[str, str]) -> str:
    """`base` with `query` appended (keeping any query the realm already has)."""
    separator = "&" if urlsplit(base).query else "?"
    return base + separator + urlencode(query)
