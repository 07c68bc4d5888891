"""A/B disks (`--ab` with raw-efi and qcow2-efi) and update bundles (`-f update`): docs/updates.md.

An A/B disk is a GPT disk with an EFI System Partition and two root slots:

* the ESP holds systemd-boot as the removable-media loader (EFI/BOOT/BOOTX64.EFI), `loader/loader.conf`
  (no menu, no editor) and one UKI per installed slot in EFI/Linux/: `linuxkit-a.efi` for the version the
  disk was built with. systemd-boot sorts them by the IMAGE_VERSION of their os-release and boots the newest
  one that has not used up its tries; an update's UKI is written as `linuxkit-b+3.efi` (three tries, boot
  counting of the Boot Loader Specification: systemd-boot renames it +2-1, +1-2, +0-3 before each try,
  and an entry with no tries left sorts after the others, so the previous version boots again);
* slot A (GPT name `linuxkit-a`) holds the root image (squashfs or erofs, with its dm-verity tree under
  --verity), slot B (`linuxkit-b`) is empty. Stage one (in every UKI) finds its own root image by content,
  so a UKI boots whichever slot holds its image;
* with --data-size, a data partition (GPT name `linuxkit-data`) after the slots: an ext4 filesystem made
  here (fixed UUID, hash seed and times: the same bytes every build) that pkg/init mounts on /var/lib/data
  and that updates never write.

An update bundle, NAME.update, is a tar of `manifest` (key=value lines: version, architecture, sizes and
sha256 of the root image and the UKI), `manifest.sig` (an RSA PKCS #1 v1.5 sha256 signature of the manifest
by --sign-key), `root.img` and `uki.efi`, in that order, so that a device verifies the manifest before it
reads the rest. pkg/update applies it (docs/updates.md).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from linuxkit_py.archive.entry import Entry, FileRegion, Kind
from linuxkit_py.archive.tar import write_tar
from linuxkit_py.errors import UserError
from linuxkit_py.formats import Format, Rootfs, register
from linuxkit_py.formats.bootfiles import boot_files
from linuxkit_py.formats.raw import GPT_TAIL, RawDisk, _grow, _write_at, work_directory
from linuxkit_py.formats.rootimage import ROOT_FILESYSTEMS, file_sha256
from linuxkit_py.formats.uki import OBJCOPY, OS_RELEASE, stub_path, write_uki
from linuxkit_py.media.fat import HEADROOM, Source, content_digest, fat_min_size, write_fat
from linuxkit_py.media.fat import TOOLS as FAT_TOOLS
from linuxkit_py.media.partitions import (
    ESP_TYPE_GUID,
    MIB,
    PARTITION_ALIGNMENT,
    SECTOR,
    GptPartition,
    align_up,
    derived_guid,
    gpt_tables,
)
from linuxkit_py.sign import Signer
from linuxkit_py.tools import require_file, run

BUNDLE_FORMAT = "linuxkit-py-update/1"
AB_FORMATS = ("raw-efi", "qcow2-efi", "update")  # what --ab applies to (update: the bundle of such a disk)
ENTRY_DIR = "EFI/Linux"
SLOTS = ("a", "b")
ENTRY = "linuxkit-{slot}.efi"  # the UKI of a slot; an update's gets +TRIES before .efi
SLOT_NAME = "linuxkit-{slot}"  # GPT partition names
LOADER_CONF = b"timeout 0\neditor no\nauto-entries no\nauto-firmware no\n"
IMAGE_ID = "linuxkit-py"
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd-boot's EFI variables (LoaderEntrySelected, ...)
ESP_LABEL = "EFI"
ESP_NAME = "EFI System"
# The ESP keeps room for a second UKI this much larger than the first (the next version's).
NEXT_UKI_PER_CENT = 150
MIN_ESP = 64 * MIB
# Discoverable Partitions Specification: the root partition types, per architecture.
ROOT_TYPES = {"amd64": uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
              "arm64": uuid.UUID("b921b045-1df0-41c3-af44-4c6f280d3fae")}
# The data partition: the GPT type "Linux filesystem data", not the Discoverable Partitions "var" type, which
# means the whole of /var and is for systemd to mount (bound to the machine id); ours is /var/lib/data.
DATA_TYPE = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
DATA_NAME = "linuxkit-data"  # the GPT partition name (what pkg/init looks for) and the ext4 label
MIN_DATA = 8 * MIB
HOST_SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-boot{efi}.efi"
SYSTEMD_BOOT_ASSET = "systemd-boot"
# In the root filesystem of an A/B image or a bundle (added by the build, covered by verity): what the
# updater compares and checks bundles with.
IMAGE_FILE = "etc/linuxkit-py/image"
UPDATE_CERT = "etc/linuxkit-py/update.crt"
VERSION_PATTERN = re.compile(r"[0-9][0-9A-Za-z._~-]{0,63}")
# The bundle's members, in the order a device reads them.
MANIFEST, SIGNATURE, ROOT_IMAGE, UKI = "manifest", "manifest.sig", "root.img", "uki.efi"


def check_version(text: str) -> str:
    """--image-version: starts with a digit; letters, digits, . _ ~ - (what `sort -V` orders); at most 64."""
    if not VERSION_PATTERN.fullmatch(text):
        raise UserError(f"--image-version {text!r}: not a version",
                        hint="start with a digit; use digits, letters and . _ ~ - (e.g. 2, 1.4.0, 2026.12.1)")
    return text


def ab_os_release(version: str) -> bytes:
    """The UKI's .osrel on an A/B disk: LinuxKit's NAME/ID, and what systemd-boot sorts by."""
    return OS_RELEASE + f"IMAGE_ID={IMAGE_ID}\nIMAGE_VERSION={version}\n".encode()


def image_entries(version: str, arch: str, signer: Signer | None, epoch: int) -> list[Entry]:
    """The files an A/B image's root filesystem gets: its version and architecture, and the certificate
    that update bundles must be signed by, --sign-cert's (none: the image accepts no bundle)."""
    # cryptography (40 ms to import) is loaded by the builds that sign, not by every build.
    from cryptography.hazmat.primitives import serialization

    from linuxkit_py.sign.keys import read_cert

    cert_pem = read_cert(signer.cert).public_bytes(serialization.Encoding.PEM) if signer is not None else None
    info = f"version={version}\narch={arch}\n".encode()
    entries = [Entry("etc/linuxkit-py", Kind.DIR, 0o755, mtime=epoch),
               Entry(IMAGE_FILE, Kind.FILE, 0o644, size=len(info), data=info, mtime=epoch)]
    if cert_pem is not None:
        entries.append(Entry(UPDATE_CERT, Kind.FILE, 0o644, size=len(cert_pem), data=cert_pem, mtime=epoch))
    return entries


