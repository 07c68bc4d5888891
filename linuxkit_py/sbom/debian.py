"""The licence of a Debian package, from its machine-readable `copyright` file (DEP-5), as an SPDX expression.

A DEP-5 file (https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/) is a header paragraph with
`Format:`, then `Files:` paragraphs, each with a `License:` field whose first line is an expression of short
names (`GPL-2+ or Artistic`, `GPL-2 with OpenSSL exception`), and stand-alone `License:` paragraphs that give a
name's text. The package's licence is every name its paragraphs use, joined with AND. Debian's short names
become SPDX identifiers where the two lists agree (`GPL-2+` is `GPL-2.0-or-later`, `Expat` is `MIT`); any
other name becomes `LicenseRef-<name>`, whose text (from the stand-alone paragraph, if there is one) the
document must carry. A copyright file in any other form says nothing machine-readable: NOASSERTION.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NOASSERTION = "NOASSERTION"

# Debian short name (lower case, without a trailing `+`) -> SPDX identifier (its -only form).
_SPDX_NAMES = {
    "gpl-1": "GPL-1.0", "gpl-2": "GPL-2.0", "gpl-3": "GPL-3.0",
    "lgpl-2": "LGPL-2.0", "lgpl-2.0": "LGPL-2.0", "lgpl-2.1": "LGPL-2.1", "lgpl-3": "LGPL-3.0",
    "agpl-3": "AGPL-3.0", "gfdl-1.1": "GFDL-1.1", "gfdl-1.2": "GFDL-1.2", "gfdl-1.3": "GFDL-1.3",
    "apache-1.0": "Apache-1.0", "apache-1.1": "Apache-1.1", "apache-2.0": "Apache-2.0", "apache-2": "Apache-2.0",
    "artistic": "Artistic-1.0", "artistic-1.0": "Artistic-1.0", "artistic-2.0": "Artistic-2.0",
    "bsd-2-clause": "BSD-2-Clause", "bsd-3-clause": "BSD-3-Clause", "bsd-4-clause": "BSD-4-Clause",
    "bsd-2-clause-netbsd": "BSD-2-Clause-NetBSD", "0bsd": "0BSD",
    "expat": "MIT", "mit": "MIT", "isc": "ISC", "zlib": "Zlib", "bsl-1.0": "BSL-1.0", "boost-1.0": "BSL-1.0",
    "mpl-1.1": "MPL-1.1", "mpl-2.0": "MPL-2.0", "epl-1.0": "EPL-1.0", "epl-2.0": "EPL-2.0",
    "cc0-1.0": "CC0-1.0", "cc-by-3.0": "CC-BY-3.0", "cc-by-4.0": "CC-BY-4.0", "cc-by-sa-3.0": "CC-BY-SA-3.0",
    "cc-by-sa-4.0": "CC-BY-SA-4.0", "psf-2": "PSF-2.0", "python-2.0": "Python-2.0", "openssl": "OpenSSL",
    "ssleay": "SSLeay", "curl": "curl", "x11": "X11", "unicode-dfs-2016": "Unicode-DFS-2016",
    "ofl-1.1": "OFL-1.1", "wtfpl": "WTFPL", "unlicense": "Unlicense", "bzip2-1.0.6": "bzip2-1.0.6",
    "libpng": "Libpng", "ftl": "FTL", "icu": "ICU", "ntp": "NTP", "tcl": "TCL", "sleepycat": "Sleepycat",
    "beerware": "Beerware", "ijg": "IJG", "postgresql": "PostgreSQL", "ruby": "Ruby", "vim": "Vim",
    "gpl-2.0": "GPL-2.0", "gpl-3.0": "GPL-3.0", "lgpl-3.0": "LGPL-3.0",
}
# Names whose SPDX identifiers have -only/-or-later forms.
_VERSIONED = ("GPL-", "LGPL-", "AGPL-", "GFDL-")
# Debian's exception names, `with NAME exception` -> SPDX's exception identifier.
_EXCEPTIONS = {
    "font": "Font-exception-2.0", "bison": "Bison-exception-2.2", "classpath": "Classpath-exception-2.0",
    "libtool": "Libtool-exception", "linux-syscall-note": "Linux-syscall-note",
}
_IDSTRING = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(frozen=True)
class Licence:
    """A package's declared licence and the texts of the LicenseRef- names it uses."""

    expression: str
    extracted: tuple[tuple[str, str, str], ...] = ()  # (LicenseRef-id, Debian name, text)


