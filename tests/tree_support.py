"""What the folder tree tests share (tar backups and chunk store snapshots): a tree that holds
what a volume can, a snapshot of a tree to compare, and GNU tar extracting an archive."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

Tree = dict[str, tuple[object, ...]]
MiB = 1 << 20


def snapshot(root: Path, *, exact: bool = False) -> Tree:
    """Every entry below root (and root itself, as '.'), without following symlinks: content,
    mode, numeric owner, mtime and, for files, the hardlink group. ``exact``: mtimes to the
    nanosecond and each file's size and whether it has holes (what a chunk store snapshot
    keeps); else mtimes in whole seconds (what a GNU-format tar header keeps)."""
    out: Tree = {}
    inodes: dict[int, list[str]] = {}
    stack = [(root, ".")]
    while stack:
        path, rel = stack.pop()
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            content: object = "dir"
            stack += [(path / name, f"{rel}/{name}") for name in os.listdir(path)]
        elif stat.S_ISLNK(st.st_mode):
            content = ("link", os.readlink(path))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            holes = st.st_blocks * 512 < st.st_size
            content = ("file", digest, st.st_size, holes) if exact else ("file", digest)
            inodes.setdefault(st.st_ino, []).append(rel)
        mtime = st.st_mtime_ns if exact else st.st_mtime_ns // 1_000_000_000
        out[rel] = (content, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime)
    for names in inodes.values():
        for name in names:
            out[name] += (tuple(sorted(names)),)  # the hardlink group
    return out


def make_tree(
    root: Path, own_files: Callable[[Path], None], *, long_text: str, steps: tuple[int, int]
) -> None:
    """What a volume holds: owners, modes, links, long and non-UTF-8 names, empty and
    read-only folders, old mtimes. ``own_files`` adds the caller's files once ``docs/deep``
    is made; ``long_text`` is the content of the file with the longest name; ``steps``: how
    far apart (ns) the mtimes of each folder's entries are, then those of the folders."""
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "locked").mkdir()
    (root / "docs" / "a.txt").write_text("alpha\n")
    (root / "docs" / "empty.bin").write_bytes(b"")
    (root / "docs" / "deep" / "big.bin").write_bytes(os.urandom(3 * MiB + 17))
    own_files(root)
    long_dir = root / ("d" * 90) / ("e" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 120)).write_text(long_text)
    (root / os.fsdecode(b"caf\xe9-latin1")).write_text("not utf-8 named\n")
    (root / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "tool").chmod(0o4755)
    (root / "secret").write_text("s3cret\n")
    (root / "secret").chmod(0o600)
    os.chown(root / "secret", 1234, 5678)
    os.chown(root / "docs", 999, 999)
    os.chown(root / "docs" / "a.txt", 65534, 65534)
    os.link(root / "docs" / "a.txt", root / "hard-a")
    os.link(root / "docs" / "a.txt", root / "docs" / "deep" / "hard-a2")
    os.symlink("docs/a.txt", root / "link-file")
    os.symlink("docs", root / "link-dir")
    os.symlink("../../secret", root / "docs" / "deep" / "link-up")
    os.symlink("missing-but-inside", root / "dangling")
    os.lchown(root / "link-file", 4321, 4321)
    (root / "locked" / "inside.txt").write_text("read-only folder content\n")
    (root / "locked").chmod(0o555)
    (root / "empty").chmod(0o700)
    stamp = 1_600_000_000_123_456_789
    step, back = steps
    walked = sorted(((Path(p), d + f) for p, d, f in os.walk(root)), reverse=True)
    for index, (path, names) in enumerate(walked):
        for name in names:
            os.utime(path / name, ns=(stamp + index * step,) * 2, follow_symlinks=False)
        os.utime(path, ns=(stamp - index * back,) * 2)


def gnu_extract(archive: Path, target: Path) -> Path:
    """``target``, a new folder, holding the ``.tar.gz`` ``archive`` as GNU tar extracts it
    (numeric owners, modes as stored)."""
    target.mkdir()
    subprocess.run(
        ["tar", "-xzf", str(archive), "-C", str(target), "--numeric-owner", "--same-permissions"],
        check=True,
    )
    return target
