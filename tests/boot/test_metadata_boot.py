"""pkg/metadata booted under TCG: the clouds' metadata, a config CD-ROM, hostile data (docs/metadata.md).

Every cloud is a small HTTP server of tests/boot/fakecloud.py on 127.0.0.1, which the guest reaches at
the cloud's real address (169.254.169.254:80, 169.254.42.42:80) through qemu's user network
(`--guestfwd`); the network is `--isolated`, so no probe of an absent provider leaves this machine.
Inside the guest everything is real: busybox wget/nc, jq, mount, the runtime, sshd.
Each image is built once for the module (one cache, seeded with the stored .debs).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from linuxkit_py.media.iso9660 import IsoImage
from linuxkit_py.run.image import kernel_image
from linuxkit_py.run.qemu import BootResult, QemuOptions, boot_image
from tests.boot.fakecloud import (
    NEXT_CLOUD,
    MetadataServer,
    aws_routes,
    digitalocean_routes,
    gcp_routes,
    hetzner_routes,
    openstack_routes,
    repeated,
    scaleway_routes,
    vultr_routes,
)
from tests.boot.test_qemu_runner import free_port
from tests.boot.test_specs import SPECS, Guest, package, ssh, ssh_until_it_answers, write_spec
from tests.debstore import stored_debs
from tests.integration.conftest import run_cli

METADATA_ADDRESS = "169.254.169.254:80"
SCALEWAY_ADDRESS = "169.254.42.42:80"
LINK_LOCAL = "169.254.0.0/16"  # the user network, so that the metadata addresses are on the guest's link
ABSENT_BOUND = 8.0  # seconds the metadata container may take when no provider answers (with runc's own)
# /run/config as "config: MODE PATH: first line" lines (directories end in /), then the hostname
DUMP = ("cd /run/config && find . | sort | while read -r f; do if [ -d \"$f\" ]; then "
        "echo \"config: $(stat -c %a \"$f\") $f/\"; "
        "else echo \"config: $(stat -c %a \"$f\") $f: $(head -n 1 \"$f\")\"; fi; done; echo \"hostname: $(hostname)\"")
POWEROFF = {"name": "poweroff", "image": package("poweroff"), "command": ["/poweroff.sh", "0"]}


# name -> (base spec, extra `build` arguments)
IMAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cloud": ("cloud.yml", ("-f", "gcp", "-f", "aws", "-f", "vhd")), "clouds": ("minimal.yml", ()),
    "nocloud": ("minimal.yml", ()),
    "hostile": ("minimal.yml", ()), "nocloud-arm64": ("minimal.yml", ("--arch", "arm64")),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """`images(name)`: the output prefix of one of this module's images, built on first use."""
    root = tmp_path_factory.mktemp("metadata")
    built: dict[str, Path] = {}
    with stored_debs(root / "cache") as cache:
        def get(name: str) -> Path:
            if name not in built:
                base, options = IMAGES[name]
                extra = EXTRA.get(name.removesuffix("-arm64"))
                specs = [SPECS / base, *([write_spec(root / f"{name}.yml", extra)] if extra else [])]
                result = run_cli("build", "--cache", cache, "--dir", root / "out", "--name", name, *options, *specs,
                                 env={"HOME": str(root)}, stdin=b"")
                assert result.returncode == 0, result.stderr.decode()
                built[name] = root / "out" / name
            return built[name]
        yield get


def metadata(*command: str, name: str = "metadata") -> dict[str, object]:
    return {"name": name, "image": package("metadata"), **({"command": ["/usr/bin/metadata", *command]} if command
                                                            else {})}


def dump(name: str = "dump") -> dict[str, object]:
    return {"name": name, "image": package("busybox"), "binds": ["/run/config:/run/config"],
            "command": ["/bin/sh", "-c", DUMP]}


PROVIDERS = ["aws", "openstack", "hetzner", "digitalocean", "vultr", "scaleway"]
# one metadata container going through the clouds: each provider, its /run/config, then the next cloud
CLOUD_TOUR = ("for p in " + " ".join(PROVIDERS) + "; do t0=$(cut -d' ' -f1 /proc/uptime); /usr/bin/metadata $p; "
              "echo \"took: $p $t0 $(cut -d' ' -f1 /proc/uptime)\"; " + DUMP.replace("config: ", "config: $p ")
              + f"; rm -rf /run/config/*; wget -q -O /dev/null http://169.254.169.254{NEXT_CLOUD}; done; "
              "printf 'from a file' >/tmp/ud; /usr/bin/metadata file=/tmp/ud; "
              + DUMP.replace("config: ", "config: file ") + "; /usr/bin/metadata nosuch; echo \"status: $?\"")
