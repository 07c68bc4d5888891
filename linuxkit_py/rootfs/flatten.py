"""Flatten an image's layers into one list of entries, with OCI whiteout semantics.

Layers are applied bottom-up onto an in-memory tree (nothing touches the host filesystem),
the way `umoci unpack` applies them to a directory:

* `.wh.NAME` deletes NAME and everything under it from lower layers; `.wh..wh..opq` in a
  directory hides every child lower layers put there. Whiteouts never hide entries of their
  own layer, and never appear in the output. Other `.wh..wh.*` names are aufs metadata and
  are dropped.
* A directory over a directory keeps the children and takes the new metadata; anything
  else replaces the old entry (a non-directory over a directory removes its children). A
  directory deleted and re-created higher up does not get its old children back.
* Parent paths are resolved through symlinks inside the image (a layer adding `lib/x` over
  `lib -> usr/lib` writes `usr/lib/x`); a non-directory in the way becomes a directory.
* A hard link shares its target's content and metadata at the moment it is applied:
  replacing or deleting the target later leaves the link with the old content.

The output is sorted by path components (parents before children), missing parents are
0755 root directories, and each group of hard-linked paths is one FILE (the first in
output order) plus HARDLINK entries pointing at it.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque

from linuxkit_py.archive.entry import Entry, Kind
from linuxkit_py.cache.flat import flat_memo_path, load_flat_memo, save_flat_memo
from linuxkit_py.cache.image import Image
from linuxkit_py.cache.layerindex import forget_decoded_indexes
from linuxkit_py.cache.layers import image_layers, layer_tar_path, unpack_layers
from linuxkit_py.cache.layout import Cache
from linuxkit_py.errors import UserError
from linuxkit_py.uptodate import code_digest

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
WHITEOUT_META_PREFIX = ".wh..wh."
MAX_SYMLINK_FOLLOWS = 40  # Linux's MAXSYMLINKS
SYNTHESIZED_DIR_MODE = 0o755


class _Inode:
    """Identity of a regular file's content: hard-linked nodes share one."""

    __slots__ = ()


class _Node:
    __slots__ = ("entry", "inode", "children")

    def __init__(self, entry: Entry | None, inode: _Inode | None = None,
                 children: dict[str, _Node] | None = None) -> None:
        self.entry = entry  # None only for a directory no layer described
        self.inode = inode  # regular files only
        self.children = children  # directories only

    @staticmethod
    def directory(entry: Entry | None = None) -> _Node:
        return _Node(entry, None, {})


