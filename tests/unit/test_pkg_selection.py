"""Which files of a package go into the image: docs dropped, include/exclude/keep, directories, hard links."""

from __future__ import annotations

from linuxkit_py.archive.entry import Entry, Kind
from linuxkit_py.pkg.selection import select_entries


def D(path: str) -> Entry:
    return Entry(path, Kind.DIR, 0o755)


def F(path: str, data: bytes = b"x") -> Entry:
    return Entry(path, Kind.FILE, 0o644, size=len(data), data=data)


def L(path: str, target: str) -> Entry:
    return Entry(path, Kind.SYMLINK, 0o777, linkname=target)


def H(path: str, target: str) -> Entry:
    return Entry(path, Kind.HARDLINK, 0o644, linkname=target)


# Shaped like runc's data.tar: directories first, a symlink at the end.
PACKAGE = [
    D("usr"), D("usr/bin"), D("usr/sbin"), F("usr/sbin/runc"),
    D("usr/share"), D("usr/share/bash-completion"), D("usr/share/bash-completion/completions"),
    F("usr/share/bash-completion/completions/runc"),
    D("usr/share/doc"), D("usr/share/doc/runc"), F("usr/share/doc/runc/copyright"),
    D("usr/share/man"), D("usr/share/man/man8"), F("usr/share/man/man8/runc.8.gz"),
    D("usr/share/lintian"), D("usr/share/lintian/overrides"), F("usr/share/lintian/overrides/runc"),
    D("usr/share/locale"), D("usr/share/locale/de"), F("usr/share/locale/de/runc.mo"),
    D("usr/share/info"), F("usr/share/info/runc.info"),
    D("var"), D("var/lib"), D("var/lib/runc"),  # shipped empty: stays
    L("usr/bin/runc", "../sbin/runc"),
]


def paths(entries: list[Entry]) -> list[str]:
    return [e.path for e in entries]


def test_docs_man_info_locale_lintian_are_dropped_with_their_directories() -> None:
    assert paths(select_entries(PACKAGE)) == [
        "usr", "usr/bin", "usr/sbin", "usr/sbin/runc",
        "usr/share", "usr/share/bash-completion", "usr/share/bash-completion/completions",
        "usr/share/bash-completion/completions/runc",
        "var", "var/lib", "var/lib/runc",
        "usr/bin/runc",
    ]


def test_exclude_drops_a_tree_and_directories_left_empty() -> None:
    assert paths(select_entries(PACKAGE, exclude=["usr/share/bash-completion"])) == [
        "usr", "usr/bin", "usr/sbin", "usr/sbin/runc", "var", "var/lib", "var/lib/runc", "usr/bin/runc"]
    assert paths(select_entries(PACKAGE, exclude=["usr/share/**", "var/lib/*"])) == [
        "usr", "usr/bin", "usr/sbin", "usr/sbin/runc", "usr/bin/runc"]


def test_include_keeps_only_matching_files_and_their_parents() -> None:
    assert paths(select_entries(PACKAGE, include=["usr/sbin/runc"])) == ["usr", "usr/sbin", "usr/sbin/runc"]
    assert paths(select_entries(PACKAGE, include=["usr/*/runc"])) == [
        "usr", "usr/bin", "usr/sbin", "usr/sbin/runc", "usr/bin/runc"]
    # a directory that include names keeps what is below it; an empty one it names stays
    assert paths(select_entries(PACKAGE, include=["usr/share/bash-completion", "var/lib/runc"])) == [
        "usr", "usr/share", "usr/share/bash-completion", "usr/share/bash-completion/completions",
        "usr/share/bash-completion/completions/runc", "var", "var/lib", "var/lib/runc"]


def test_keep_brings_back_dropped_docs() -> None:
    # keep only undoes the docs rule: include still decides
    assert paths(select_entries(PACKAGE, include=["usr/sbin/runc"], keep=["usr/share/doc/*/copyright"])) == [
        "usr", "usr/sbin", "usr/sbin/runc"]
    assert paths(select_entries(PACKAGE, include=["usr/share/doc/*/copyright"], keep=["usr/share/doc"])) == [
        "usr", "usr/share", "usr/share/doc", "usr/share/doc/runc", "usr/share/doc/runc/copyright"]
    kept = select_entries(PACKAGE, keep=["usr/share/doc/**"], exclude=["usr/share/bash-completion", "var"])
    assert paths(kept) == ["usr", "usr/bin", "usr/sbin", "usr/sbin/runc", "usr/share", "usr/share/doc",
                           "usr/share/doc/runc", "usr/share/doc/runc/copyright", "usr/bin/runc"]


def test_globs_match_within_segments_and_across_directories() -> None:
    entries = [D("a"), D("a/b"), D("a/b/c"), F("a/b/c/x.so.1"), F("a/b/y.so"), F("a/z.txt")]
    assert paths(select_entries(entries, include=["a/**/*.so*"])) == ["a", "a/b", "a/b/c", "a/b/c/x.so.1",
                                                                       "a/b/y.so"]
    assert paths(select_entries(entries, include=["a/*.so"])) == []
    assert paths(select_entries(entries, include=["a/b/[xy]*"])) == ["a", "a/b", "a/b/y.so"]
    assert paths(select_entries(entries, exclude=["**/*.so*"])) == ["a", "a/z.txt"]


def test_a_hard_link_whose_target_is_dropped_becomes_the_file() -> None:
    entries = [D("bin"), F("bin/real", b"data"), H("bin/a", "bin/real"), H("bin/b", "bin/real"),
               H("bin/c", "bin/real")]
    got = select_entries(entries, exclude=["bin/real", "bin/b"])
    assert [(e.path, e.kind, e.linkname, e.data) for e in got] == [
        ("bin", Kind.DIR, "", None),
        ("bin/a", Kind.FILE, "", b"data"),
        ("bin/c", Kind.HARDLINK, "bin/a", None),
    ]
    assert select_entries(entries) == entries