def _paragraphs(text: str) -> list[dict[str, str]]:
    """DEP-5 paragraphs as {field (lower case): value}; continuation lines kept after a newline."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, last = {}, ""
        elif line[0] in " \t":
            if last:
                current[last] += "\n" + (line.strip() if line.strip() != "." else "")
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip().lower()
            current[last] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def _licence_ref(name: str) -> str:
    return "LicenseRef-" + (_IDSTRING.sub("-", name).strip("-") or "unnamed")


def _one_name(name: str, refs: dict[str, str]) -> str:
    """One Debian short name (`GPL-2+`, `GPL-2 with Font exception`) -> SPDX, or a LicenseRef- (kept in `refs`)."""
    base, with_, exception = name.partition(" with ")
    if with_:
        spdx_exception = _EXCEPTIONS.get(exception.lower().removesuffix(" exception").strip())
        spdx = _one_name(base, {}) if spdx_exception else ""
        if spdx and not spdx.startswith("LicenseRef-"):
            return f"{spdx} WITH {spdx_exception}"
    else:
        key = name.lower()
        later = key.endswith("+")
        spdx = _SPDX_NAMES.get(key.removesuffix("+"), "")
        if spdx.startswith(_VERSIONED):
            return f"{spdx}-or-later" if later else f"{spdx}-only"
        if spdx:
            return f"{spdx}+" if later else spdx
    ref = _licence_ref(name)
    refs.setdefault(ref, name)
    return ref


def _expression(field: str, refs: dict[str, str]) -> str:
    """A DEP-5 `License:` first line (`GPL-2+ or Artistic`, `A and B`, `GPL-2 with X exception`) -> SPDX.

    `and` binds tighter than `or`; a comma binds loosest (`A or B, and C` is `(A OR B) AND C`)."""
    groups = [_group(part, refs) for part in field.split(",")]
    groups = [g for g in groups if g]
    if len(groups) <= 1:
        return groups[0] if groups else ""
    return "(" + " AND ".join(groups) + ")"


def _group(field: str, refs: dict[str, str]) -> str:
    words = field.split()
    if words and words[0].lower() == "and":
        words = words[1:]
    alternatives: list[list[str]] = [[]]
    i = 0
    while i < len(words):
        low = words[i].lower()
        if low == "or":
            alternatives.append([])
        elif low == "and":
            pass
        elif low == "with" and alternatives[-1]:
            j = i + 1
            while j < len(words) and words[j].lower() != "exception":
                j += 1
            alternatives[-1][-1] += " with " + " ".join(words[i + 1:j + 1])
            i = j
        else:
            alternatives[-1].append(words[i])
        i += 1
    parts = []
    for names in alternatives:
        terms = [_one_name(name, refs) for name in names]
        if terms:
            parts.append(terms[0] if len(terms) == 1 else "(" + " AND ".join(terms) + ")")
    if not parts:
        return ""
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def licence_from_copyright(text: str | None) -> Licence:
    """The licence a DEP-5 copyright file declares (NOASSERTION for no file or a free-form one)."""
    if not text:
        return Licence(NOASSERTION)
    paragraphs = _paragraphs(text)
    if not paragraphs or "format" not in paragraphs[0] or "copyright-format" not in paragraphs[0]["format"]:
        return Licence(NOASSERTION)
    refs: dict[str, str] = {}
    texts: dict[str, str] = {}
    terms: list[str] = []
    for paragraph in paragraphs:
        value = paragraph.get("license")
        if value is None:
            continue
        first, _, body = value.partition("\n")
        if not first.strip():
            continue
        if body.strip() and "files" not in paragraph:
            texts[first.strip().lower()] = body.strip()
        if "files" in paragraph or "format" in paragraph:
            term = _expression(first, refs)
            if term and term not in terms:
                terms.append(term)
    if not terms:
        return Licence(NOASSERTION)
    terms.sort()
    expression = " AND ".join(terms)  # every term with more than one name is in parentheses
    extracted = tuple(sorted(
        (ref, name, texts.get(name.lower()) or f"The licence named {name!r} in the package's Debian copyright file.")
        for ref, name in refs.items()))
    return Licence(expression, extracted)
