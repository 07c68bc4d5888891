"""The few DER (ITU-T X.690) encodings an Authenticode or PKCS #7 signature needs: tag, length, value."""

from __future__ import annotations

SEQUENCE, SET, INTEGER, OCTET_STRING, OID, NULL, BIT_STRING = 0x30, 0x31, 0x02, 0x04, 0x06, 0x05, 0x03


def tlv(tag: int, value: bytes) -> bytes:
    """One element: the tag, the length (short form below 128, else long form) and the value."""
    size = len(value)
    if size < 0x80:
        return bytes([tag, size]) + value
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + value


def sequence(*items: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(items))


def set_of(*items: bytes) -> bytes:
    """A SET OF: DER sorts the encoded members."""
    return tlv(SET, b"".join(sorted(items)))


def integer(value: int) -> bytes:
    size = value.bit_length() // 8 + 1  # one more bit for the sign: 128 is 00 80
    return tlv(INTEGER, value.to_bytes(size, "big", signed=True))


def octet_string(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


def null() -> bytes:
    return tlv(NULL, b"")


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER from its dotted form, e.g. 1.2.840.113549.1.7.2."""
    numbers = [int(n) for n in dotted.split(".")]
    body = bytearray([numbers[0] * 40 + numbers[1]])
    for number in numbers[2:]:
        chunk = [number & 0x7F]
        number >>= 7
        while number:
            chunk.append(0x80 | (number & 0x7F))
            number >>= 7
        body += bytes(reversed(chunk))
    return tlv(OID, bytes(body))


def explicit(number: int, value: bytes) -> bytes:
    """A context-specific constructed tag [number] around an encoded element."""
    return tlv(0xA0 | number, value)


def implicit(number: int, element: bytes, constructed: bool = True) -> bytes:
    """`element` with its own tag replaced by the context-specific tag [number]."""
    tag = (0xA0 if constructed else 0x80) | number
    return bytes([tag]) + element[1:]


def content(element: bytes) -> bytes:
    """The value octets of one encoded element (its tag and length stripped)."""
    size = element[1]
    if size < 0x80:
        return element[2:]
    return element[2 + (size & 0x7F):]
