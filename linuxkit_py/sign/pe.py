"""What signing needs of a PE/COFF image (Microsoft PE/COFF specification): where the CheckSum, the
Certificate Table directory entry and the sections are, and the image checksum."""

from __future__ import annotations

import array
import struct
from dataclasses import dataclass
from pathlib import Path

DOS_MAGIC = b"MZ"
DOS_E_LFANEW = 0x3C
PE_SIGNATURE = b"PE\0\0"
COFF_HEADER_SIZE = 20
COFF_MACHINE = 0
COFF_NUMBER_OF_SECTIONS = 2
COFF_SIZE_OF_OPTIONAL_HEADER = 16
MAGIC_PE32, MAGIC_PE32_PLUS = 0x10B, 0x20B
OPTIONAL_SIZE_OF_HEADERS = 60
OPTIONAL_CHECKSUM = 64
# Where the data directories start in the optional header, and NumberOfRvaAndSizes before them.
DATA_DIRECTORIES = {MAGIC_PE32: 96, MAGIC_PE32_PLUS: 112}
CERTIFICATE_TABLE = 4  # the data directory index of the attribute certificate table
SECTION_HEADER_SIZE = 40
SECTION_SIZE_OF_RAW_DATA = 16
SECTION_POINTER_TO_RAW_DATA = 20
HEADER_READ = 64 * 1024  # enough for the headers of any EFI binary we sign


@dataclass(frozen=True)
class PeImage:
    size: int  # file size
    machine: int
    checksum_offset: int  # file offsets of the CheckSum field and of the Certificate Table directory entry
    cert_dir_offset: int
    size_of_headers: int
    sections: tuple[tuple[int, int], ...]  # (PointerToRawData, SizeOfRawData), in file order, empty ones left out
    cert_table: tuple[int, int]  # (file offset, size) of the attribute certificates; (0, 0): unsigned


def read_pe(path: Path) -> PeImage:
    """The layout of the PE image at `path`; ValueError when it is not one."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_READ)
    if head[:2] != DOS_MAGIC or len(head) < DOS_E_LFANEW + 4:
        raise ValueError("not a PE image (no MZ header)")
    (pe,) = struct.unpack_from("<I", head, DOS_E_LFANEW)
    if head[pe:pe + 4] != PE_SIGNATURE:
        raise ValueError("not a PE image (no PE signature)")
    coff = pe + 4
    (machine,) = struct.unpack_from("<H", head, coff + COFF_MACHINE)
    (count,) = struct.unpack_from("<H", head, coff + COFF_NUMBER_OF_SECTIONS)
    (optional_size,) = struct.unpack_from("<H", head, coff + COFF_SIZE_OF_OPTIONAL_HEADER)
    optional = coff + COFF_HEADER_SIZE
    (magic,) = struct.unpack_from("<H", head, optional)
    if magic not in DATA_DIRECTORIES:
        raise ValueError(f"not a PE32 or PE32+ image (optional header magic {magic:#x})")
    directories = optional + DATA_DIRECTORIES[magic]
    (directory_count,) = struct.unpack_from("<I", head, directories - 4)
    if directory_count <= CERTIFICATE_TABLE:
        raise ValueError("the PE image has no Certificate Table directory entry")
    cert_dir = directories + 8 * CERTIFICATE_TABLE
    cert_table = struct.unpack_from("<II", head, cert_dir)
    (size_of_headers,) = struct.unpack_from("<I", head, optional + OPTIONAL_SIZE_OF_HEADERS)
    table = optional + optional_size
    sections = []
    for index in range(count):
        raw_size, raw_pointer = struct.unpack_from("<II", head, table + index * SECTION_HEADER_SIZE
                                                   + SECTION_SIZE_OF_RAW_DATA)
        if raw_size:
            sections.append((raw_pointer, raw_size))
    return PeImage(size, machine, optional + OPTIONAL_CHECKSUM, cert_dir, size_of_headers,
                   tuple(sorted(sections)), (cert_table[0], cert_table[1]))


def pe_checksum(path: Path, checksum_offset: int) -> int:
    """The PE image checksum: 16-bit words summed with end-around carry, the CheckSum field counted as
    zero, plus the file size."""
    total = 0
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if size <= checksum_offset < size + len(chunk):
                at = checksum_offset - size
                chunk = chunk[:at] + bytes(4) + chunk[at + 4:]
            size += len(chunk)
            if len(chunk) % 2:  # only the last chunk can be odd: chunks are 1 MiB
                chunk += b"\0"
            total += sum(array.array("H", chunk))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total + size


def update_checksum(path: Path, checksum_offset: int) -> None:
    checksum = pe_checksum(path, checksum_offset)
    with open(path, "r+b") as f:
        f.seek(checksum_offset)
        f.write(struct.pack("<I", checksum))
