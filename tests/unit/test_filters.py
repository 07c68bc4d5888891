"""LinuxKit's exclude / replace / ensure rules on an image's entries (rootfs/filters.py)."""

from __future__ import annotations

from linuxkit_py.archive.entry import Entry, Kind
from linuxkit_py.rootfs.filters import NO_RESOLV, filter_image

IMAGE = [
    Entry("bin", Kind.DIR, 0o755),
    Entry("bin/busybox", Kind.FILE, 0o755, size=2, data=b"bb"),
    Entry("bin/sh", Kind.HARDLINK, 0o755, linkname="bin/busybox"),
    Entry("bin/ls", Kind.SYMLINK, 0o777, linkname="busybox"),
    Entry("etc", Kind.DIR, 0o755),
    Entry("etc/hostname", Kind.FILE, 0o644, size=2, data=b"h\n"),
    Entry("etc/resolv.conf", Kind.FILE, 0o600, size=4, data=b"dns\n"),
]


def test_a_prefix_moves_every_path_and_hard_link_target_below_it() -> None:
    plain = filter_image(IMAGE, "img:1", "services[0]", None)
    moved = filter_image(IMAGE, "img:1", "services[0]", None, prefix="containers/services/web/rootfs")
    assert "etc/hostname" not in {e.path for e in plain}  # excluded
    assert len(moved) == len(plain) and {e.path for e in plain} >= {"dev", "etc/hosts"}  # ensured
    for before, after in zip(plain, moved, strict=True):
        assert after.path == f"containers/services/web/rootfs/{before.path}"
        expected_link = (f"containers/services/web/rootfs/{before.linkname}" if before.kind is Kind.HARDLINK
                         else before.linkname)
        assert (after.linkname, after.kind, after.mode, after.data) == (expected_link, before.kind, before.mode,
                                                                         before.data)
        assert (after.source, after.location) == ("img:1", "services[0]")
    resolv = next(e for e in moved if e.path.endswith("etc/resolv.conf"))
    assert (resolv.kind, resolv.data, resolv.mode) == (Kind.FILE, NO_RESOLV, 0o600)
