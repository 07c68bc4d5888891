"""Secure Boot signing: Authenticode signatures on PE/COFF (EFI) binaries, and the keys to enrol.

`Signer` is what `--sign-key/--sign-cert` load; formats call `signer.sign_pe(path)` on every EFI binary
they write (the UKI, GRUB, a kernel with an EFI stub). The signature is computed here (authenticode.py),
without a signing time, so that the same key and the same binary give the same signed bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Signer:
    key: Path  # RSA private key, PEM, unencrypted
    cert: Path  # its X.509 certificate, PEM

    def sign_pe(self, path: Path) -> None:
        """Add an Authenticode signature by this key to the PE image at `path` (in place)."""
        from linuxkit_py.sign.authenticode import sign_file

        sign_file(path, self)


def load_signer(key: Path | None, cert: Path | None) -> Signer | None:
    """The Signer of `--sign-key KEY --sign-cert CERT` (None when neither is given), checked now: both files
    are PEM, the key is an unencrypted RSA key and the certificate is its own. One-line UserError otherwise."""
    if key is None and cert is None:
        return None
    from linuxkit_py.sign.keys import check_key_pair

    check_key_pair(key, cert)
    assert key is not None and cert is not None
    return Signer(key, cert)
