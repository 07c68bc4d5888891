"""Image reference normalisation, following Docker's rules (distribution/reference)."""

from __future__ import annotations

import pytest

from linuxkit_py.errors import UserError
from linuxkit_py.registry.reference import Reference, normalize_reference, parse_reference

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("redis", "docker.io/library/redis:latest"),
        ("redis:7.2", "docker.io/library/redis:7.2"),
        ("foo/bar", "docker.io/foo/bar:latest"),
        ("foo/bar/baz:1", "docker.io/foo/bar/baz:1"),
        ("docker.io/redis", "docker.io/library/redis:latest"),
        ("docker.io/library/redis", "docker.io/library/redis:latest"),
        ("index.docker.io/redis:1", "docker.io/library/redis:1"),
        ("index.docker.io/linuxkit/init:v1", "docker.io/linuxkit/init:v1"),
        (
            "linuxkit/init:8a7b6cdb89197dc94eb6db69ef9dc90b750db598",
            "docker.io/linuxkit/init:8a7b6cdb89197dc94eb6db69ef9dc90b750db598",
        ),
        # A first component is a registry if it has a dot or a port, is localhost, or has capitals.
        ("localhost/x", "localhost/x:latest"),
        ("localhost:5000/x", "localhost:5000/x:latest"),
        ("127.0.0.1:5000/test/x:1", "127.0.0.1:5000/test/x:1"),
        ("quay.io/a/b/c:tag", "quay.io/a/b/c:tag"),
        ("Registry.Example.com/x", "Registry.Example.com/x:latest"),
        ("Foo/bar", "Foo/bar:latest"),
        ("[::1]:5000/x", "[::1]:5000/x:latest"),
        ("my-registry:5000/a.b/c_d/e__f/g-h/i---j", "my-registry:5000/a.b/c_d/e__f/g-h/i---j:latest"),
        # Without a slash, `:5000` is a tag, not a port.
        ("localhost:5000", "docker.io/library/localhost:5000"),
        ("localhost", "docker.io/library/localhost:latest"),
        (f"redis@{DIGEST}", f"docker.io/library/redis@{DIGEST}"),
        (f"redis:7@{DIGEST}", f"docker.io/library/redis:7@{DIGEST}"),
        (f"localhost:5000/x@{DIGEST}", f"localhost:5000/x@{DIGEST}"),
        ("redis:" + "t" * 128, "docker.io/library/redis:" + "t" * 128),
        ("x/" + "a" * 243, "docker.io/x/" + "a" * 243 + ":latest"),  # 255 characters once normalised
    ],
)
def test_normalize(text: str, normalised: str) -> None:
    assert normalize_reference(text) == normalised
    assert normalize_reference(normalised) == normalised  # idempotent


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", ""),
        (" redis", ""),
        ("redis ", ""),
        ("re dis", ": bad repository name 'library/re dis'"),
        ("foo/Bar", ": bad repository name 'foo/Bar'"),
        ("REDIS", ": bad repository name 'library/REDIS'"),
        ("redis:", ": bad tag ''"),
        ("redis:-x", ": bad tag '-x'"),
        ("redis:" + "t" * 129, ": bad tag '" + "t" * 129 + "'"),
        ("redis@sha256:abc", ": bad digest 'sha256:abc'"),
        ("redis@md5:" + "0" * 32, ": bad digest 'md5:" + "0" * 32 + "'"),
        ("foo//bar", ": bad repository name 'foo//bar'"),
        ("foo/", ": bad repository name 'foo/'"),
        ("-foo", ": bad repository name 'library/-foo'"),
        ("foo_/bar", ": bad repository name 'foo_/bar'"),
        ("exa_mple.com/x", ": bad registry 'exa_mple.com'"),
        ("-bad.com/x", ": bad registry '-bad.com'"),
        ("bad-.com/x", ": bad registry 'bad-.com'"),
        ("host:port/x", ": bad registry 'host:port'"),
        ("x/" + "a" * 244, ": name longer than 255 characters"),
        ("a" * 64, ": a 64-digit hex string is an image id, not a name"),
        (f"@{DIGEST}", ": bad repository name 'library/'"),
    ],
)
def test_invalid(text: str, detail: str) -> None:
    with pytest.raises(UserError) as err:
        parse_reference(text)
    assert err.value.message == f"invalid image reference {text!r}{detail}"


def test_parts() -> None:
    ref = parse_reference("redis:7")
    assert ref == Reference("docker.io", "library/redis", "7", None)
    assert ref.name == "docker.io/library/redis"
    assert ref.api_registry == "registry-1.docker.io"  # Docker Hub's API host
    assert ref.reference == "7"
    pinned = parse_reference(f"quay.io/a/b:7@{DIGEST}")
    assert (pinned.registry, pinned.repository, pinned.tag, pinned.digest) == ("quay.io", "a/b", "7", DIGEST)
    assert pinned.api_registry == "quay.io"
    assert pinned.reference == DIGEST  # the digest is what gets pulled
    assert parse_reference(f"a/b@{DIGEST}").tag is None
