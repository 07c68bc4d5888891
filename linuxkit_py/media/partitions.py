"""Partition tables as bytes: the legacy MBR and the GUID Partition Table (GPT) with its protective MBR.

Pure functions, one per on-disk structure, following the UEFI Specification 2.10, chapter 5 "GUID
Partition Table (GPT) Disk Layout": 5.2.1 Legacy MBR, 5.2.3 Protective MBR, 5.3.2 GPT Header, 5.3.3 GPT
Partition Entry Array. All integers are little-endian; GUIDs are stored in the spec's mixed-endian
layout (`uuid.UUID.bytes_le`). Nothing here is random: disk signatures and GUIDs come from
`derived_guid` / `derived_disk_signature`, functions of the disk's content.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from dataclasses import dataclass

SECTOR = 512  # logical block size of every disk we write
MIB = 1 << 20
PARTITION_ALIGNMENT = MIB  # partitions start (and are sized) on 1 MiB boundaries
FIRST_PARTITION_LBA = PARTITION_ALIGNMENT // SECTOR  # 2048

# 5.2.1 Legacy MBR (Table 5-1) and its partition record (Table 5-2).
MBR_BOOT_CODE_SIZE = 440
MBR_DISK_SIGNATURE_OFFSET = 440
MBR_PARTITION_TABLE_OFFSET = 446
MBR_PARTITION_RECORD_SIZE = 16
MBR_PARTITION_RECORDS = 4
MBR_SIGNATURE_OFFSET = 510
MBR_SIGNATURE = b"\x55\xaa"
MBR_ACTIVE = 0x80  # BootIndicator of the partition the boot code starts
MBR_INACTIVE = 0x00
MBR_TYPE_FAT12 = 0x01
MBR_TYPE_FAT16_LBA = 0x0E
MBR_TYPE_FAT32_LBA = 0x0C
MBR_TYPE_GPT_PROTECTIVE = 0xEE  # 5.2.3: OSType of the protective MBR's only record
MBR_MAX_LBA = 0xFFFFFFFF
# CHS addresses: the conventional 255 heads x 63 sectors geometry; past cylinder 1023 the
# address saturates at (1023, 254, 63), and readers use the LBA fields instead.
CHS_HEADS = 255
CHS_SECTORS = 63
CHS_MAX_CYLINDER = 1023

# 5.3.2 GPT Header (Table 5-5).
GPT_SIGNATURE = b"EFI PART"
GPT_REVISION = 0x00010000
GPT_HEADER_SIZE = 92
GPT_HEADER_LBA = 1
# 5.3.3: the array must reserve at least 16,384 bytes: 128 entries of 128 bytes, 32 sectors.
GPT_ENTRY_COUNT = 128
GPT_ENTRY_SIZE = 128
GPT_ENTRY_ARRAY_SECTORS = GPT_ENTRY_COUNT * GPT_ENTRY_SIZE // SECTOR
GPT_PRIMARY_ENTRIES_LBA = 2
GPT_NAME_CHARS = 36  # PartitionName: 72 bytes of UTF-16LE
# 5.3.3 (Table 5-7) partition attributes and 5.3.3 (Table 5-8) type GUIDs.
GPT_ATTR_REQUIRED = 1 << 0
GPT_ATTR_LEGACY_BIOS_BOOTABLE = 1 << 2
ESP_TYPE_GUID = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")  # EFI System Partition
# The namespace of our name-based (RFC 4122 version 5) GUIDs.
GUID_NAMESPACE = uuid.UUID("3e1d0a5c-6f0b-5b7e-9a57-6c696e75786b")


@dataclass(frozen=True)
class MbrPartition:
    first_lba: int
    sectors: int
    type: int  # OSType, e.g. MBR_TYPE_FAT16_LBA
    active: bool = False


@dataclass(frozen=True)
class GptPartition:
    type_guid: uuid.UUID
    guid: uuid.UUID  # UniquePartitionGUID (the PARTUUID Linux shows)
    first_lba: int
    last_lba: int  # inclusive
    name: str = ""
    attributes: int = 0


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def derived_guid(seed: bytes, purpose: str) -> uuid.UUID:
    """A GUID that is a function of `seed` (e.g. a digest of the disk's files) and what it names."""
    return uuid.uuid5(GUID_NAMESPACE, f"{purpose}:{seed.hex()}")


def derived_disk_signature(seed: bytes, purpose: str = "mbr-disk-signature") -> int:
    """A non-zero 32-bit MBR disk signature derived from `seed` (0 means "none" to some tools)."""
    value = int.from_bytes(hashlib.sha256(purpose.encode() + seed).digest()[:4], "little")
    return value or 1


def chs_address(lba: int) -> bytes:
    """The 3-byte CHS form of `lba` (head, sector | cylinder high bits, cylinder low bits)."""
    cylinder, rest = divmod(lba, CHS_HEADS * CHS_SECTORS)
    head, sector = divmod(rest, CHS_SECTORS)
    sector += 1
    if cylinder > CHS_MAX_CYLINDER:
        cylinder, head, sector = CHS_MAX_CYLINDER, CHS_HEADS - 1, CHS_SECTORS
    return bytes([head, sector | ((cylinder >> 2) & 0xC0), cylinder & 0xFF])


def mbr_partition_record(part: MbrPartition) -> bytes:
    """One 16-byte partition record (5.2.1, Table 5-2)."""
    if part.first_lba + part.sectors - 1 > MBR_MAX_LBA or part.sectors > MBR_MAX_LBA:
        raise ValueError(f"partition at LBA {part.first_lba} of {part.sectors} sectors does not fit an MBR")
    return (bytes([MBR_ACTIVE if part.active else MBR_INACTIVE]) + chs_address(part.first_lba)
            + bytes([part.type]) + chs_address(part.first_lba + part.sectors - 1)
            + struct.pack("<II", part.first_lba, part.sectors))


def mbr(partitions: list[MbrPartition], *, disk_signature: int, boot_code: bytes = b"") -> bytes:
    """The 512-byte master boot record: boot code, disk signature, four partition records, 0x55AA."""
    if len(boot_code) > MBR_BOOT_CODE_SIZE:
        raise ValueError(f"MBR boot code is {len(boot_code)} bytes, at most {MBR_BOOT_CODE_SIZE} fit")
    if len(partitions) > MBR_PARTITION_RECORDS:
        raise ValueError(f"an MBR holds {MBR_PARTITION_RECORDS} partitions, not {len(partitions)}")
    records = b"".join(mbr_partition_record(p) for p in partitions)
    records = records.ljust(MBR_PARTITION_RECORDS * MBR_PARTITION_RECORD_SIZE, b"\0")
    sector = (boot_code.ljust(MBR_BOOT_CODE_SIZE, b"\0") + struct.pack("<I", disk_signature) + b"\0\0"
              + records + MBR_SIGNATURE)
    assert len(sector) == SECTOR
    return sector


def read_mbr(sector: bytes) -> list[MbrPartition]:
    """The used partition records of a master boot record (5.2.1), in table order; [] without 0x55AA."""
    if len(sector) < SECTOR or sector[MBR_SIGNATURE_OFFSET:SECTOR] != MBR_SIGNATURE:
        return []
    found = []
    for index in range(MBR_PARTITION_RECORDS):
        record = sector[MBR_PARTITION_TABLE_OFFSET + index * MBR_PARTITION_RECORD_SIZE:][:MBR_PARTITION_RECORD_SIZE]
        first_lba, sectors = struct.unpack_from("<II", record, 8)
        if record[4] and sectors:
            found.append(MbrPartition(first_lba, sectors, record[4], active=record[0] == MBR_ACTIVE))
    return found


def protective_mbr(disk_sectors: int) -> bytes:
    """5.2.3: one record of type 0xEE covering the disk from LBA 1 (capped at 2^32-1 sectors)."""
    record = MbrPartition(first_lba=GPT_HEADER_LBA, sectors=min(disk_sectors - 1, MBR_MAX_LBA),
                          type=MBR_TYPE_GPT_PROTECTIVE)
    encoded = bytearray(mbr_partition_record(record))
    # The spec sets the ending CHS to 0xFFFFFF whatever the disk size (Table 5-4).
    encoded[5:8] = b"\xff\xff\xff"
    sector = bytearray(mbr([], disk_signature=0))
    sector[MBR_PARTITION_TABLE_OFFSET : MBR_PARTITION_TABLE_OFFSET + MBR_PARTITION_RECORD_SIZE] = encoded
    return bytes(sector)


def gpt_partition_entry(part: GptPartition) -> bytes:
    """One 128-byte GPT Partition Entry (5.3.3, Table 5-6)."""
    name = part.name.encode("utf-16-le")
    if len(name) > 2 * GPT_NAME_CHARS:
        raise ValueError(f"GPT partition name {part.name!r} is longer than {GPT_NAME_CHARS} UTF-16 units")
    entry = (part.type_guid.bytes_le + part.guid.bytes_le
             + struct.pack("<QQQ", part.first_lba, part.last_lba, part.attributes) + name.ljust(72, b"\0"))
    assert len(entry) == GPT_ENTRY_SIZE
    return entry


def gpt_entry_array(partitions: list[GptPartition]) -> bytes:
    """The whole partition entry array: the entries, then unused (all-zero) entries up to GPT_ENTRY_COUNT."""
    if len(partitions) > GPT_ENTRY_COUNT:
        raise ValueError(f"a GPT holds {GPT_ENTRY_COUNT} partitions here, not {len(partitions)}")
    array = b"".join(gpt_partition_entry(p) for p in partitions)
    return array.ljust(GPT_ENTRY_COUNT * GPT_ENTRY_SIZE, b"\0")


def gpt_header(*, my_lba: int, alternate_lba: int, first_usable_lba: int, last_usable_lba: int,
               disk_guid: uuid.UUID, entries_lba: int, entries_crc32: int) -> bytes:
    """A GPT Header (5.3.2, Table 5-5) padded to one sector; HeaderCRC32 covers its 92 bytes."""
    fields = struct.pack("<8sIIIIQQQQ16sQIII", GPT_SIGNATURE, GPT_REVISION, GPT_HEADER_SIZE, 0, 0, my_lba,
                         alternate_lba, first_usable_lba, last_usable_lba, disk_guid.bytes_le, entries_lba,
                         GPT_ENTRY_COUNT, GPT_ENTRY_SIZE, entries_crc32)
    assert len(fields) == GPT_HEADER_SIZE
    crc = zlib.crc32(fields)
    header = fields[:16] + struct.pack("<I", crc) + fields[20:]
    return header.ljust(SECTOR, b"\0")


def gpt_usable_lbas(disk_sectors: int) -> tuple[int, int]:
    """(FirstUsableLBA, LastUsableLBA): between the primary table at the start and the backup at the end."""
    first = GPT_PRIMARY_ENTRIES_LBA + GPT_ENTRY_ARRAY_SECTORS
    last = disk_sectors - 1 - GPT_ENTRY_ARRAY_SECTORS - 1
    return first, last


def gpt_tables(disk_sectors: int, partitions: list[GptPartition], disk_guid: uuid.UUID) -> list[tuple[int, bytes]]:
    """Everything a GPT disk needs outside its partitions, as (byte offset, bytes) pieces: protective MBR,
    primary header and entries at the start, backup entries and header in the last sectors (5.3.1)."""
    first_usable, last_usable = gpt_usable_lbas(disk_sectors)
    for part in partitions:
        if not first_usable <= part.first_lba <= part.last_lba <= last_usable:
            raise ValueError(f"partition {part.first_lba}-{part.last_lba} is outside the usable LBAs "
                             f"{first_usable}-{last_usable}")
    entries = gpt_entry_array(partitions)
    entries_crc = zlib.crc32(entries)
    last_lba = disk_sectors - 1
    backup_entries_lba = last_lba - GPT_ENTRY_ARRAY_SECTORS

    def header(my_lba: int, alternate_lba: int, entries_lba: int) -> bytes:
        return gpt_header(my_lba=my_lba, alternate_lba=alternate_lba, first_usable_lba=first_usable,
                          last_usable_lba=last_usable, disk_guid=disk_guid, entries_lba=entries_lba,
                          entries_crc32=entries_crc)

    primary = header(GPT_HEADER_LBA, last_lba, GPT_PRIMARY_ENTRIES_LBA)
    backup = header(last_lba, GPT_HEADER_LBA, backup_entries_lba)
    return [
        (0, protective_mbr(disk_sectors)),
        (GPT_HEADER_LBA * SECTOR, primary),
        (GPT_PRIMARY_ENTRIES_LBA * SECTOR, entries),
        (backup_entries_lba * SECTOR, entries),
        (last_lba * SECTOR, backup),
    ]
