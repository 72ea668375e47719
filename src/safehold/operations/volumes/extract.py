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
ends up holding exactly the archive.

That swap is many renames, so a kill can land between two. Given a ``SwapJournal`` (the
repository), the staging folder is journalled before it is made, and the swap before its
first rename; phase 1 moves every old entry aside, then the entry is marked (durably) and
phase 2 moves the staged ones in. The next command (:mod:`.recovery_volume`) rolls an
interrupted swap back when the mark is missing and forward when it is there: the target holds
the old content or the new, never a mix. Folders are fsynced after their renames, before the
mark, so a power loss cannot reorder them. Without a journal (a library call), a kill in the
swap can leave a mix, as it always could. Owners are restored numerically (as root only); modes
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
import dataclasses
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import RestoreError, SafeholdError, UsageError
from ...model import ByteSource, Event, EventSink, null_sink
from ...sources.tar.names import member_path
from ...sources.tar.unpack import ExtractFacts, Unpacker, damaged
from ...storage import LocalStorage
from ...storage.local import fsync_dir
from .. import journal

__all__ = ["ExtractFacts", "Source", "SwapJournal", "extract_tree", "member_path"]

PROGRESS_EVERY = 500  # entries moved between two debug events of a swap


@dataclass(frozen=True)
class SwapJournal:
    """Where a restore journals its staging folder and swap, and how messages name them."""

    storage: LocalStorage  # the repository whose .safehold/journal the next command reads
    what: str  # "volume app-data", "folder /srv/uploads"
    source: str  # the archive restored
    lock: str | None = None  # volume_lock key the resolver takes (the restore held it)
    purpose: str = "safehold restore"

    def data(self, **more: Any) -> dict[str, Any]:
        return {"what": self.what, "source": self.source, "lock": self.lock, **more}


def extract_tree(
    stream: ByteSource,
    target: Path,
    *,
    events: EventSink = null_sink,
    before_swap: Callable[[ExtractFacts], None] | None = None,
    keep_setuid: bool = True,
    journal_to: SwapJournal | None = None,
    expected_bytes: int | None = None,
) -> ExtractFacts:
    """Replace the content of ``target`` with the tar stream (already decompressed).
    ``keep_setuid=False`` drops the setuid/setgid bits of files (a warning event each);
    ``journal_to``: journal the staging folder and the swap so a kill is undone or finished;
    ``expected_bytes``: the manifest's byte count, checked against free space first and never
    exceeded."""
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
    entry = _record(journal_to, "staging_folder", path=str(staging), target=str(target))
    os.mkdir(staging, 0o700)
    swapped = False
    settled = True  # False: a swap left for the next command to settle; keep its folders
    try:
        unpacker = Unpacker(
            staging, target, keep_setuid=keep_setuid, events=events, expected_bytes=expected_bytes
        )
        unpacker.run(Source(stream))
        unpacker.check_symlinks()
        if before_swap is not None:
            before_swap(unpacker.facts)
        unpacker.apply_dir_meta()
        if exists:
            made, entry = entry, _record(
                journal_to, "volume_swap", target=str(target), staging=str(staging),
                aside=str(trash), phase="aside", root=unpacker.root_meta(),
                before=folder_meta(target),
            )  # fmt: skip
            if journal_to is not None and made is not None:
                journal.done(journal_to.storage, made)  # the swap's entry covers staging now
            settled = False
            _swap(staging, target, trash, journal_to, entry, events)
            settled = True
        else:
            os.rename(staging, target)
            fsync_dir(target.parent)
        swapped = True
        unpacker.apply_root_meta(target)
    except OSError as exc:
        settled = True  # _swap settled the swap (undone) before it let an OSError through
        hint = (
            "the content is restored, but not the folder's own owner, mode or mtime"
            if swapped
            else "free space or fix permissions; the folder was left as it was"
        )
        raise RestoreError(f"cannot restore into {target}: {exc.strerror or exc}", hint) from exc
    finally:
        if settled:
            left = [s for s in (staging, trash) if not remove_tree(s)]
            for scratch in left:
                events(Event("restore", f"could not remove {scratch}; delete it", "warning"))
            if journal_to is not None and entry is not None and not left:
                journal.done(journal_to.storage, entry)
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


