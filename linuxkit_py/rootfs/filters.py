"""LinuxKit's filtering of image contents: files dropped, replaced and made sure to exist.

Every image written into the root filesystem (init images, volumes, container bundles)
goes through `filter_image`, so a container always finds /dev, /proc, /sys mount points,
a localhost /etc/hosts and a placeholder /etc/resolv.conf (or, for init images and
volumes, a symlink to the resolv.conf that DHCP writes under /run).
"""

from __future__ import annotations

from linuxkit_py.archive.entry import Entry, Kind

EXCLUDED = frozenset({".dockerenv", "Dockerfile", "dev/console", "dev/pts", "dev/shm", "etc/hostname"})

HOSTS = (
    b"127.0.0.1       localhost\n"
    b"::1     localhost ip6-localhost ip6-loopback\n"
    b"fe00::0 ip6-localnet\n"
    b"ff00::0 ip6-mcastprefix\n"
    b"ff02::1 ip6-allnodes\n"
    b"ff02::2 ip6-allrouters\n"
)
NO_RESOLV = b"\n# no resolv.conf configured\n"
RESOLV_SYMLINK = "/run/resolvconf/resolv.conf"

# (path, kind, mode, symlink target) in the order they are added when missing.
ENSURED: tuple[tuple[str, Kind, int, str], ...] = (
    ("dev", Kind.DIR, 0o755, ""),
    ("dev/pts", Kind.DIR, 0o755, ""),
    ("dev/shm", Kind.DIR, 0o755, ""),
    ("etc", Kind.DIR, 0o755, ""),
    ("etc/hosts", Kind.FILE, 0o644, ""),
    ("etc/mtab", Kind.SYMLINK, 0o755, "/proc/mounts"),
    ("etc/resolv.conf", Kind.FILE, 0o644, ""),
    ("proc", Kind.DIR, 0o755, ""),
    ("sys", Kind.DIR, 0o755, ""),
)


def _replacement(entry: Entry, resolv_symlink: str | None) -> Entry:
    if entry.path == "etc/resolv.conf" and resolv_symlink:
        return entry.evolve(kind=Kind.SYMLINK, linkname=resolv_symlink, size=0, data=None)
    content = HOSTS if entry.path == "etc/hosts" else NO_RESOLV
    mode = entry.mode if entry.kind == Kind.FILE else 0o644
    return entry.evolve(kind=Kind.FILE, mode=mode, linkname="", size=len(content), data=content)


def filter_image(entries: list[Entry], source: str, location: str, resolv_symlink: str | None,
                 prefix: str = "") -> list[Entry]:
    """Apply LinuxKit's exclude / replace / ensure rules and tag entries with source and location; with
    `prefix`, every path and hard link target moves below it (a container's rootfs)."""
    out: list[Entry] = []
    present: set[str] = set()
    for entry in entries:
        if entry.path in EXCLUDED:
            continue
        if entry.path in ("etc/hosts", "etc/resolv.conf"):
            entry = _replacement(entry, resolv_symlink)
        out.append(_placed(entry, source, location, prefix))
        present.add(entry.path)
    for path, kind, mode, target in ENSURED:
        if path in present:
            continue
        entry = Entry(path, kind, mode, linkname=target)
        if path in ("etc/hosts", "etc/resolv.conf"):
            entry = _replacement(entry, resolv_symlink)
        out.append(_placed(entry, source, location, prefix))
    return out


def _placed(entry: Entry, source: str, location: str, prefix: str) -> Entry:
    """`entry` tagged, and below `prefix` when there is one (one copy of the entry either way)."""
    if not prefix:
        return entry.evolve(source=source, location=location)
    linkname = f"{prefix}/{entry.linkname}" if entry.kind is Kind.HARDLINK else entry.linkname
    return entry.evolve(path=f"{prefix}/{entry.path}", linkname=linkname, source=source, location=location)
