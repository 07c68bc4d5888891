"""Docker-style image references: `redis` -> `docker.io/library/redis:latest`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from linuxkit_py.errors import UserError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$")
NAME_MAX = 255  # Docker's limit on the normalised name (registry/repository)
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference. `tag` and `digest` may both be set (`name:tag@sha256:...`)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """registry/repository, e.g. docker.io/library/redis."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    @property
    def api_registry(self) -> str:
        """The host to talk to: Docker Hub's API lives on registry-1.docker.io."""
        return "registry-1.docker.io" if self.registry == "docker.io" else self.registry

    @property
    def reference(self) -> str:
        """What goes after /manifests/ in the registry API: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG


def _looks_like_registry(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference like Docker does; a bad one is a UserError."""
    original = text
    if not text or text != text.strip():
        raise UserError(f"invalid image reference {original!r}")
    if _HEX64_RE.match(text):
        raise UserError(f"invalid image reference {original!r}: a 64-digit hex string is an image id, "
                        "not a name")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise UserError(f"invalid image reference {original!r}: bad digest {digest!r}")
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise UserError(f"invalid image reference {original!r}: bad tag {tag!r}")
    first, _, rest = text.partition("/")
    if rest and _looks_like_registry(first):
        registry, path = first, rest
        if not _DOMAIN_RE.match(registry):
            raise UserError(f"invalid image reference {original!r}: bad registry {registry!r}")
    else:
        registry, path = DEFAULT_REGISTRY, text
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not _PATH_RE.match(path):
        raise UserError(f"invalid image reference {original!r}: bad repository name {path!r}")
    if len(registry) + 1 + len(path) > NAME_MAX:
        raise UserError(f"invalid image reference {original!r}: name longer than {NAME_MAX} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


def normalize_reference(text: str) -> str:
    """The canonical string form of a reference (what the cache records as its ref name)."""
    return str(parse_reference(text))
