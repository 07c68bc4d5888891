"""Signing keys: checking the pair a build is given, and `linuxkit-py keys create` (see docs/trust.md)."""

from __future__ import annotations

import datetime
import os
import struct
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from linuxkit_py.errors import UserError
from linuxkit_py.sign import der

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


# -- keys create ------------------------------------------------------------------------------------------

# UEFI 2.10: the variables' vendor GUIDs, the X.509 signature type, the PKCS #7 certificate type.
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")  # PK, KEK
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")  # db
EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_TYPE_PKCS7 = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
WIN_CERT_TYPE_EFI_GUID = 0x0EF1
WIN_CERT_REVISION = 0x0200
# NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS
AUTH_ATTRIBUTES = 0x27
KEY_BITS = 2048  # what every UEFI firmware verifies
VALID_DAYS = 3650
# The keys in the order they sign each other: PK signs itself and KEK, KEK signs db.
ROLES = ("PK", "KEK", "db")
PARENT = {"PK": "PK", "KEK": "PK", "db": "KEK"}
VENDOR = {"PK": EFI_GLOBAL_VARIABLE, "KEK": EFI_GLOBAL_VARIABLE, "db": EFI_IMAGE_SECURITY_DATABASE}
# Variable stores keys create enrols the keys into, when the firmware package is installed: (template,
# output name, variables deleted first), Secure Boot on, no Microsoft keys. OVMF (amd64) from its blank
# store; AAVMF (arm64) from Debian's snakeoil one (its blank AAVMF_VARS.fd is all zeros, formatted by the
# firmware at first boot), whose snakeoil keys are deleted.
VARS_TEMPLATES = ((Path("/usr/share/OVMF/OVMF_VARS_4M.fd"), "OVMF_VARS_4M.fd", ()),
                  (Path("/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd"), "AAVMF_VARS.fd", ("PK", "KEK", "db")))


@dataclass(frozen=True)
class KeySet:
    directory: Path
    owner: uuid.UUID  # the SignatureOwner of every entry
    written: list[Path]


def signature_list(cert_der: bytes, owner: uuid.UUID) -> bytes:
    """An EFI_SIGNATURE_LIST with one X.509 certificate."""
    data = owner.bytes_le + cert_der
    header = struct.pack("<III", 28 + len(data), 0, len(data))
    return EFI_CERT_X509.bytes_le + header + data


def efi_time(when: datetime.datetime) -> bytes:
    """EFI_TIME (UTC, no nanoseconds, timezone and daylight fields zero)."""
    return struct.pack("<HBBBBBBIhBB", when.year, when.month, when.day, when.hour, when.minute, when.second,
                       0, 0, 0, 0, 0)


def _signed_data(content_info: bytes) -> bytes:
    """The SignedData inside a PKCS #7 ContentInfo (UEFI's authenticated variables carry it bare)."""
    body = der.content(content_info)  # OID, then [0] { SignedData }
    oid_length = 2 + body[1]
    return der.content(body[oid_length:])


def auth_file(role: str, esl: bytes, signer_key: rsa.RSAPrivateKey, signer_cert: x509.Certificate,
              when: datetime.datetime) -> bytes:
    """EFI_VARIABLE_AUTHENTICATION_2 + the list: what SetVariable (efi-updatevar, systemd-boot's
    secure-boot-enroll, firmware setup menus) takes to set variable `role` to `esl`."""
    timestamp = efi_time(when)
    signed = (role.encode("utf-16-le") + VENDOR[role].bytes_le + struct.pack("<I", AUTH_ATTRIBUTES)
              + timestamp + esl)
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoAttributes]
    content_info = (pkcs7.PKCS7SignatureBuilder().set_data(signed)
                    .add_signer(signer_cert, signer_key, hashes.SHA256())
                    .sign(serialization.Encoding.DER, options))
    cert_data = _signed_data(content_info)
    header = struct.pack("<IHH", 8 + 16 + len(cert_data), WIN_CERT_REVISION, WIN_CERT_TYPE_EFI_GUID)
    return timestamp + header + EFI_CERT_TYPE_PKCS7.bytes_le + cert_data + esl


