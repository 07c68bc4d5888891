"""Authenticode signatures of EFI binaries, as UEFI firmware checks them against its `db`.

Microsoft's "Windows Authenticode Portable Executable Signature Format": the image's hash leaves out the
CheckSum field, the Certificate Table directory entry and the certificate table itself, and covers the
headers, the sections in file order and any data after them. The signature is a PKCS #7 SignedData whose
content is an SpcIndirectDataContent holding that hash; it goes into a WIN_CERTIFICATE appended to the file
(8-byte aligned), which the Certificate Table entry points at.

The signer's authenticated attributes are contentType, messageDigest and an empty SpcSpOpusInfo: no
signing time (sbsign adds one, so its output differs each second) and RSA PKCS #1 v1.5 signatures are
deterministic, so the same key, certificate and binary give the same signed bytes. A binary that is
signed already (Debian's kernels are) gets ours as one more certificate; firmware accepts either.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from linuxkit_py.errors import UserError
from linuxkit_py.sign import Signer, der
from linuxkit_py.sign.pe import PeImage, read_pe, update_checksum

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_RSA = "1.2.840.113549.1.1.1"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
OID_SPC_PE_IMAGE_DATA = "1.3.6.1.4.1.311.2.1.15"
OID_SPC_SP_OPUS_INFO = "1.3.6.1.4.1.311.2.1.12"
WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
WIN_CERTIFICATE_HEADER = 8
ALIGNMENT = 8
CHUNK = 1 << 20
# SpcLink's "file" choice, the UTF-16 string every signer writes there.
OBSOLETE = "<<<Obsolete>>>".encode("utf-16-be")


def _align(value: int) -> int:
    return -(-value // ALIGNMENT) * ALIGNMENT


def _hash_range(digest: hashlib._Hash, f: object, start: int, end: int) -> None:
    f.seek(start)  # type: ignore[attr-defined]
    left = end - start
    while left > 0:
        chunk = f.read(min(CHUNK, left))  # type: ignore[attr-defined]
        if not chunk:
            raise ValueError("the PE image is shorter than its headers say")
        digest.update(chunk)
        left -= len(chunk)


def image_digest(path: Path, pe: PeImage | None = None) -> bytes:
    """The Authenticode sha256 of the PE image at `path`."""
    pe = pe or read_pe(path)
    cert_offset, cert_size = pe.cert_table
    end = cert_offset if cert_size else pe.size  # the certificates are the last thing in a signed file
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        _hash_range(digest, f, 0, pe.checksum_offset)
        _hash_range(digest, f, pe.checksum_offset + 4, pe.cert_dir_offset)
        _hash_range(digest, f, pe.cert_dir_offset + 8, pe.size_of_headers)
        hashed = pe.size_of_headers
        for pointer, size in pe.sections:
            _hash_range(digest, f, pointer, pointer + size)
            hashed += size
        if end > hashed:  # what follows the sections (symbol tables, padding), as firmware counts it
            _hash_range(digest, f, hashed, end)
    return digest.digest()


def _algorithm(dotted: str) -> bytes:
    return der.sequence(der.oid(dotted), der.null())


def indirect_data(digest: bytes) -> bytes:
    """SpcIndirectDataContent: "this is a PE image" and its sha256."""
    link = der.explicit(0, der.explicit(2, der.tlv(0x80, OBSOLETE)))
    pe_image_data = der.sequence(der.tlv(der.BIT_STRING, b"\0"), link)
    return der.sequence(
        der.sequence(der.oid(OID_SPC_PE_IMAGE_DATA), pe_image_data),
        der.sequence(_algorithm(OID_SHA256), der.octet_string(digest)),
    )


def _attribute(dotted: str, value: bytes) -> bytes:
    return der.sequence(der.oid(dotted), der.set_of(value))


def signed_data(digest: bytes, key: rsa.RSAPrivateKey, cert_der: bytes, issuer_der: bytes, serial: int) -> bytes:
    """The PKCS #7 ContentInfo (SignedData) over the Authenticode `digest` of an image."""
    content = indirect_data(digest)
    attributes = [
        _attribute(OID_CONTENT_TYPE, der.oid(OID_SPC_INDIRECT_DATA)),
        _attribute(OID_MESSAGE_DIGEST, der.octet_string(hashlib.sha256(der.content(content)).digest())),
        _attribute(OID_SPC_SP_OPUS_INFO, der.sequence()),
    ]
    signed_attributes = der.set_of(*attributes)  # signed as a SET, stored as [0] IMPLICIT
    signature = key.sign(signed_attributes, padding.PKCS1v15(), hashes.SHA256())
    signer_info = der.sequence(
        der.integer(1),
        der.sequence(issuer_der, der.integer(serial)),
        _algorithm(OID_SHA256),
        der.implicit(0, signed_attributes),
        _algorithm(OID_RSA),
        der.octet_string(signature),
    )
    body = der.sequence(
        der.integer(1),
        der.set_of(_algorithm(OID_SHA256)),
        der.sequence(der.oid(OID_SPC_INDIRECT_DATA), der.explicit(0, content)),
        der.implicit(0, der.set_of(cert_der)),
        der.set_of(signer_info),
    )
    return der.sequence(der.oid(OID_SIGNED_DATA), der.explicit(0, body))


def win_certificate(pkcs7: bytes) -> bytes:
    """A WIN_CERTIFICATE of type PKCS_SIGNED_DATA, zero-padded to 8 bytes (dwLength without the padding)."""
    length = WIN_CERTIFICATE_HEADER + len(pkcs7)
    entry = struct.pack("<IHH", length, WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA) + pkcs7
    return entry + bytes(_align(length) - length)


def sign_file(path: Path, signer: Signer) -> None:
    """Append an Authenticode signature by `signer` to the PE image at `path` (in place)."""
    from linuxkit_py.sign.keys import check_key_pair

    key, cert = check_key_pair(signer.key, signer.cert)
    try:
        pe = read_pe(path)
    except (ValueError, struct.error) as e:
        raise UserError(f"cannot sign {path.name}: {e}") from None
    cert_offset, cert_size = pe.cert_table
    if cert_size and cert_offset + cert_size != pe.size:
        raise UserError(f"cannot sign {path.name}: its certificate table is not at the end of the file")
    if not cert_size:
        padded = _align(pe.size)  # the certificate table starts 8-byte aligned; the padding is hashed
        with open(path, "r+b") as f:
            f.truncate(padded)
        pe = read_pe(path)
        cert_offset = padded
    pkcs7 = signed_data(image_digest(path, pe), key, cert.public_bytes(serialization.Encoding.DER),
                        cert.issuer.public_bytes(), cert.serial_number)
    entry = win_certificate(pkcs7)
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.write(entry)
        f.seek(pe.cert_dir_offset)
        f.write(struct.pack("<II", cert_offset, cert_size + len(entry)))
    update_checksum(path, pe.checksum_offset)
