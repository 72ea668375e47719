"""An export stopped before its manifest is written leaves no file behind (journal resolver).

The seed files a snapshot becomes are named after the snapshot's time, so every export of one
snapshot makes the same names. A file left there without its manifest (a kill after the dump
was renamed into place, before its globals and manifest were written) would show as
``unverified/foreign`` and make every later restore of that snapshot refuse ("already exists
and holds another backup"). So the export writes its names down (``operations.journal``, kind
``snapshot_export``) before the first file, and crosses them out once the artifact's manifest
is written. An export that fails or hears SIGTERM removes what it wrote itself; one killed
outright is cleaned by the next command that recovers (``list``, ``restore``...) or the next
export, under the repository lock. Once the artifact's manifest exists the export committed
and nothing is removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from ... import naming
from ...errors import SafeholdError
from ...model import EventSink
from ...storage import LocalStorage
from .. import journal

KIND = "snapshot_export"
PURPOSE = "safehold snapshot export"


@contextlib.contextmanager
def guarded(storage: LocalStorage, snapshot_id: str, names: Sequence[str]) -> Iterator[None]:
    """Write ``names`` (the artifact first, then its companions) into the journal, run the
    block (which writes them and commits the artifact's manifest), cross them out. On an error
    or an interruption, what the block wrote is removed unless the manifest is written."""
    data = {"snapshot": snapshot_id, "artifacts": list(names)}
    entry = journal.record(storage, KIND, data, PURPOSE)
    try:
        yield
    except BaseException:
        try:
            remove_uncommitted(storage, names)
        except SafeholdError:
            pass  # the entry stays: the next command removes them
        else:
            journal.done(storage, entry)
        raise
    journal.done(storage, entry)


def recover_exports(storage: LocalStorage, sink: EventSink) -> None:
    """Clean what killed exports left (the caller holds the repository lock)."""
    journal.recover(journal.Context(storage), sink, kinds={KIND})


def remove_uncommitted(
    storage: LocalStorage, names: Sequence[str], pid: int | None = None
) -> list[str]:
    """Remove ``names`` and their manifests (and the unfinished files process ``pid`` left
    while writing them) unless the first one's manifest is written; what was removed."""
    if not names or storage.exists(naming.manifest_key(names[0])):
        return []
    removed: list[str] = []
    for name in names:
        if "/" in name or naming.parse(name) is None:
            continue  # never remove a file whose name an export does not make
        for key in (name, naming.manifest_key(name)):
            if pid is not None:
                removed += storage.remove_partials_of(key, pid)
            if storage.exists(key):
                storage.delete(key)
                removed.append(key)
    return removed


@journal.resolver(KIND)
def _forget_export(entry: journal.Entry, context: journal.Context) -> str:
    names = [str(name) for name in entry.data.get("artifacts", [])]
    about = f"export of snapshot {entry.data.get('snapshot')}"
    if names and context.storage.exists(naming.manifest_key(names[0])):
        return f"its {about} had committed ({names[0]}): nothing to remove"
    removed = remove_uncommitted(context.storage, names, entry.pid)
    if not removed:
        return f"its {about} had written nothing yet"
    return f"removed {', '.join(removed)}: what its unfinished {about} had written"