PLANT = ("mkdir -p /run/config /run/outside && ln -s /run/outside /run/config/link && "
         "ln -s /run/outside/escaped /run/config/evil-file && ln -s /run/outside /run/config/dirlink && echo planted")
EXTRA: dict[str, dict[str, object]] = {
    "clouds": {"onboot": [{**metadata(), "command": ["/bin/sh", "-c", CLOUD_TOUR]}, POWEROFF]},
    "nocloud": {"onboot": [metadata(), dump(), POWEROFF]},
    "hostile": {"onboot": [
        {"name": "plant", "image": package("busybox"), "binds": ["/run:/run"], "command": ["/bin/sh", "-c", PLANT]},
        metadata("aws", name="metadata-aws"), metadata("cdrom", name="metadata-cd"), dump(),
        {"name": "escape", "image": package("busybox"), "binds": ["/run:/run"],
         "command": ["/bin/sh", "-c", "echo \"outside: $(ls -A /run/outside | wc -l) entries\""]},
        POWEROFF]},
}


def config_lines(output: str, prefix: str = "dump: config: ") -> dict[str, str]:
    """{path: "MODE: first line" or "MODE/"} from the DUMP lines of the console."""
    found = {}
    for line in output.splitlines():
        if line.startswith(prefix):
            mode, _, rest = line[len(prefix):].partition(" ")
            path, sep, value = rest.partition(": ")
            found[path.removeprefix("./").rstrip("/") or "."] = f"{mode}: {value}" if sep else f"{mode}/"
    return found


def onboot_seconds(output: str, name: str) -> float:
    found = re.search(rf"^onboot {re.escape(name)}: done in ([0-9.]+)s$", output, re.MULTILINE)
    assert found, f"onboot {name} did not finish:\n{output[-4000:]}"
    return float(found.group(1))


def boot(prefix: Path, options: QemuOptions, timeout: float = 150) -> BootResult:
    image = kernel_image(Path(f"{prefix}-kernel"), Path(f"{prefix}-initrd.img"), Path(f"{prefix}-cmdline").read_text())
    result = boot_image(image, options, timeout=timeout)
    assert "reboot: Power down" in result.output, result.output[-4000:]
    return result


# -- cloud.yml built for GCP: ssh in with the key the cloud handed out ----------------------------------


@pytest.mark.boot
def test_cloud_yml_as_gcp_lets_root_in_with_the_clouds_key(images: Callable[[str], Path], tmp_path: Path,
                                                          record_property: Callable[[str, object], None]) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gcp@test", "-f", str(key)], check=True)
    public = key.with_suffix(".pub").read_text().strip()
    user_data = {"app": {"entries": {"settings": {"perm": "0600", "content": "mode=cloud\n"}}}}
    routes = gcp_routes(hostname=b"vm-1.c.project-x.internal", project_keys=f"root:{public}\n".encode(),
                        user_data=json.dumps(user_data).encode())
    # what GCP boots: the disk.raw of the gcp output's tar.gz
    with tarfile.open(f"{images('cloud')}.img.tar.gz") as archive, open(tmp_path / "disk.raw", "wb") as disk:
        member = archive.extractfile("disk.raw")
        assert member is not None
        shutil.copyfileobj(member, disk, 1 << 20)
    port = free_port()
    with MetadataServer(routes, required={"Metadata-Flavor": "Google"}) as gcp, \
            Guest(tmp_path / "disk.raw", "--publish", f"{port}:22", "--guestfwd", f"{METADATA_ADDRESS}={gcp.port}",
                  "--net", LINK_LOCAL, "--isolated") as guest:
        known_hosts = tmp_path / "known_hosts"
        assert ssh_until_it_answers(port, key, known_hosts, time.monotonic() + 150) == "ok\n"
        session = ssh(port, key, known_hosts, "hostname; cat /run/config/provider; echo; "
                      "stat -c '%a %n' /run/config/ssh/authorized_keys /run/config/app/settings; "
                      "cat /run/config/app/settings")
        guest.stop()
    assert session.stdout.splitlines() == [
        "vm-1.c.project-x.internal", "GCP", "600 /run/config/ssh/authorized_keys", "600 /run/config/app/settings",
        "mode=cloud"], session.stderr
    assert "metadata: GCP: Probe succeeded" in guest.console
    assert "metadata: Set hostname to: vm-1.c.project-x.internal" in guest.console
    # GCP's own address and Host name, and its header on every request
    assert {r.headers.get("host") for r in gcp.requests} >= {"metadata.google.internal"}
    assert "/computeMetadata/v1/project/attributes/ssh-keys" in gcp.paths()
    seconds = onboot_seconds(guest.console, "metadata")
    record_property("gcp_metadata_seconds", seconds)
    print(f"\nmetadata on GCP (onboot container, runc included): {seconds:.2f} s")


