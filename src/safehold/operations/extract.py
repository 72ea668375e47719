"""Extract a tar stream into a folder: all or nothing, and nothing outside the folder.

Refused, with an IntegrityError naming the member (the target is left as it was):

- names that are absolute, have a ``..`` component or a NUL byte (GNU tar would cut the
  name at the NUL and extract something else than the archive names);
- device nodes, fifos, any type but file, folder, symlink and hardlink;
- symlinks whose target is absolute or climbs above the root. Absolute targets are refused
  although GNU tar extracts them and they can make sense inside a container
  (``/data/current -> /data/v2``): on the host that restores the volume they name the host's
  files, and any later tool that follows them (a backup, a ``chown -R``) would act there.
  Such an archive can still be unpacked by hand with GNU tar;
- hardlinks to anything but an earlier file of the archive;
- members that go through a symlink (``link -> sub``, then ``link/x``) or replace a folder.

Links chain: a link harmless when made can escape once a later member changes what its path
resolves to. So besides the per-member lexical checks, every symlink of the finished tree is
resolved again (``realpath``) before anything is swapped in.

All or nothing: members go into a staging folder (0700) on the target's filesystem, beside the
target, or hidden inside it when the target is a mount point (a volume). Only when the whole
stream passed, and the caller's ``before_swap`` agreed (the place to compare a sha256 or the
facts with the manifest), are the target's entries moved aside and the staged ones renamed
in. The target folder keeps its inode, so a container mounting it sees the new content, and
ends up holding exactly the archive. Owners are restored numerically (as root only); modes
and mtimes (to the nanosecond when a pax header carries them) always, folders after their
content.

What GNU tar extracts from a well-formed archive, this extracts too, the same way: headers
are read as GNU tar reads them (:mod:`.extract_headers`: repeated, long-name, pax and global
headers; every sparse form, restored with its holes), whichever tool wrote the archive
(GNU tar in any format, busybox tar, bsdtar, Python's tarfile, Docker). Compare with
``tar --numeric-owner -xpf``. Deliberate differences besides the refusals above:

- setuid and setgid bits of files are dropped, with a warning event, unless ``keep_setuid``
  (the default for library callers; ``safehold restore --volume`` passes it only for a backup
  with a safehold manifest, or with ``--keep-setuid``). GNU tar run as root keeps them, but an
  archive handed in from elsewhere should not plant setuid programs on this host's disk. A
  folder's setgid bit is kept: it only makes new entries inherit the folder's group;
- a file whose data the target's filesystem has no room for is refused before it is
  written (a decompression bomb, or a disk too small): :mod:`.extract_unpack`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import RestoreError, SafeholdError, UsageError
from ..model import ByteSource, Event, EventSink, null_sink
from .extract_unpack import ExtractFacts, Unpacker, damaged, member_path

__all__ = ["ExtractFacts", "Source", "extract_tree", "member_path"]


def extract_tree(
    stream: ByteSource,
    target: Path,
    *,
    events: EventSink = null_sink,
    before_swap: Callable[[ExtractFacts], None] | None = None,
    keep_setuid: bool = True,
) -> ExtractFacts:
    """Replace the content of ``target`` with the tar stream (already decompressed).
    ``keep_setuid=False`` drops the setuid/setgid bits of files (a warning event each)."""
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UsageError(f"{target} is not a folder", hint="give the folder to restore into")
    exists = target.exists()
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    home = _scratch_home(target) if exists else target.parent
    if not exists:
        home.mkdir(parents=True, exist_ok=True)
    prefix = "." if home == target else f".{target.name}."
    staging = home / f"{prefix}safehold-extract-{token}"
    trash = home / f"{prefix}safehold-old-{token}"
    os.mkdir(staging, 0o700)
    swapped = False
    try:
        unpacker = Unpacker(staging, target, keep_setuid=keep_setuid, events=events)
        unpacker.run(Source(stream))
        unpacker.check_symlinks()
        if before_swap is not None:
            before_swap(unpacker.facts)
        unpacker.apply_dir_meta()
        if exists:
            os.mkdir(trash, 0o700)
            _swap(staging, target, trash, skip={staging.name, trash.name})
        else:
            os.rename(staging, target)
        swapped = True
        unpacker.apply_root_meta(target)
    except OSError as exc:
        hint = (
            "the content is restored, but not the folder's own owner, mode or mtime"
            if swapped
            else "free space or fix permissions; the folder was left as it was"
        )
        raise RestoreError(f"cannot restore into {target}: {exc.strerror or exc}", hint) from exc
    finally:
        for scratch in (staging, trash):
            if not _remove_tree(scratch):
                events(Event("restore", f"could not remove {scratch}; delete it", "warning"))
    events(Event("restore", f"restored {unpacker.facts.files} files into {target}"))
    return unpacker.facts


class Source:
    """Reports any failure of the (decompressing) source as a damaged archive."""

    def __init__(self, inner: ByteSource) -> None:
        self._inner = inner

    def read(self, size: int = -1) -> bytes:
        try:
            return self._inner.read(size)
        except SafeholdError:
            raise
        except Exception as exc:
            raise damaged(exc) from exc


def _swap(staging: Path, target: Path, trash: Path, skip: set[str]) -> None:
    """Move the target's entries into ``trash`` and the staged ones in; undo on failure."""
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for name in os.listdir(target):
            if name not in skip:
                os.rename(target / name, trash / name)
                moved_out.append(name)
        for name in os.listdir(staging):
            os.rename(staging / name, target / name)
            moved_in.append(name)
    except OSError:
        for name in moved_in:
            with contextlib.suppress(OSError):
                os.rename(target / name, staging / name)
        for name in moved_out:
            with contextlib.suppress(OSError):
                os.rename(trash / name, target / name)
        raise


def _scratch_home(target: Path) -> Path:
    """Beside the target when that is the same filesystem (renames must not cross one)."""
    parent = target.resolve().parent
    same_fs = os.stat(parent).st_dev == os.stat(target).st_dev
    return parent if same_fs and os.access(parent, os.W_OK | os.X_OK) else target


def _remove_tree(path: Path) -> bool:
    """Remove a scratch folder, also when it holds folders without write permission."""
    if not os.path.lexists(path):
        return True
    if os.geteuid() != 0:
        folders = [str(path)]
        while folders:
            folder = folders.pop()
            with contextlib.suppress(OSError):
                os.chmod(folder, 0o700)
                with os.scandir(folder) as entries:
                    folders.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
    try:
        shutil.rmtree(path)
    except OSError:
        return False
    return True
