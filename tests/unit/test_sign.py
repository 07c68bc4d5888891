"""Secure Boot signing (linuxkit_py/sign): Authenticode signatures that sbverify accepts, that hash the image
exactly as sbsign does, and that are the same bytes every time; the key checks; `keys create`.

Booting signed images under OVMF with Secure Boot enforced is tests/boot/test_secure_boot.py.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from linuxkit_py.errors import UserError
from linuxkit_py.sign import Signer, der, load_signer
from linuxkit_py.sign import keys as keys_module
from linuxkit_py.sign.authenticode import image_digest, indirect_data
from linuxkit_py.sign.keys import EFI_CERT_X509, create_keys
from linuxkit_py.sign.pe import read_pe

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")  # systemd-boot-efi: an unsigned PE32+ image
SNAKEOIL_KEY = Path("/usr/share/ovmf/PkKek-1-snakeoil.key")  # encrypted (passphrase "snakeoil")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys") / "set"
    create_keys(directory, "test")
    return directory


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys") / "other"
    create_keys(directory, "other")
    return directory


def _signer(directory: Path) -> Signer:
    return Signer(directory / "db.key", directory / "db.crt")


def _stub(tmp_path: Path, name: str = "stub.efi") -> Path:
    copy = tmp_path / name
    shutil.copyfile(STUB, copy)
    return copy


def _sbverify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sbverify", *map(str, args)], capture_output=True, text=True)


def test_signature_verifies_with_the_certificate_and_not_with_another(keys: Path, other_keys: Path,
                                                                      tmp_path: Path) -> None:
    image = _stub(tmp_path)
    _signer(keys).sign_pe(image)
    assert "Signature verification OK" in _sbverify("--cert", keys / "db.crt", image).stdout
    assert _sbverify("--cert", other_keys / "db.crt", image).returncode != 0
    assert read_pe(image).size % 8 == 0


def test_image_hash_and_its_encoding_are_those_sbsign_signs(keys: Path, tmp_path: Path) -> None:
    ours, theirs = _stub(tmp_path, "ours.efi"), _stub(tmp_path, "theirs.efi")
    _signer(keys).sign_pe(ours)
    subprocess.run(["sbsign", "--key", str(keys / "db.key"), "--cert", str(keys / "db.crt"), "--output",
                    str(theirs), str(STUB)], check=True, capture_output=True)
    content = indirect_data(image_digest(ours))
    assert content in theirs.read_bytes()  # sbsign's SpcIndirectDataContent: the same digest, the same DER
    assert image_digest(ours) == image_digest(theirs)


def test_the_same_key_and_binary_give_the_same_signed_bytes(keys: Path, other_keys: Path, tmp_path: Path) -> None:
    first, second, third = (_stub(tmp_path, f"{n}.efi") for n in ("first", "second", "third"))
    _signer(keys).sign_pe(first)
    _signer(keys).sign_pe(second)
    _signer(other_keys).sign_pe(third)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != third.read_bytes()


def test_a_signed_binary_gets_one_more_signature(keys: Path, other_keys: Path, tmp_path: Path) -> None:
    """Debian's kernels are signed by Debian: ours is added, the first one stays."""
    image = _stub(tmp_path)
    _signer(other_keys).sign_pe(image)
    _signer(keys).sign_pe(image)
    listing = _sbverify("--list", image).stdout
    assert "signature 1" in listing and "signature 2" in listing
    assert "CN=other db" in listing and "CN=test db" in listing
    for directory in (keys, other_keys):
        assert _sbverify("--cert", directory / "db.crt", image).returncode == 0


def test_a_file_that_is_not_a_pe_image_is_refused(keys: Path, tmp_path: Path) -> None:
    path = tmp_path / "kernel"
    path.write_bytes(b"\x7fELF" + bytes(200))
    with pytest.raises(UserError, match=r"^cannot sign kernel: not a PE image"):
        _signer(keys).sign_pe(path)
    assert path.read_bytes() == b"\x7fELF" + bytes(200)


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def test_key_problems_are_one_line_each(keys: Path, other_keys: Path, tmp_path: Path) -> None:
    cert = keys / "db.crt"
    cases = {
        "needs --sign-cert too": (keys / "db.key", None),
        "needs --sign-key too": (None, cert),
        "the key is encrypted": (SNAKEOIL_KEY, cert),
        "RSA signatures only": (_write_key(tmp_path / "ec.key", ec.generate_private_key(ec.SECP256R1())), cert),
        "RSA 1024 bits": (_write_key(tmp_path / "small.key", rsa.generate_private_key(65537, 1024)), cert),
        "is not the certificate of": (other_keys / "db.key", cert),
        "No such file": (tmp_path / "missing.key", cert),
        "not an X.509 certificate": (keys / "db.key", keys / "db.esl"),
    }
    for message, (key, certificate) in cases.items():
        with pytest.raises(UserError, match=message) as info:
            load_signer(key, certificate)
        assert "\n" not in str(info.value)
    assert load_signer(None, None) is None


