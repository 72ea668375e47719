"""Finishing what a killed volume (or folder) restore left behind, from its journal entries.

``staging_folder``: a folder the archive was being unpacked into; nothing of it reached the
target, so it is removed. ``volume_swap``: the target's entries were being exchanged for the
staged ones (:func:`.extract.extract_tree`). Before the entry's mark (``phase: aside``) only
old entries had moved, into the aside folder: they go back, and the restore is undone. After
it (``phase: forward``) every old entry was aside (fsynced before the mark was written): the
staged entries still waiting move in, the folder gets the archive root's owner, mode and
mtime (recorded in the entry), and the restore is finished; rolled back, the folder gets its
own owner, mode and mtime back. Either way the staging and
aside folders are then removed, and the message says which it was.

Each resolver holds the volume's lock (exclusive) while it works, so a run starting meanwhile
(another command's recovery, or a restore through the library) cannot act on the same folders.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ...errors import LockBusy, SafeholdError
from ...lock import volume_lock
from ...sources.tar.unpack import set_meta
from .. import journal
from .extract import remove_tree, roll_back, roll_forward

# The writer is dead: only another recovering command could hold the lock; it will be brief.
LOCK_WAIT_S = 10.0


@journal.resolver("staging_folder")
def remove_staging(entry: journal.Entry, context: journal.Context) -> str:
    staging = Path(entry.data["path"])
    with locked(entry, context):
        if not remove_tree(staging):
            raise SafeholdError(f"cannot remove the staging folder {staging}")
    return (
        f"{_what(entry)}: removed the staging folder of the interrupted restore of {_source(entry)}"
    )


@journal.resolver("volume_swap")
def settle_swap(entry: journal.Entry, context: journal.Context) -> str:
    target = Path(entry.data["target"])
    staging = Path(entry.data["staging"])
    aside = Path(entry.data["aside"])
    forward = entry.data.get("phase") == "forward"
    with locked(entry, context):
        if not context.storage.exists(entry.key):
            return f"{_what(entry)}: already settled by another run"
        if not target.is_dir():
            done = "its folder no longer exists; removed what the restore left"
        else:
            try:
                if forward:
                    moved = roll_forward(target, staging, aside)
                    _root_meta(target, entry.data.get("root"))
                    done = f"was finished ({moved} entries still to move were moved in)"
                else:
                    moved = roll_back(target, staging, aside)
                    _root_meta(target, entry.data.get("before"))
                    done = f"was rolled back ({moved} entries moved back)"
            except OSError as exc:
                raise SafeholdError(
                    f"cannot settle the interrupted restore of {target}: {exc.strerror or exc}"
                ) from exc
        left = [str(p) for p in (staging, aside) if not remove_tree(p)]
        if left:
            raise SafeholdError(f"the restore of {target} was settled but {left} remain")
    return f"{_what(entry)}: the interrupted restore of {_source(entry)} {done}"


def _root_meta(target: Path, meta: dict[str, int] | None) -> None:
    """The folder's own owner, mode and mtime: the archive's when finished, as the killed run
    would have set them last; its own from before when rolled back (owners only as root, like
    the extraction)."""
    if meta:
        set_meta(
            target, meta["uid"], meta["gid"], meta["mode"], meta["mtime_ns"],
            owners=os.geteuid() == 0,
        )  # fmt: skip


@contextlib.contextmanager
def locked(entry: journal.Entry, context: journal.Context) -> Iterator[None]:
    """The volume's lock the interrupted restore held (its entry names it), for a resolver."""
    key = entry.data.get("lock")
    if not key:
        yield
        return
    try:
        with volume_lock(
            context.storage.root,
            str(key),
            exclusive=True,
            timeout=LOCK_WAIT_S,
            purpose="safehold recovery of an interrupted restore",
        ):
            yield
    except LockBusy as exc:
        raise SafeholdError(f"{_what(entry)} is busy ({exc.message})") from exc


def _what(entry: journal.Entry) -> str:
    return str(entry.data.get("what") or entry.data.get("target"))


def _source(entry: journal.Entry) -> str:
    return str(entry.data.get("source") or "an archive")