@dataclass(frozen=True)
class Slot:
    uki: Path  # signed when the build signs
    image: Path  # the root image (with its verity tree under --verity)
    fs: str


def _version(rootfs: Rootfs, fmt: str) -> str:
    layout = rootfs.options.ab
    if layout is None:
        raise UserError(f"{fmt}: no --ab layout")  # the build always sets one for these writers
    return layout.version


def build_slot(rootfs: Rootfs, workdir: Path, fmt: str) -> Slot:
    """The contents of one slot: the root image, and the UKI whose stage one mounts it."""
    options = rootfs.options
    if options.root not in ROOT_FILESYSTEMS:
        raise UserError(f"{fmt}: an A/B slot holds a root image: use --root squashfs or erofs, not {options.root}")
    boot = workdir / "slot"
    boot.mkdir()
    with boot_files(rootfs, "disk", boot, whole_image_id=True) as bf:
        (_, image), = bf.extra
        kept = workdir / "root.img"
        shutil.move(image, kept)
        uki = workdir / "uki.efi"
        write_uki(uki, kernel=bf.kernel.data or b"", initrd=bf.initrd, cmdline=bf.cmdline,
                  os_release=ab_os_release(_version(rootfs, fmt)), epoch=rootfs.epoch, stub=stub_path(options),
                  objcopy=options.arch_info.objcopy(), signer=options.signer)
    return Slot(uki, kept, options.root)