# -- keys create ------------------------------------------------------------------------------------------


def test_keys_create_writes_a_chain_of_three_with_private_keys_private(keys: Path) -> None:
    certs = {role: x509.load_pem_x509_certificate((keys / f"{role}.crt").read_bytes()) for role in ("PK", "KEK", "db")}
    assert certs["PK"].issuer == certs["PK"].subject
    assert certs["KEK"].issuer == certs["PK"].subject
    assert certs["db"].issuer == certs["KEK"].subject
    for role in ("PK", "KEK", "db"):
        assert (keys / f"{role}.key").stat().st_mode & 0o777 == 0o600
        key = serialization.load_pem_private_key((keys / f"{role}.key").read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    uuid.UUID((keys / "GUID").read_text().strip())


def test_signature_lists_hold_the_certificates(keys: Path) -> None:
    owner = uuid.UUID((keys / "GUID").read_text().strip())
    for role in ("PK", "KEK", "db"):
        esl = (keys / f"{role}.esl").read_bytes()
        cert = x509.load_pem_x509_certificate((keys / f"{role}.crt").read_bytes()).public_bytes(
            serialization.Encoding.DER)
        list_size, header_size, signature_size = struct.unpack_from("<III", esl, 16)
        assert esl[:16] == EFI_CERT_X509.bytes_le
        assert (list_size, header_size, signature_size) == (len(esl), 0, 16 + len(cert))
        assert esl[28:44] == owner.bytes_le and esl[44:] == cert


@pytest.mark.parametrize(("role", "parent"), [("PK", "PK"), ("KEK", "PK"), ("db", "KEK")])
def test_auth_files_are_signed_by_the_parent_key(keys: Path, tmp_path: Path, role: str, parent: str) -> None:
    """What firmware checks before it sets the variable: the PKCS #7 over name, GUID, attributes, time and
    list verifies with the parent's certificate (openssl cms, on the SignedData wrapped back in a ContentInfo)."""
    auth = (keys / f"{role}.auth").read_bytes()
    esl = (keys / f"{role}.esl").read_bytes()
    (length,) = struct.unpack_from("<I", auth, 16)
    assert auth[16 + length:] == esl
    signed_data = auth[16 + 8 + 16:16 + length]
    content_info = der.sequence(der.oid("1.2.840.113549.1.7.2"), der.explicit(0, signed_data))
    (tmp_path / "sig.der").write_bytes(content_info)
    vendor = keys_module.VENDOR[role]
    (tmp_path / "data").write_bytes(role.encode("utf-16-le") + vendor.bytes_le + struct.pack("<I", 0x27)
                                    + auth[:16] + esl)
    verify = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
                             "-content", str(tmp_path / "data"), "-certfile", str(keys / f"{parent}.crt"),
                             "-CAfile", str(keys / "PK.crt"), "-purpose", "any", "-out", "/dev/null"],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


def test_variable_stores_have_only_our_keys_and_secure_boot_on(keys: Path) -> None:
    snakeoil = x509.load_pem_x509_certificate(Path("/usr/share/ovmf/PkKek-1-snakeoil.pem").read_bytes())
    db = x509.load_pem_x509_certificate((keys / "db.crt").read_bytes())
    for name in ("OVMF_VARS_4M.fd", "AAVMF_VARS.fd"):
        store = (keys / name).read_bytes()
        assert db.public_bytes(serialization.Encoding.DER) in store, name
        assert snakeoil.public_bytes(serialization.Encoding.DER) not in store, name
        script = "import sys; from virt.firmware.vars import main; sys.argv[0] = 'x'; sys.exit(main())"
        listing = subprocess.run([sys.executable, "-c", script, "-i", str(keys / name), "-p"], capture_output=True,
                                 text=True, check=True).stdout
        assert "SecureBootEnable    : bool: ON" in listing, listing


def test_keys_create_never_overwrites_and_leaves_nothing_when_it_fails(keys: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    before = {path.name: path.read_bytes() for path in keys.iterdir()}
    with pytest.raises(UserError, match=r"PK.key exists: keys create never overwrites keys"):
        create_keys(keys)
    assert {path.name: path.read_bytes() for path in keys.iterdir()} == before

    broken = tmp_path / "broken.fd"
    broken.write_bytes(b"not a variable store")
    monkeypatch.setattr(keys_module, "VARS_TEMPLATES", ((broken, "OVMF_VARS_4M.fd", ()),))  # fault injection
    target = tmp_path / "new"
    with pytest.raises(UserError, match=r"^enrolling the keys into OVMF_VARS_4M.fd failed"):
        create_keys(target)
    assert list(target.iterdir()) == []