def keypair(directory: Path, comment: str) -> tuple[Path, str]:
    """A new ed25519 key in `directory`: (its private key file, its public key line)."""
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], check=True)
    return key, key.with_suffix(".pub").read_text().strip()


def ssh_into(disk: Path, key: Path, command: str, *run_args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Boot `disk` with `linuxkit-py run` (and `run_args`), log in as root with `key`, run `command`:
    (the session, the console)."""
    port = free_port()
    with Guest(disk, "--publish", f"{port}:22", *run_args) as guest:
        known_hosts = key.with_name("known_hosts")
        assert ssh_until_it_answers(port, key, known_hosts, time.monotonic() + 150) == "ok\n"
        session = ssh(port, key, known_hosts, command)
        guest.stop()
    return session, guest.console


@pytest.mark.boot
def test_cloud_yml_as_aws_lets_root_in_with_the_imdsv2_key(images: Callable[[str], Path], tmp_path: Path) -> None:
    """The aws output (cloud.raw) on an instance that requires IMDSv2: the key comes only from the token's GETs."""
    key, public = keypair(tmp_path, "aws@test")
    routes = aws_routes(hostname=b"ip-10-0-0-9.ec2.internal", user_data=b"#cloud-config\n", key=public.encode(),
                        token="AQAEAsshTestToken==")
    with MetadataServer(routes) as aws:
        session, console = ssh_into(Path(f"{images('cloud')}.raw"), key,
                                    "hostname; cat /run/config/provider; echo; "
                                    "stat -c '%a %n' /run/config/ssh/authorized_keys; cat /run/config/instance_id",
                                    "--guestfwd", f"{METADATA_ADDRESS}={aws.port}", "--net", LINK_LOCAL, "--isolated")
    assert session.stdout.splitlines() == [
        "ip-10-0-0-9.ec2.internal", "AWS", "600 /run/config/ssh/authorized_keys", "i-0123456789abcdef0"], session.stderr
    assert "metadata: AWS: Probe succeeded" in console
    assert "metadata: Set hostname to: ip-10-0-0-9.ec2.internal" in console
    assert ("PUT", "/latest/api/token") in [(r.method, r.path) for r in aws.requests]
    assert all(r.headers.get("x-aws-ec2-metadata-token") == "AQAEAsshTestToken=="
               for r in aws.requests if r.method == "GET" and r.path.startswith("/latest/"))


@pytest.mark.boot
def test_cloud_yml_with_run_data_file_lets_root_in_with_the_cds_key(images: Callable[[str], Path],
                                                                     tmp_path: Path) -> None:
    """No cloud answering: the key and the host name come from the config CD `run --data-file` attaches."""
    key, public = keypair(tmp_path, "cd@test")
    data = tmp_path / "user-data.json"
    data.write_text(json.dumps({"ssh": {"entries": {"authorized_keys": {"perm": "0600", "content": public + "\n"}}},
                                "hostname": {"content": "cd-host"}}))
    session, console = ssh_into(Path(f"{images('cloud')}.raw"), key, "hostname; cat /run/config/provider; echo; "
                                "stat -c '%a %n' /run/config/ssh/authorized_keys",
                                "--data-file", str(data), "--net", LINK_LOCAL, "--isolated")
    assert session.stdout.splitlines() == [
        "cd-host", "CDROM /dev/sr0", "600 /run/config/ssh/authorized_keys"], session.stderr
    assert "metadata: Set hostname to: cd-host" in console
    assert onboot_seconds(console, "metadata") < ABSENT_BOUND


@pytest.mark.boot
def test_cloud_yml_as_vhd_is_what_azure_takes(images: Callable[[str], Path]) -> None:
    """Azure: a fixed VHD (disk type 2) whose virtual size is a whole number of MiB, the footer after it."""
    vhd = Path(f"{images('cloud')}.vhd").read_bytes()
    footer = vhd[-512:]
    size = int.from_bytes(footer[48:56], "big")  # current size (VHD spec: Hard Disk Footer Format)
    assert footer[:8] == b"conectix" and int.from_bytes(footer[60:64], "big") == 2
    assert size % (1 << 20) == 0 and len(vhd) == size + 512


# -- the other clouds, one boot -----------------------------------------------------------------------


@pytest.mark.boot
def test_each_cloud_writes_linuxkits_files(images: Callable[[str], Path],
                                          record_property: Callable[[str, object], None]) -> None:
    aws = aws_routes(hostname=b"ip-10-0-0-5.ec2.internal", user_data=b'{"a":{"entries":{"b":{"content":"c"}}}}',
                     key=b"ssh-ed25519 AAAAaws aws@key", token="AQAEAImdsV2token==")
    clouds = [openstack_routes(), hetzner_routes(), digitalocean_routes(), vultr_routes(), {}]
    with MetadataServer(aws, clouds=clouds) as server, MetadataServer(scaleway_routes()) as scaleway:
        options = QemuOptions(accel="tcg", net=LINK_LOCAL, isolated=True,
                              guestfwd={METADATA_ADDRESS: server.port, SCALEWAY_ADDRESS: scaleway.port})
        result = boot(images("clouds"), options)
    out = result.output
    seen = {p: config_lines(out, f"metadata: config: {p} ") for p in PROVIDERS}
    assert seen["aws"] == {
        ".": "755/", "a": "755/", "a/b": "644: c", "availability_zone": "644: eu-west-1b",
        "hostname": "644: ip-10-0-0-5.ec2.internal", "instance_id": "644: i-0123456789abcdef0",
        "instance_type": "644: t3.micro", "local_hostname": "644: ip-172-31-5-9.internal",
        "local_ipv4": "644: 172.31.5.9", "provider": "644: AWS", "public_ipv4": "644: 203.0.113.7",
        "ssh": "755/", "ssh/authorized_keys": "600: ssh-ed25519 AAAAaws aws@key",
        "userdata": '644: {"a":{"entries":{"b":{"content":"c"}}}}'}, out[-5000:]
    # IMDSv2: a token first, then every GET carried it (the server answers 401 without)
    aws_requests = [r for r in server.requests if r.path.startswith("/latest/")][:3]
    assert [(r.method, r.path) for r in aws_requests[:2]] == [("PUT", "/latest/api/token"),
                                                               ("GET", "/latest/meta-data/hostname")]
    assert aws_requests[1].headers["x-aws-ec2-metadata-token"] == "AQAEAImdsV2token=="
    assert seen["openstack"]["provider"] == "644: openstack"
    assert seen["openstack"]["instance_id"] == "644: i-00000042"
    assert seen["openstack"]["userdata"] == "644: #!/bin/sh"
    assert seen["hetzner"]["provider"] == "644: Hetzner"
    assert seen["hetzner"]["ssh/authorized_keys"] == "600: ssh-ed25519 AAAAhetzner1 a@b"
    assert {k: seen["hetzner"][k] for k in ("instance_id", "public_ipv4", "local_ipv4", "hostname")} == {
        "instance_id": "644: 4242", "public_ipv4": "644: 198.51.100.4", "local_ipv4": "644: 10.0.0.2",
        "hostname": "644: hetzner-1"}
    assert {k: seen["digitalocean"][k] for k in ("provider", "public_ipv4", "private_ipv4", "region", "id",
                                                 "userdata", "ssh/authorized_keys")} == {
        "provider": "644: DigitalOcean", "public_ipv4": "644: 192.0.2.10", "private_ipv4": "644: 10.130.0.2",
        "region": "644: ams3", "id": "644: 123456", "userdata": "644: do user-data",
        "ssh/authorized_keys": "600: ssh-ed25519 AAAAdo do@key"}
    assert {k: seen["vultr"][k] for k in ("provider", "public_ipv4", "private_ipv4", "private_netmask",
                                          "region_code", "instance_id")} == {
        "provider": "644: Vultr", "public_ipv4": "644: 192.0.2.20", "private_ipv4": "644: 10.1.96.3",
        "private_netmask": "644: 255.255.240.0", "region_code": "644: AMS", "instance_id": "644: a1b2c3"}
    assert "userdata" not in seen["vultr"]  # LinuxKit reads none on Vultr
    assert seen["openstack"]["ssh/authorized_keys"] == "600: ssh-ed25519 AAAAopenstack os@key"
    assert seen["vultr"]["ssh/authorized_keys"] == "600: ssh-ed25519 AAAAvultr v@key"
    # each provider's host name was set (the kernel's, as `hostname` in the container prints it), not only written
    assert [line for line in out.splitlines() if line.startswith("metadata: hostname: ")] == [
        f"metadata: hostname: {name}" for name in ("ip-10-0-0-5.ec2.internal", "os-vm.novalocal", "hetzner-1",
                                                   "droplet-1", "vultr-1", "scw-1", "scw-1")]
    assert [line for line in out.splitlines() if line.startswith("metadata: Set hostname to: ")] == [
        f"metadata: Set hostname to: {name}" for name in ("ip-10-0-0-5.ec2.internal", "os-vm.novalocal",
                                                          "hetzner-1", "droplet-1", "vultr-1", "scw-1")]
    assert {k: seen["scaleway"][k] for k in ("provider", "hostname", "instance_id", "instance_location",
                                             "public_ip", "private_ip", "ssh/authorized_keys", "userdata")} == {
        "provider": "644: Scaleway", "hostname": "644: scw-1", "instance_id": "644: 11111111-2222",
        "instance_location": "644: fr-par-1", "public_ip": "644: 51.15.0.1", "private_ip": "644: 10.68.0.5",
        "ssh/authorized_keys": "600: ssh-ed25519 AAAAscw s@key", "userdata": "644: scaleway user-data"}
    assert config_lines(out, "metadata: config: file ")["userdata"] == "644: from a file"
    assert config_lines(out, "metadata: config: file ")["provider"] == "644: /tmp/ud"
    assert "metadata: Unrecognised metadata provider: nosuch" in out and "metadata: status: 1" in out
    took = {line.split()[2]: float(line.split()[4]) - float(line.split()[3])
            for line in out.splitlines() if line.startswith("metadata: took: ")}
    assert set(took) == set(PROVIDERS)
    record_property("metadata_seconds_by_provider", took)
    print(f"\nmetadata run per provider (s): {took}")


# -- run --data-file: JSON user-data from a config CD-ROM, no cloud answering --------------------------


@pytest.mark.boot
def test_run_data_file_expands_json_user_data_and_absent_clouds_cost_little(
        images: Callable[[str], Path], tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    user_data = {
        "ssh": {"entries": {"sshd_config": {"perm": "0600", "content": "PermitRootLogin yes\n"}}},
        "foo": {"perm": "0750", "entries": {"bar": {"content": "foobar"}, "baz": {"perm": "0400", "content": "bar"},
                                            "deep": {"entries": {"x": {"content": "y\n"}}}}},
        "hostname": {"content": "from-the-cd"},
    }
    data = tmp_path / "user-data.json"
    data.write_text(json.dumps(user_data))
    prefix = images("nocloud")
    result = subprocess.run([sys.executable, "-m", "linuxkit_py", "run", str(prefix), "-accel", "tcg",
                             "-data-file", str(data), "--net", LINK_LOCAL, "--isolated", "--timeout", "150"],
                            capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    out = result.stdout.replace("\r\n", "\n")
    assert config_lines(out) == {
        ".": "755/", "foo": "750/", "foo/bar": "644: foobar", "foo/baz": "400: bar", "foo/deep": "755/",
        "foo/deep/x": "644: y", "hostname": "644: from-the-cd", "provider": "644: CDROM /dev/sr0",
        "ssh": "755/", "ssh/sshd_config": "600: PermitRootLogin yes", "userdata": f"644: {json.dumps(user_data)}"}
    assert "dump: hostname: from-the-cd" in out
    assert "metadata: Trying CDROM /dev/sr0" in out
    # the ISO `run` attached is LinuxKit's data.iso, in the state directory
    assert (prefix.parent / f"{prefix.name}-state" / "data.iso").is_file()
    seconds = onboot_seconds(out, "metadata")
    record_property("metadata_seconds_no_cloud", seconds)
    print(f"\nmetadata with no cloud answering (then the CD): {seconds:.2f} s")
    assert seconds < ABSENT_BOUND


@pytest.mark.boot
def test_arm64_reads_the_config_cd_too(images: Callable[[str], Path]) -> None:
    """arm64's virt machine has no IDE: `run` attaches the CD on virtio-scsi, the kernel's sr driver reads it."""
    result = subprocess.run([sys.executable, "-m", "linuxkit_py", "run", str(images("nocloud-arm64")), "--accel", "tcg",
                             "--data", '{"foo": {"entries": {"bar": {"content": "arm64"}}}}', "--networking", "none",
                             "--timeout", "200"], capture_output=True, text=True, timeout=250)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    assert config_lines(result.stdout.replace("\r\n", "\n"))["foo/bar"] == "644: arm64"


# -- hostile metadata: refused or contained, the boot goes on ------------------------------------------


HOSTILE_JSON = {
    "../../etc": {"entries": {"passwd": {"content": "root::0:0::/:/bin/sh\n"}}},
    "a/b": {"content": "slash"},
    "..": {"content": "dotdot"},
    "bell\u0007": {"content": "control"},
    "link": {"entries": {"x": {"content": "through the planted symlink"}}},
    "evil-file": {"content": "over the planted symlink"},
    "dirlink": {"content": "over a symlink to a directory"},
    "setuid": {"perm": "4755", "content": "#!/bin/sh\n"},
    "number": {"content": 5},
    "ok": {"perm": "0750", "entries": {"fine": {"content": "kept"}, "../up": {"content": "no"}}},
}


def hostile_cd(path: Path) -> Path:
    """A config CD whose NoCloud user-data is a symlink (to the container's /etc/passwd) and whose
    LinuxKit `config` is the hostile JSON; NoCloud's meta-data names the host."""
    with IsoImage(volume_id="cidata", epoch=0, seed=b"hostile") as iso:
        iso.add_symlink("user-data", "/etc/passwd")
        iso.add_file("meta-data", b"instance-id: iid-local01\nlocal-hostname: nocloud-host\n")
        iso.add_file("config", json.dumps(HOSTILE_JSON).encode())
        with open(path, "wb") as out:
            iso.write(out)
    return path


@pytest.mark.boot
def test_hostile_metadata_is_refused_with_a_line_and_the_boot_goes_on(images: Callable[[str], Path],
                                                                      tmp_path: Path) -> None:
    hostname = b"evil\x1b]0;owned\x07\nname"
    routes = aws_routes(hostname=hostname, key=None, token=None,
                        user_data=b"")  # replaced below by 100 MB
    routes["GET /latest/user-data"] = (200, repeated(b"A" * 65536, 100 << 20))
    with MetadataServer(routes) as server:
        options = QemuOptions(accel="tcg", net=LINK_LOCAL, isolated=True, guestfwd={METADATA_ADDRESS: server.port},
                              cdroms=[hostile_cd(tmp_path / "hostile.iso")])
        result = boot(images("hostile"), options)
    out = result.output
    lines = out.splitlines()
    # the AWS stand-in has no IMDSv2 (404 to the PUT): plain GETs
    assert ("PUT", "/latest/api/token") in [(r.method, r.path) for r in server.requests]
    assert "metadata-aws: AWS: Probe succeeded" in lines
    assert "metadata-aws: http://169.254.169.254/latest/user-data: more than 4194304 bytes: refused" in lines
    assert 'metadata-aws: hostname "evil\\u001b]0;owned\\u0007\\nname": not a host name: refused' in lines
    assert "metadata-cd: CDROM /dev/sr0: user-data is not a regular file: refused" in lines
    for refused in ('"../../etc": not a plain file name', '"a/b": not a plain file name',
                    '"..": not a plain file name', '"bell\\u0007": not a plain file name',
                    '"link": is a symbolic link', '"link/x": a symbolic link or a file is on the way',
                    '"setuid": perm must be octal, at most 0777', '"number": content is not a string',
                    '"ok/../up": not a plain file name'):
        assert f"metadata-cd: user-data: {refused}: refused" in lines, out[-5000:]
    config = config_lines(out)
    assert config["ok/fine"] == "644: kept" and config["ok"] == "750/"
    assert config["provider"] == "644: CDROM /dev/sr0"
    assert config["userdata"].startswith('644: {"../../etc"')
    # the planted file symlink was replaced, not followed; nothing reached /run/outside
    assert config["evil-file"] == "644: over the planted symlink"
    assert config["dirlink"] == "644: over a symlink to a directory"
    assert "escape: outside: 0 entries" in lines, out[-3000:]
    # the refused host name was neither set nor kept; NoCloud's meta-data named one
    assert not [line for line in lines if line.startswith("metadata-aws: Set hostname")]
    assert "metadata-cd: Set hostname to: nocloud-host" in lines
    assert config["hostname"] == "644: nocloud-host" and "dump: hostname: nocloud-host" in lines
    assert "onboot poweroff" in out or "reboot: Power down" in out