def _systemd_boot(rootfs: Rootfs, workdir: Path) -> Path:
    options = rootfs.options
    host = Path("/") / HOST_SYSTEMD_BOOT.format(efi=options.arch_info.efi_suffix)
    loader = workdir / "systemd-boot.efi"
    shutil.copyfile(require_file(options.asset(SYSTEMD_BOOT_ASSET, host), "systemd-boot-efi"), loader)
    if options.signer is not None:
        options.signer.sign_pe(loader)
    return loader


def write_ab_disk(rootfs: Rootfs, path: Path, workdir: Path, *, size_unit: int = MIB, fmt: str) -> RawDisk:
    """The A/B disk of `rootfs` at `path` (layout in the module docstring)."""
    options = rootfs.options
    slot = build_slot(rootfs, workdir, fmt)
    image_size = slot.image.stat().st_size
    layout = options.ab
    slot_size = (layout.slot_size if layout and layout.slot_size else None) or align_up(2 * image_size, MIB)
    if slot_size % MIB:
        raise UserError(f"--slot-size {slot_size}: must be whole MiB")
    if slot_size < image_size:
        raise UserError(f"{fmt} --ab: the root image needs {-(-image_size // MIB)} MiB; --slot-size is "
                        f"{slot_size // MIB} MiB", hint=f"give --slot-size {-(-image_size // MIB)}M or more")
    loader = _systemd_boot(rootfs, workdir)
    files: list[tuple[str, Source]] = [
        (options.arch_info.efi_boot_path, loader),
        ("loader/loader.conf", LOADER_CONF),
        (f"{ENTRY_DIR}/{ENTRY.format(slot='a')}", slot.uki),
    ]
    uki_size = slot.uki.stat().st_size
    esp_size = max(MIN_ESP, fat_min_size([len(LOADER_CONF), uki_size, uki_size * NEXT_UKI_PER_CENT // 100,
                                          loader.stat().st_size], 3) + HEADROOM)
    esp_start = PARTITION_ALIGNMENT
    slot_a = esp_start + esp_size
    slot_b = slot_a + slot_size
    data_start = slot_b + slot_size
    data_size = _data_size(layout.data_size if layout else None)
    needed = data_start + data_size + GPT_TAIL
    if options.size is not None and options.size < needed:
        data = f", data {data_size // MIB}" if data_size else ""
        raise UserError(f"{fmt} --ab: the disk needs at least {-(-needed // MIB)} MiB (ESP {esp_size // MIB}, two "
                        f"slots of {slot_size // MIB}{data}); --size is {options.size // MIB} MiB",
                        hint=f"give --size {-(-needed // MIB)}M or more, or a smaller --slot-size"
                             f"{' or --data-size' if data_size else ''}")
    disk_size = options.size if options.size is not None else align_up(needed, size_unit)
    salt = b"ab %d %d" % (disk_size, slot_size) + (b" data %d" % data_size if data_size else b"")
    digest = content_digest([*files, ("root.img", slot.image)], salt)
    path.write_bytes(b"")
    write_fat(path, files, label=ESP_LABEL, epoch=rootfs.epoch, size=esp_size, offset=esp_start,
              directories=(ENTRY_DIR,))
    with open(path, "r+b") as out, open(slot.image, "rb") as image:
        out.seek(slot_a)
        shutil.copyfileobj(image, out, 1 << 20)
    _grow(path, disk_size)
    if data_size:
        write_data_filesystem(path, data_start, data_size, digest, rootfs.epoch)
    root_type = ROOT_TYPES[options.arch]

    def part(start: int, size: int, type_guid: uuid.UUID, name: str) -> GptPartition:
        return GptPartition(type_guid=type_guid, guid=derived_guid(digest, name), first_lba=start // SECTOR,
                            last_lba=(start + size) // SECTOR - 1, name=name)

    partitions = [part(esp_start, esp_size, ESP_TYPE_GUID, ESP_NAME),
                  part(slot_a, slot_size, root_type, SLOT_NAME.format(slot="a")),
                  part(slot_b, slot_size, root_type, SLOT_NAME.format(slot="b"))]
    if data_size:
        partitions.append(part(data_start, data_size, DATA_TYPE, DATA_NAME))
    _write_at(path, gpt_tables(disk_size // SECTOR, partitions, derived_guid(digest, "disk")))
    return RawDisk(disk_size, digest)


def _data_size(size: int | None) -> int:
    """--data-size in bytes (0: no data partition): whole MiB, at least MIN_DATA."""
    if not size:
        return 0
    if size % MIB or size < MIN_DATA:
        raise UserError(f"--data-size {size}: must be whole MiB and at least {MIN_DATA // MIB} MiB",
                        hint="e.g. --data-size 256M")
    return size


def write_data_filesystem(path: Path, offset: int, size: int, digest: bytes, epoch: int) -> None:
    """An empty ext4 filesystem labelled DATA_NAME at `offset` of the disk `path`, `size` bytes: its UUID and
    directory hash seed derived from the disk's digest and every time stamp `epoch` (E2FSPROGS_FAKE_TIME), so
    the same inputs give the same bytes (with the same e2fsprogs)."""
    fs_uuid, hash_seed = derived_guid(digest, "data-fs"), derived_guid(digest, "data-hash-seed")
    # the partition is a hole of the new disk file (and mke2fs discards it: punches it on a file), so the inode
    # tables and journal are zero without writing them: the disk stays sparse, the bytes are those of zeroing
    extended = f"offset={offset},hash_seed={hash_seed},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=1"
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-m", "0", "-L", DATA_NAME, "-U", str(fs_uuid), "-E", extended,
         str(path), f"{size // 1024}k"], capture=True,
        env={**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch), "MKE2FS_DEVICE_SECTSIZE": str(SECTOR)})