def _certificate(name: str, key: rsa.RSAPrivateKey, issuer_name: x509.Name | None,
                 issuer_key: rsa.RSAPrivateKey | None, when: datetime.datetime, days: int) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer_name or subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(when - datetime.timedelta(days=1))
               .not_valid_after(when + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def create_keys(directory: Path, common_name: str = "linuxkit-py", days: int = VALID_DAYS) -> KeySet:
    """A new PK/KEK/db set in `directory` (created; keys already there are never overwritten): for each
    NAME.key (0600), NAME.crt (PEM), NAME.esl and NAME.auth; GUID (the owner); and the OVMF/AAVMF
    variable stores with the three enrolled and Secure Boot on, for the firmware packages installed.
    Everything is made in a temporary directory first: a failure leaves `directory` as it was."""
    names = [f"{role}.{ext}" for role in ROLES for ext in ("key", "crt", "esl", "auth")]
    names += ["GUID", *(name for template, name, _ in VARS_TEMPLATES if template.is_file())]
    taken = [directory / name for name in names if (directory / name).exists()]
    if taken:
        raise UserError(f"{taken[0]} exists: keys create never overwrites keys",
                        hint="give a new directory, or move the old keys away first")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {directory}: {e.strerror or e}") from None
    owner = uuid.uuid4()
    with tempfile.TemporaryDirectory(prefix=".keys-", dir=directory) as tmp:
        work = Path(tmp)
        _create_keys(work, owner, common_name, days)
        written = []
        for name in names:
            os.link(work / name, directory / name)  # fails rather than replace a file that appeared meanwhile
            written.append(directory / name)
    return KeySet(directory, owner, written)


def _create_keys(work: Path, owner: uuid.UUID, common_name: str, days: int) -> None:
    when = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    keys: dict[str, rsa.RSAPrivateKey] = {}
    certs: dict[str, x509.Certificate] = {}
    for role in ROLES:
        keys[role] = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        parent = PARENT[role]
        issuer = None if parent == role else certs[parent]
        certs[role] = _certificate(f"{common_name} {role}", keys[role], issuer.subject if issuer else None,
                                   keys[parent] if issuer else None, when, days)
    for role in ROLES:
        key_pem = keys[role].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
        esl = signature_list(certs[role].public_bytes(serialization.Encoding.DER), owner)
        parent = PARENT[role]
        _write(work / f"{role}.key", key_pem, 0o600)
        _write(work / f"{role}.crt", certs[role].public_bytes(serialization.Encoding.PEM))
        _write(work / f"{role}.esl", esl)
        _write(work / f"{role}.auth", auth_file(role, esl, keys[parent], certs[parent], when))
    _write(work / "GUID", f"{owner}\n".encode())
    for template, name, deletes in VARS_TEMPLATES:
        if template.is_file():
            enrol(template, work / name, work, owner, deletes)


def enrol(template: Path, out: Path, directory: Path, owner: uuid.UUID, deletes: tuple[str, ...] = ()) -> Path:
    """A copy of the variable store `template` with PK, KEK and db of `directory` enrolled (after deleting
    the variables `deletes`) and Secure Boot on (virt-firmware's virt-fw-vars, no Microsoft keys)."""
    script = "import sys; from virt.firmware.vars import main; sys.argv[0] = 'virt-fw-vars'; sys.exit(main())"
    argv = [sys.executable, "-c", script, "--input", str(template), "--output", str(out),
            *(arg for name in deletes for arg in ("--delete", name)),
            "--set-pk", str(owner), str(directory / "PK.crt"), "--add-kek", str(owner), str(directory / "KEK.crt"),
            "--add-db", str(owner), str(directory / "db.crt"), "--no-microsoft", "--secure-boot",
            "--loglevel", "warning"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.is_file():
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(f"enrolling the keys into {out.name} failed" + (f": {lines[-1]}" if lines else ""))
    return out
