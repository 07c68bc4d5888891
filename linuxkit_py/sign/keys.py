"""Signing keys: checking the pair a build is given, and `linuxkit-py keys create` (see docs/trust.md)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from linuxkit_py.errors import UserError

MIN_RSA_BITS = 2048


def read_key(path: Path) -> rsa.RSAPrivateKey:
    """The unencrypted RSA private key in the PEM file `path`."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"--sign-key {path}: {e.strerror or e}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UserError(f"--sign-key {path}: the key is encrypted",
                        hint=f"decrypt it first: openssl pkey -in {path} -out plain.key") from None
    except ValueError:
        raise UserError(f"--sign-key {path}: not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UserError(f"--sign-key {path}: a {type(key).__name__.removeprefix('_')} key; UEFI firmware verifies "
                        "RSA signatures only", hint="make an RSA key: linuxkit-py keys create DIR")
    if key.key_size < MIN_RSA_BITS:
        raise UserError(f"--sign-key {path}: RSA {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
    return key


def read_cert(path: Path) -> x509.Certificate:
    """The X.509 certificate in the PEM (or DER) file `path`."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"--sign-cert {path}: {e.strerror or e}") from None
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise UserError(f"--sign-cert {path}: not an X.509 certificate (PEM or DER)") from None


def check_key_pair(key: Path | None, cert: Path | None) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """Both given, readable, and the certificate is the key's own."""
    if key is None or cert is None:
        given, missing = ("--sign-key", "--sign-cert") if key is not None else ("--sign-cert", "--sign-key")
        raise UserError(f"{given} needs {missing} too", hint="sign with a key and its certificate")
    private = read_key(key)
    certificate = read_cert(cert)
    public = certificate.public_key()
    if not isinstance(public, rsa.RSAPublicKey) or public.public_numbers() != private.public_key().public_numbers():
        raise UserError(f"--sign-cert {cert} is not the certificate of --sign-key {key}")
    return private, certificate