def manifest(version: str, arch: str, slot: Slot) -> bytes:
    """The bundle's manifest: key=value lines a busybox shell reads."""
    values = {
        "format": BUNDLE_FORMAT,
        "version": version,
        "arch": arch,
        "root_fs": slot.fs,
        "root_size": str(slot.image.stat().st_size),
        "root_sha256": file_sha256(slot.image),
        "uki_size": str(slot.uki.stat().st_size),
        "uki_sha256": file_sha256(slot.uki),
    }
    return "".join(f"{key}={value}\n" for key, value in values.items()).encode()


def write_bundle(out: BinaryIO, slot: Slot, version: str, arch: str, signer: Signer, epoch: int) -> None:
    """The bundle of `slot` (module docstring) to `out`: manifest, its signature by `signer`, root image, UKI."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from linuxkit_py.sign.keys import read_key

    text = manifest(version, arch, slot)
    signature = read_key(signer.key).sign(text, padding.PKCS1v15(), hashes.SHA256())
    entries = [Entry(name, Kind.FILE, 0o644, size=len(data), data=data)
               for name, data in ((MANIFEST, text), (SIGNATURE, signature))]
    for name, path in ((ROOT_IMAGE, slot.image), (UKI, slot.uki)):
        size = path.stat().st_size
        entries.append(Entry(name, Kind.FILE, 0o644, size=size, data=FileRegion(str(path), 0, size)))
    write_tar(entries, out, epoch)


def write_update(rootfs: Rootfs, outs: list[BinaryIO]) -> None:
    """`update`: NAME.update, the signed bundle of one slot."""
    (out,) = outs
    options = rootfs.options
    if options.signer is None:
        raise UserError("-f update needs --sign-key and --sign-cert: devices refuse unsigned bundles")
    with work_directory(out) as workdir:
        slot = build_slot(rootfs, workdir, "update")
        write_bundle(out, slot, _version(rootfs, "update"), options.arch, options.signer, rootfs.epoch)


register(Format(
    name="update",
    suffixes=(".update",),
    write=write_update,
    tools=(*FAT_TOOLS, OBJCOPY),
    signs=True,
    assets=("efi-stub",),
    description="a signed update bundle for --ab disks: the UKI and root image of one slot (docs/updates.md)",
))
