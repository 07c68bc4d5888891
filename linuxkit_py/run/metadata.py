"""The config ISO that LinuxKit's metadata package reads from a CD-ROM (`linuxkit metadata create`,
`linuxkit run -data/-data-file`): one file, `config`, holding the data, on a volume labelled `config`.

LinuxKit writes it with rn/iso9660wrap (a bare ISO 9660 volume); ours is the same file and label, with
Rock Ridge and Joliet names too, written by media/iso9660 with fixed dates, so the same data always
gives the same bytes. pkg/metadata reads `user-data` (NoCloud), else `config`, from any CD-ROM.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from linuxkit_py.errors import UserError
from linuxkit_py.fsutil import atomic_output
from linuxkit_py.media.iso9660 import IsoImage

VOLUME_ID = "config"  # iso9660wrap: the volume identifier is the file's name
FILE_NAME = "config"
DATA_ISO = "data.iso"  # in the run's state directory, as LinuxKit's CreateMetadataISO
ISO_EPOCH = 1492533000  # LinuxKit's fixed build time (2017-04-18T16:30:00Z): no clock in the ISO
# A CD holds far more, but pkg/metadata refuses user-data over 4 MiB (METADATA_MAX_BYTES) by default.
MAX_DATA = 1 << 30


def write_metadata_iso(path: Path, data: bytes) -> Path:
    """Write the config ISO holding `data` to `path` (atomically); returns `path`."""
    if len(data) > MAX_DATA:
        raise UserError(f"metadata of {len(data)} bytes is more than a config ISO holds here ({MAX_DATA} bytes)")
    seed = hashlib.sha256(b"linuxkit-py metadata iso\0" + data).digest()
    with IsoImage(volume_id=VOLUME_ID, epoch=ISO_EPOCH, seed=seed) as iso:
        iso.add_file(FILE_NAME, data, mode=0o444)
        with atomic_output(path) as out:
            iso.write(out)
    return path


def read_data_option(data: str | None, data_file: Path | None) -> bytes | None:
    """The bytes of `--data STRING` or `--data-file FILE` (None when neither is given)."""
    if data is not None and data_file is not None:
        raise UserError("cannot specify both --data and --data-file")
    if data_file is not None:
        try:
            return data_file.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read user data from path {data_file}: {exc.strerror}") from exc
    return data.encode() if data else None  # as LinuxKit, an empty --data is no data
