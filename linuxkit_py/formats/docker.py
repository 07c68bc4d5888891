"""The `docker` output: the root filesystem tar with a Dockerfile, as LinuxKit writes it.

The same PAX tar as the `tar` format (boot/ included), followed by one more member,
`Dockerfile`, so that the tar is a build context: `docker build - < NAME.docker` makes an
image whose entry point is the runtime's rc.init (userspace mode). LinuxKit adds the member
after the `files:` entries, last in the archive; so do we. Streamable, like `tar`.
"""

from __future__ import annotations

from typing import BinaryIO

from linuxkit_py.archive.entry import Entry, Kind
from linuxkit_py.archive.tar import TarWriter
from linuxkit_py.formats import Format, Rootfs, register

DOCKERFILE_NAME = "Dockerfile"
DOCKERFILE_MODE = 0o644
# Byte for byte LinuxKit's (moby/build/build.go), leading newline included.
DOCKERFILE = b'\nFROM scratch\n\nCOPY . ./\n\nENTRYPOINT ["/bin/rc.init"]\n'


def dockerfile_entry() -> Entry:
    return Entry(DOCKERFILE_NAME, Kind.FILE, DOCKERFILE_MODE, size=len(DOCKERFILE), data=DOCKERFILE)


def write_docker(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    """NAME.docker: every rootfs entry, then the Dockerfile, as one PAX tar."""
    writer = TarWriter(outs[0], rootfs.epoch)
    try:
        for entry in rootfs.entries:
            writer.add(entry)
        writer.add(dockerfile_entry())
        writer.finish()
    finally:
        writer.close()


register(Format(
    name="docker",
    suffixes=(".docker",),
    write=write_docker,
    streamable=True,
    description="the root filesystem tar plus a Dockerfile (FROM scratch, ENTRYPOINT rc.init)",
))