def _swap(
    staging: Path,
    target: Path,
    aside: Path,
    journal_to: SwapJournal | None,
    entry: journal.Entry | None,
    events: EventSink,
) -> None:
    """Move the target's entries aside and the staged ones in. On an error, undo it (before
    the mark: OSError) or finish it (after), as the next command would; when that fails too,
    the journal entry is left for the next command (RestoreError)."""
    skip = {staging.name, aside.name}
    forward = False
    moved_in: list[str] = []
    os.mkdir(aside, 0o700)
    try:
        events(Event("restore", f"swap: moving the current content of {target} aside"))
        move_entries(target, aside, skip, events)
        fsync_dir(target)
        fsync_dir(aside)
        if journal_to is not None and entry is not None:
            mark_forward(journal_to.storage, entry)
            forward = True
        events(Event("restore", f"swap: moving the restored content into {target}"))
        move_entries(staging, target, set(), events, moved_in)
        fsync_dir(target)
        fsync_dir(staging)
    except OSError as exc:
        try:
            if not forward:
                roll_back(target, staging, aside, moved_in)
                raise
            roll_forward(target, staging, aside)
        except OSError as again:
            if again is exc:
                raise
            raise RestoreError(
                f"the restore into {target} stopped half-way: {again.strerror or again}",
                "the next safehold command undoes or finishes it (it is journalled); "
                f"until then {target} may hold part of each"
                if entry is not None
                else f"the previous content is in {aside}, the new in {staging}",
            ) from exc


def move_entries(
    source: Path,
    dest: Path,
    skip: set[str],
    events: EventSink = null_sink,
    moved: list[str] | None = None,
) -> int:
    """Rename every entry of ``source`` (but ``skip``) into ``dest``; how many moved."""
    names = [name for name in os.listdir(source) if name not in skip]
    for count, name in enumerate(names, 1):
        os.rename(source / name, dest / name)
        if moved is not None:
            moved.append(name)
        if count % PROGRESS_EVERY == 0:
            events(Event("restore", f"swap: moved {count} of {len(names)} entries", "debug"))
    return len(names)


def roll_back(target: Path, staging: Path, aside: Path, moved_in: Sequence[str] = ()) -> int:
    """Put the old content back (and the new, when some of it moved in, back into staging)."""
    for name in moved_in:
        os.rename(target / name, staging / name)
    moved = move_entries(aside, target, set()) if aside.is_dir() else 0
    fsync_dir(target)
    return moved


def roll_forward(target: Path, staging: Path, aside: Path) -> int:
    """Move what is still staged into the target: the old content is aside, all of it."""
    skip = {staging.name, aside.name}
    moved = move_entries(staging, target, skip) if staging.is_dir() else 0
    fsync_dir(target)
    return moved


def mark_forward(storage: LocalStorage, entry: journal.Entry) -> None:
    """The swap's commit point: the old content is all aside (fsynced); from here on the next
    command finishes the swap instead of undoing it. Written atomically over the entry."""
    marked = dataclasses.replace(entry, data={**entry.data, "phase": "forward"})
    storage.put_bytes(marked.key, json.dumps(marked.to_json(), indent=2, sort_keys=True).encode())


def folder_meta(path: Path) -> dict[str, int]:
    """A folder's own owner, mode and mtime: what a rolled-back swap puts back (its renames
    change the folder's mtime)."""
    st = os.stat(path)
    return {
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime_ns": st.st_mtime_ns,
    }


def _record(journal_to: SwapJournal | None, kind: str, **data: Any) -> journal.Entry | None:
    if journal_to is None:
        return None
    return journal.record(journal_to.storage, kind, journal_to.data(**data), journal_to.purpose)


def _scratch_home(target: Path) -> Path:
    """Beside the target when that is the same filesystem (renames must not cross one)."""
    parent = target.resolve().parent
    same_fs = os.stat(parent).st_dev == os.stat(target).st_dev
    return parent if same_fs and os.access(parent, os.W_OK | os.X_OK) else target


def remove_tree(path: Path) -> bool:
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
