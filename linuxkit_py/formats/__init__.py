"""The output format table: one row per format, like LinuxKit's `outFuns`.

A writer gets the assembled root filesystem and one open (temporary) binary file per
output suffix; the build renames the temporaries into place only when every writer of
the format succeeded. Adding a format is adding a row to FORMATS.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from linuxkit_py.arch import Arch, get_arch
from linuxkit_py.archive.blockcache import ContentAddressed, DeflateBlockCache
from linuxkit_py.archive.entry import Entry, FileRegion
from linuxkit_py.errors import UserError
from linuxkit_py.sign import Signer

ROOT_MODES = ("ram", "squashfs", "erofs")


@dataclass(frozen=True)
class AbLayout:
    """`--ab`: an A/B disk (docs/updates.md)."""

    version: str  # --image-version: what the boot menu sorts by and what updates compare
    slot_size: int | None = None  # --slot-size, bytes; None: twice the root image, in whole MiB
    data_size: int | None = None  # --data-size, bytes: a data partition after the slots; None: none


@dataclass
class FormatOptions:
    """Options of the disk and ISO formats (documented per format in docs/formats.md)."""

    size: int | None = None  # bytes; None: the smallest that fits plus headroom
    root: str = "ram"  # ram: kernel + initrd; squashfs/erofs: the root filesystem on the medium
    arch: str = "amd64"
    # Boot assets by name (the Format row's `assets`: "efi-stub", "grub-efi", "raspi-firmware", ...):
    # the build fetches them for `arch` from Debian's packages; absent names mean the host's own files.
    assets: dict[str, Path] = field(default_factory=dict)
    signer: Signer | None = None  # --sign-key/--sign-cert: every EFI binary written is signed with it
    verity: bool = False  # --verity: the root image carries a dm-verity hash tree, its root hash on the cmdline
    ab: AbLayout | None = None  # --ab: the EFI disks get two root slots and systemd-boot (formats/ab.py)

    @property
    def arch_info(self) -> Arch:
        return get_arch(self.arch)

    def asset(self, name: str, host_default: Path) -> Path:
        """The asset `name` the build fetched, else the host's file `host_default`."""
        return self.assets.get(name, host_default)


@dataclass
class Rootfs:
    """The assembled root filesystem, in output order (boot/kernel, boot/cmdline, ... first)."""

    entries: list[Entry]
    epoch: int  # mtime of every entry and of every generated header (SOURCE_DATE_EPOCH)
    # Where gzip writers may keep deflated blocks for the next build (None: not kept).
    compression_cache: Path | None = None
    compression_keys: set[str] | None = None  # filled with the keys of the blocks used (build --cache-to)
    options: FormatOptions = field(default_factory=FormatOptions)
    # Directories whose files are never rewritten with other bytes (the cache's unpacked layers): the
    # block cache names their regions by place instead of reading them (archive/blockcache.py).
    content_addressed: tuple[Path, ...] = ()
    # The SHA256s it knows of file regions without reading them (the SBOM's tables of the cache's layers).
    known_sha256: Callable[[list[FileRegion]], dict[FileRegion, bytes]] | None = None

    @functools.cached_property
    def addresses(self) -> ContentAddressed:
        """What names the bytes of an entry's data (regions of `content_addressed` files by place)."""
        return ContentAddressed(self.content_addressed)

    def block_cache(self) -> DeflateBlockCache | None:
        """The deflated-block cache gzip writers share, when the build keeps one."""
        if self.compression_cache is None:
            return None
        return DeflateBlockCache(self.compression_cache, content_addressed=self.addresses,
                                 used=self.compression_keys)


class _Kept(io.RawIOBase):
    """The file of an output left in place (Format.input_digests): writing to it is a bug."""

    def writable(self) -> bool:
        return True

    def write(self, data: object, /) -> int:
        raise RuntimeError("an output kept in place was written to")


KEPT = cast(BinaryIO, _Kept())


Writer = Callable[[Rootfs, list[BinaryIO]], None]


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]  # output files are NAME + suffix, in the order the writer gets them
    write: Writer
    streamable: bool = False  # may be written to `-o FILE|-`
    tools: tuple[str, ...] = ()  # external commands it needs (see linuxkit_py.tools)
    description: str = ""
    arches: tuple[str, ...] = ("amd64", "arm64")  # the architectures it has an image for
    assets: tuple[str, ...] = ()  # boot assets it needs (see FormatOptions.assets)
    signs: bool = False  # writes EFI binaries that --sign-key signs (UKI, EFI disks, EFI ISOs)
    # Per output file, a digest of what its bytes are made of besides the code and options (None: not
    # known). A rebuild keeps each file whose digest and identity are as recorded (uptodate.py), and
    # `write` gets KEPT in its place: such a writer skips every file that is KEPT.
    input_digests: Callable[[Rootfs], list[str | None]] | None = None

    def check_arch(self, arch: str) -> None:
        """A one-line UserError when this format has no image for `arch` (BIOS formats on arm64)."""
        if arch not in self.arches:
            raise UserError(f"format {self.name} has no {arch} image: it is built for {', '.join(self.arches)}",
                            hint="BIOS boot exists on x86 only: use the -efi formats" if "bios" in self.name
                            else None)


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    _load_writers()
    try:
        return FORMATS[name]
    except KeyError:
        known = ", ".join(sorted(FORMATS))
        raise UserError(f"unknown format {name!r}", hint=f"known formats: {known}") from None


def all_formats() -> dict[str, Format]:
    _load_writers()
    return dict(FORMATS)


def _load_writers() -> None:
    # Importing a writer module registers its rows.
    import linuxkit_py.formats.ab  # noqa: F401
    import linuxkit_py.formats.convert  # noqa: F401
    import linuxkit_py.formats.docker  # noqa: F401
    import linuxkit_py.formats.iso  # noqa: F401
    import linuxkit_py.formats.kernel_iso  # noqa: F401
    import linuxkit_py.formats.raw  # noqa: F401
    import linuxkit_py.formats.rootimage  # noqa: F401
    import linuxkit_py.formats.rpi  # noqa: F401
    import linuxkit_py.formats.uki  # noqa: F401
    from linuxkit_py.formats import initrd, tar  # noqa: F401
