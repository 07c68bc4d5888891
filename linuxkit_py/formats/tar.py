"""The `tar` output: the whole root filesystem (including boot/) as a PAX tar (archive/tar.py writes it)."""

from __future__ import annotations

from typing import BinaryIO

from linuxkit_py.archive.tar import write_tar
from linuxkit_py.formats import Format, Rootfs, register


def _write_tar_format(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    write_tar(rootfs.entries, outs[0], rootfs.epoch)


register(Format(
    name="tar",
    suffixes=(".tar",),
    write=_write_tar_format,
    streamable=True,
    description="the whole root filesystem (including boot/) as a PAX tar",
))
