"""The point-in-time-recovery part of ``safehold prune``: base backups (``base/``) and the WAL
archive (``wal/``) of one location, judged by ``pitr_retention.decide`` and removed under the
lock the caller (``prune_location``) holds.

Order, each step safe to stop after: base backups first (record, the commit point, then the
archive), so no base backup is ever left whose WAL is gone; then WAL files (sidecar, the commit
point, then the data). ``wal-push`` takes no lock, but it only adds files at the end of the
stream, which this never removes. What a run killed between the two deletes leaves (an archive
without its record, WAL data without its sidecar) is cleaned by the next run when it is
positioned where nothing kept needs it: a base archive older than the newest base record (a
base backup being written right now is newer), WAL data before every kept base backup.

An unreadable base record stops the PITR part (with a warning): without its start segment
nobody can say which WAL it needs, and when in doubt prune keeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ...crypto import SUFFIX
from ...model import Event, EventSink, Status
from ...retention import Policy
from ...sinks.log import human_bytes
from ...storage import Storage
from . import archive as wal
from .base import BASE, BaseBackup
from .retention import PitrPlan, decide, needs, segment_part

_DATA_SUFFIXES = (".zst", f".zst{SUFFIX}")  # wal/<name><suffix>; the sidecar says which one


@dataclass(frozen=True)
class PitrPrune:
    plan: PitrPlan
    dry_run: bool
    bases: dict[str, BaseBackup] = field(default_factory=dict)
    sizes: dict[str, int | None] = field(default_factory=dict)  # stored size per base backup
    cleaned: list[str] = field(default_factory=list)  # orphaned keys of interrupted prunes

    @property
    def freed_bytes(self) -> int:
        return sum(self.sizes.get(name) or 0 for name in self.plan.bases_removed)

    def to_json(self) -> dict[str, Any]:
        bases = []
        for decision in self.plan.bases:
            name = decision.candidate.name
            entry = decision.to_json()
            entry["size"] = self.sizes.get(name)
            entry["start_segment"] = self.bases[name].start_segment if name in self.bases else None
            bases.append(entry)
        removed = [d.to_json() for d in self.plan.wal if not d.keep]
        oldest = self.plan.oldest_kept
        return {
            "base_backups": bases,
            "base_removed": self.plan.bases_removed,
            "base_freed_bytes": self.freed_bytes,
            "wal": {
                "archived": len(self.plan.wal),
                "kept": len(self.plan.wal) - len(removed),
                "removed": removed,
                "oldest_kept_base": oldest.name if oldest else None,
                "keep_from_segment": oldest.start_segment if oldest else None,
                "cleaned": self.cleaned,
            },
        }


def read_bases(storage: Storage) -> tuple[list[BaseBackup], list[str]]:
    """Committed base backups, oldest first, and the keys of records that cannot be read."""
    bases, bad = [], []
    for key in storage.list(BASE):
        if not key.endswith(".json") or key.rsplit("/", 1)[-1].startswith("."):
            continue
        try:
            bases.append(BaseBackup.from_json(json.loads(storage.read_bytes(key))))
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError, AttributeError):
            bad.append(key)
    return sorted(bases, key=lambda b: (b.finished, b.name)), bad


def base_status(storage: Storage, base: BaseBackup) -> tuple[Status, int | None]:
    try:
        size = storage.size(base.data_key)
    except FileNotFoundError:
        return "missing", None
    return ("ok" if size == base.size else "damaged"), size


def plan(
    storage: Storage, policy: Policy, now: datetime, *, dry_run: bool, sink: EventSink
) -> PitrPrune | None:
    """What prune does to the PITR files of ``storage``; None when it has none (or a base
    record is unreadable: then nothing of them is touched)."""
    bases, bad = read_bases(storage)
    names = wal.archived(storage)
    if bad:
        sink(Event("prune", f"base backups and WAL left alone: cannot read {', '.join(bad)}",
                   "warning"))  # fmt: skip
        return None
    if not bases and not names:
        return None
    status: dict[str, Status] = {}
    sizes: dict[str, int | None] = {}
    for base in bases:
        status[base.name], sizes[base.name] = base_status(storage, base)
    decided = decide(bases, names, policy, now, status=status)
    kept = [b for b, d in zip(bases, decided.bases, strict=True) if d.keep]
    cleaned = _orphans(storage, bases, kept, set(names))
    result = PitrPrune(decided, dry_run, {b.name: b for b in bases}, sizes, cleaned)
    verb = "would remove" if dry_run else "removing"
    message = (
        f"pitr {storage.description}: kept {len(kept)} base backups, {verb} "
        f"{len(decided.bases_removed)} ({human_bytes(result.freed_bytes)}); WAL: "
        f"{wal_summary(result)}"
    )
    sink(Event("prune", message, data={"base_removed": len(decided.bases_removed),
                                       "wal_removed": len(decided.wal_removed)}))  # fmt: skip
    return result


def apply(
    storage: Storage, result: PitrPrune, sink: EventSink, delete: Callable[[Storage, str], None]
) -> None:
    """Remove what ``result`` decided; ``delete(storage, key)`` maps storage errors."""
    for decision in result.plan.bases:
        if decision.keep:
            continue
        base = result.bases[decision.candidate.name]
        record_first = base.keys()
        for key in record_first:
            delete(storage, key)
        size = result.sizes.get(base.name)
        shown = human_bytes(size) if size is not None else "no file"
        sink(Event("prune", f"removed base backup {base.name} ({shown}): {decision.reasons[0]}",
                   data={"artifact": base.name}))  # fmt: skip
    gone = result.plan.wal_removed
    for name in gone:
        for key in wal.stored_keys(storage, name):
            delete(storage, key)
    for key in result.cleaned:
        delete(storage, key)
    if gone:
        sink(Event("prune", f"removed {len(gone)} WAL files {_span(gone)}"))


def wal_summary(result: PitrPrune, *, limit: int = 6) -> str:
    """One line: how many WAL files stay, and which go (a range when many) and why."""
    plan_ = result.plan
    gone = plan_.wal_removed
    kept = len(plan_.wal) - len(gone)
    history = sum(d.name.endswith(".history") for d in plan_.wal)
    text = f"{len(plan_.wal)} archived, keep {kept}"
    if history:
        text += f" (incl. {history} timeline history)"
    if not plan_.bases:
        return text + " (no base backup: no WAL is removed without one)"
    if not gone:
        return text + ", remove none"
    names = ", ".join(gone) if len(gone) <= limit else _span(gone)
    reason = next(d.reason for d in plan_.wal if not d.keep)
    return f"{text}, remove {len(gone)}: {names} ({reason})"


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]}"


def _orphans(
    storage: Storage, bases: list[BaseBackup], kept: list[BaseBackup], committed: set[str]
) -> list[str]:
    """Keys an interrupted prune left behind (see the module docstring), in removal order."""
    found: list[str] = []
    referenced = {b.data_key for b in bases}
    newest = max((b.name for b in bases), default="")
    for key in storage.list(BASE):
        leaf = key.rsplit("/", 1)[-1]
        if key.endswith(".json") or leaf.startswith(".") or key in referenced:
            continue
        if leaf.startswith("base_") and leaf[:20] < newest:  # base_YYYYMMDD_HHMMSS
            found.append(key)
    if not kept:
        return found
    for key in storage.list(wal.PREFIX):
        leaf = key.rsplit("/", 1)[-1]
        suffix = next((s for s in _DATA_SUFFIXES if leaf.endswith(s)), None)
        if suffix is None or leaf.startswith("."):
            continue
        name = leaf[: -len(suffix)]
        segment = segment_part(name)
        if name in committed or segment is None:
            continue
        if not any(needs(base, segment) for base in kept):
            found.append(key)
    return found