class _Tree:
    def __init__(self) -> None:
        self.root = _Node.directory()

    def walk_dir(self, path: str, create: bool, label: str) -> _Node | None:
        """The directory node at `path`, following symlinks (clamped at the root, like securejoin).

        With `create`, missing directories are made and non-directories in the way replaced;
        without it, None when the path does not lead to a directory.
        """
        stack = [self.root]
        pending = deque(path.split("/"))
        follows = 0
        while pending:
            name = pending.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            current = stack[-1]
            assert current.children is not None
            child = current.children.get(name)
            if child is not None and child.entry is not None and child.entry.kind is Kind.SYMLINK:
                follows += 1
                if follows > MAX_SYMLINK_FOLLOWS:
                    raise UserError(f"{label}: too many levels of symbolic links in {path!r}")
                target = child.entry.linkname
                if target.startswith("/"):
                    stack = [self.root]
                pending.extendleft(reversed(target.split("/")))
                continue
            if child is None or child.children is None:
                if not create:
                    return None
                child = _Node.directory()
                current.children[name] = child
            stack.append(child)
        return stack[-1]

    def lookup(self, path: str, label: str) -> _Node | None:
        """The node at `path` (parents resolved through symlinks, the last component not)."""
        head, _, name = path.rpartition("/")
        parent = self.walk_dir(head, False, label)
        if parent is None or parent.children is None:
            return None
        return parent.children.get(name)

    def apply_layer(self, entries: list[Entry], label: str) -> None:
        opaque_dirs: list[str] = []
        whiteouts: list[tuple[str, str]] = []
        additions: list[Entry] = []
        for entry in entries:
            head, _, name = entry.path.rpartition("/")
            if WHITEOUT_PREFIX in head and any(part.startswith(WHITEOUT_PREFIX) for part in head.split("/")):
                continue  # inside aufs metadata (.wh..wh.plnk/...) or a whiteout name: not content
            if name == OPAQUE_WHITEOUT:
                opaque_dirs.append(head)
            elif name.startswith(WHITEOUT_META_PREFIX):
                continue
            elif name.startswith(WHITEOUT_PREFIX):
                hidden = name[len(WHITEOUT_PREFIX) :]
                if hidden in ("", ".", ".."):
                    raise UserError(f"{label}: invalid whiteout {entry.path!r}")
                whiteouts.append((head, hidden))
            else:
                additions.append(entry)
        # Whiteouts hide lower layers only, so they go before this layer's own entries.
        for head in opaque_dirs:
            directory = self.walk_dir(head, False, label)
            if directory is not None and directory.children is not None:
                directory.children.clear()
        for head, hidden in whiteouts:
            directory = self.walk_dir(head, False, label)
            if directory is not None and directory.children is not None:
                directory.children.pop(hidden, None)
        # Members of one directory come one after another: it is walked to once for them. None of them can
        # replace it or a directory above it (they are below it), and any other entry ends the run.
        last_head: str | None = None
        parent: _Node | None = None
        for entry in additions:
            head = entry.path.rpartition("/")[0]
            if head != last_head:
                parent, last_head = self.walk_dir(head, True, label), head
            self.add(entry, label, parent)

    def add(self, entry: Entry, label: str, parent: _Node | None = None) -> None:
        """Add `entry` into the directory node `parent` (default: walked to from the root)."""
        head, _, name = entry.path.rpartition("/")
        if parent is None:
            parent = self.walk_dir(head, True, label)
        assert parent is not None and parent.children is not None
        old = parent.children.get(name)
        if entry.kind is Kind.DIR:
            if old is not None and old.children is not None:
                old.entry = entry
            else:
                parent.children[name] = _Node.directory(entry)
        elif entry.kind is Kind.HARDLINK:
            target = self.lookup(entry.linkname, label)
            if target is None or target.children is not None or target.entry is None:
                raise UserError(f"{label}: hard link {entry.path!r} -> {entry.linkname!r}: "
                                "no such file in this layer or below")
            # A link to a symlink or device (rare) becomes a copy: only regular files share content.
            parent.children[name] = _Node(target.entry, target.inode)
        elif entry.kind is Kind.FILE:
            parent.children[name] = _Node(entry, _Inode())
        else:
            parent.children[name] = _Node(entry)

    def entries(self) -> list[Entry]:
        """Depth-first, children sorted by name: parents before children, sorted by path components."""
        out: list[Entry] = []
        first_path: dict[int, str] = {}  # id(inode) -> the path emitted as its FILE
        assert self.root.children is not None
        stack = [("", iter(sorted(self.root.children.items())))]
        while stack:
            prefix, children = stack[-1]
            item = next(children, None)
            if item is None:
                stack.pop()
                continue
            name, node = item
            path = prefix + name
            if node.children is not None:
                entry = node.entry or Entry(path, Kind.DIR, SYNTHESIZED_DIR_MODE)
                out.append(_at(entry, path))
                stack.append((path + "/", iter(sorted(node.children.items()))))
                continue
            assert node.entry is not None
            if node.inode is None:
                out.append(_at(node.entry, path))
                continue
            first = first_path.setdefault(id(node.inode), path)
            if first == path:
                out.append(_at(node.entry, path))
            else:
                out.append(node.entry.evolve(path=path, kind=Kind.HARDLINK, linkname=first, size=0,
                                   data=None))
        return out


def _at(entry: Entry, path: str) -> Entry:
    return entry if entry.path == path else entry.evolve(path=path)


def flatten_layers(layers: list[list[Entry]], labels: list[str] | None = None) -> list[Entry]:
    """Apply `layers` (bottom first, each in tar order) and return the resulting filesystem.

    `labels` name the layers in errors (default: "layer N").
    """
    tree = _Tree()
    for i, entries in enumerate(layers):
        tree.apply_layer(entries, labels[i] if labels else f"layer {i + 1}")
    return tree.entries()


FLAT_MEMO_VERSION = 1  # what the kept flattened images are keyed by, besides the code


def flatten_image(cache: Cache, image: Image) -> list[Entry]:
    """The flattened root filesystem of a cached image (layers unpacked and indexed once, then reused).

    The result is kept (cache/layers.py, "flattened images, kept") under a key of the layers' digests and
    this tool's code: a warm build loads it instead of the layers' indexes."""
    layers = image_layers(image)
    descriptors = [layer for layer, _ in layers]
    key = hashlib.sha256(json.dumps([FLAT_MEMO_VERSION, code_digest(), [layer["digest"] for layer in descriptors]])
                         .encode()).hexdigest()
    memo = flat_memo_path(cache, key)
    tars = [str(layer_tar_path(cache, layer)) for layer in descriptors]
    entries = load_flat_memo(memo, tars, descriptors)
    if entries is not None:
        return entries
    by_digest = unpack_layers(cache, layers)
    per_layer = [by_digest[layer["digest"]] for layer in descriptors]
    labels = [f"{image.ref}: layer {layer['digest']}" for layer in descriptors]
    entries = flatten_layers(per_layer, labels)
    save_flat_memo(memo, entries, tars, [len(members) for members in per_layer])
    # the next build loads the kept image; this one does not need these layers' entries again unless another
    # image shares a layer (it is decoded again): 46 MiB less at 10x while the rest is assembled
    del per_layer, by_digest
    forget_decoded_indexes(tars)
    return entries
