"""``restore_tree``: a snapshot (or one path of it) into a new folder, all or nothing.

The whole tree (or the part asked for) is read and checked (:mod:`.plan`) before anything is
made. Then, in a private staging folder beside ``dest`` (inside it when ``dest`` is a mount
point, which cannot be renamed over): folders, symlinks, file data as the chunks arrive pack
by pack (:mod:`.writes`), hardlinks; symlink chains are resolved on the finished tree; owner
(when run as root), mode and mtime of folders are set deepest first. The staging folder is then
renamed to ``dest``: a restore that fails or is killed leaves ``dest`` as it was (a killed one
leaves a hidden ``.NAME.safehold-restore-*`` folder beside it, never a half tree in it).

``dest`` must be absent or an empty folder: a restore never merges into or replaces data.
With ``include`` only that path of the snapshot comes back, at the same place below ``dest``
(``include="docs/a.txt"`` makes ``dest/docs/a.txt``), with its folders' metadata.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

from ...errors import RestoreError, SafeholdError, StorageFull, UsageError
from ...model import Event, EventSink, null_sink
from ...sources.tar.unpack import set_meta
from ..store import ChunkStore
from .chunks import Reading
from .entries import paused_gc
from .plan import Plan, RestoreFacts, make_plan, refused
from .subset import clean_path, load_entries, open_tree, own_hardlinks
from .writes import DataWriter


def restore_tree(
    store: ChunkStore,
    snapshot_id: str,
    dest: Path,
    *,
    include: str | None = None,
    events: EventSink = null_sink,
) -> RestoreFacts:
    """Restore snapshot ``snapshot_id`` (or its path ``include``) as the folder ``dest``."""
    dest = Path(os.path.abspath(dest))
    inside = _check_dest(dest)
    path = clean_path(include) if include is not None else None
    with paused_gc():
        reading = Reading(store)
        index = open_tree(reading, snapshot_id)
        entries = load_entries(reading, index, path)
        if path:
            entries = own_hardlinks(reading, index, entries)
        plan = make_plan(entries, dest)
        staging = _staging(dest, inside)
        try:
            _check_room(staging, plan.stored, dest)
            _build(reading, staging, plan, dest)
            _swap(staging, dest, inside)
        except OSError as exc:
            _remove(staging)
            raise _failed(dest, exc) from exc
        except BaseException:
            _remove(staging)
            raise
    events(
        Event(
            "restore",
            f"restored {plan.facts.files} files into {dest}",
            "info",
            plan.facts.to_json(),
        )
    )
    return plan.facts


def _check_dest(dest: Path) -> bool:
    """Refuse a ``dest`` that holds anything; True when it is a mount point (staging inside)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(
            f"refusing to restore into {dest}: it exists and is not a folder",
            hint="give a new folder (or an empty one) as the destination",
        )
    if os.listdir(dest):
        raise UsageError(
            f"refusing to restore into {dest}: the folder is not empty",
            hint="give a new folder (or an empty one) as the destination; nothing was changed",
        )
    return os.path.ismount(dest)


def _staging(dest: Path, inside: bool) -> Path:
    name = f".{dest.name}.safehold-restore-{secrets.token_hex(4)}"
    if not inside:
        dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest / name if inside else dest.parent / name
    staging.mkdir(mode=0o700)
    return staging


def _check_room(staging: Path, stored: int, dest: Path) -> None:
    fs = os.statvfs(staging)
    free = fs.f_bavail * fs.f_frsize
    if stored > free:
        raise StorageFull(
            f"cannot restore into {dest}: the snapshot holds {stored} bytes of file data and "
            f"only {free} are free on its filesystem",
            hint="free space there, or restore part of it with --include; nothing was changed",
        )


def _build(store: Reading, staging: Path, plan: Plan, dest: Path) -> None:
    base = os.fspath(staging)
    owners = os.geteuid() == 0
    for entry in plan.dirs[1:]:  # writable while their content arrives; real modes at the end
        os.mkdir(f"{base}/{entry.path}", 0o700)
    for entry in plan.symlinks:
        link = f"{base}/{entry.path}"
        os.symlink(entry.link, link)
        if owners:
            os.lchown(link, entry.uid, entry.gid)
        os.utime(link, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
    # A setgid folder gives its group to what is made in it: then owners are always set.
    setgid = os.stat(staging).st_mode & stat.S_ISGID
    creator = None if setgid else (os.geteuid(), os.getegid())
    writer = DataWriter(base, plan.files, owners=owners, creator=creator)
    writer.run(store.read_last(writer.chunks))
    for entry in plan.hardlinks:
        os.link(f"{base}/{entry.link}", f"{base}/{entry.path}", follow_symlinks=False)
    _check_chains(staging, plan, dest)
    # Deepest first: a folder's mtime (or a read-only mode) only once its content is complete.
    for entry in sorted(plan.dirs, key=lambda e: e.path.count("/") + bool(e.path), reverse=True):
        folder = Path(f"{base}/{entry.path}") if entry.path else staging
        set_meta(folder, entry.uid, entry.gid, entry.mode, entry.mtime_ns, owners=owners)


def _check_chains(staging: Path, plan: Plan, dest: Path) -> None:
    """Each link alone stays inside (checked by the plan); a chain of them must too."""
    root = os.path.realpath(staging)
    for entry in plan.symlinks:
        real = os.path.realpath(f"{staging}/{entry.path}")
        if real != root and not real.startswith(root + "/"):
            raise refused(dest, entry.path, "resolves outside the folder")


def _swap(staging: Path, dest: Path, inside: bool) -> None:
    if not inside:
        try:
            # Over an empty folder too: rename(2) replaces an empty directory in one step.
            os.rename(staging, dest)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise UsageError(
                    f"refusing to restore into {dest}: something was written there meanwhile",
                    hint="give a new folder as the destination; nothing was changed",
                ) from None
            raise
        return
    # A mount point: its content moves in, entry by entry, then takes the root's metadata.
    st = os.stat(staging)
    for name in os.listdir(staging):
        os.rename(staging / name, dest / name)
    os.rmdir(staging)  # before the metadata: it changes the folder's mtime
    owners = os.geteuid() == 0
    set_meta(dest, st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns, owners=owners)


def _failed(dest: Path, exc: OSError) -> SafeholdError:
    what = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(
            f"cannot restore into {dest}: the filesystem is full{where}",
            hint="free space there, or restore part of it with --include; nothing was changed",
        )
    return RestoreError(
        f"cannot restore into {dest}: {what}{where}",
        hint="nothing was changed in the destination; fix the cause and restore again",
    )


def _remove(staging: Path) -> None:
    """Remove a staging folder whatever modes its folders ended with."""

    def unlock(func: Any, path: str, exc_info: Any) -> None:
        # A read-only folder (its metadata was set) keeps its entries: open it up, retry.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            if func in (os.unlink, os.rmdir):
                func(path)

    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(staging, onerror=unlock)
