"""Retention for chunk store snapshots: the seed files' GFS policy, applied to snapshots.

Each product snapshot (``database:NAME``, ``volume:NAME``) becomes a ``retention.Candidate``
named by its snapshot id, of its kind and NAME, created at the snapshot's time, so the rules
(and the reasons) are exactly those of ``safehold prune`` for seed files, judged per target.
Snapshots of other targets (written by the chunkstore library directly) are never judged and
never removed; a warning names them. Pins do not apply to snapshots yet.

Unless ``dry_run``: the snapshots the policy does not keep are forgotten (their objects
deleted), then the store is pruned under its exclusive lock (``ChunkStore.prune``), which
removes the data no remaining snapshot needs. Retention's safety net (a decision that would
remove every good snapshot of a target) raises before anything is forgotten. A prune that
cannot take the lock (a backup is running: ``LockBusy``) leaves the snapshots forgotten and
their data for the next prune.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from ... import retention
from ...chunkstore import ChunkStore
from ...chunkstore.pins import Pin
from ...chunkstore.prune import PruneReport
from ...chunkstore.snapshots import SnapshotInfo
from ...errors import UsageError
from ...model import Event, EventSink, null_sink
from ...sinks.log import human_bytes
from .targets import split_target


@dataclass(frozen=True)
class SnapshotPrune:
    """What ``prune_snapshots`` decided and did."""

    decisions: list[retention.Decision]  # candidate.name is the snapshot id
    forgotten: list[str]  # snapshot ids forgotten (dry run: none)
    store: PruneReport | None  # the store's prune (None on a dry run)
    dry_run: bool

    @property
    def kept(self) -> list[str]:
        return [d.candidate.name for d in self.decisions if d.keep]

    @property
    def removed(self) -> list[str]:
        """The snapshot ids the policy does not keep (forgotten, or would be on a dry run)."""
        return [d.candidate.name for d in self.decisions if not d.keep]

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "decisions": [d.to_json() for d in self.decisions],
            "removed": self.removed,
            "forgotten": list(self.forgotten),
            "store": asdict(self.store) if self.store is not None else None,
        }


def prune_snapshots(
    store: ChunkStore,
    policy: retention.Policy,
    now: datetime,
    *,
    dry_run: bool,
    sink: EventSink = null_sink,
    grace: timedelta | None = None,
) -> SnapshotPrune:
    """Apply ``policy`` to the store's product snapshots; ``dry_run`` decides and changes
    nothing. ``grace``: the store prune's grace period for young packs (its default when
    None)."""
    policy.check()
    candidates = _candidates(store.snapshots(), store.pins(), sink)
    decisions = retention.decide(candidates, policy, now)  # may refuse: nothing changed yet
    doomed = [d.candidate.name for d in decisions if not d.keep]
    if dry_run:
        result = SnapshotPrune(decisions, [], None, dry_run=True)
        _announce(result, sink)
        return result
    forgotten = store.forget(doomed)
    for decision in decisions:
        if not decision.keep:
            c = decision.candidate
            sink(
                Event(
                    "prune",
                    f"forgot snapshot {c.name} of {c.kind} {c.target}: {decision.reasons[0]}",
                    data={"snapshot": c.name, "kind": c.kind, "target": c.target},
                )
            )
    report = store.prune() if grace is None else store.prune(grace=grace)
    result = SnapshotPrune(decisions, forgotten, report, dry_run=False)
    _announce(result, sink)
    return result


def _candidates(
    infos: list[SnapshotInfo], pins: dict[str, Pin], sink: EventSink
) -> list[retention.Candidate]:
    candidates: list[retention.Candidate] = []
    for info in infos:
        try:
            kind, name = split_target(info.target)
        except UsageError:
            sink(
                Event(
                    "prune",
                    f"snapshot {info.id} of {info.target!r} is not a database or volume "
                    "snapshot: retention leaves it alone",
                    "warning",
                    data={"snapshot": info.id, "target": info.target},
                )
            )
            continue
        pinned = pins.get(info.id)
        candidates.append(
            retention.Candidate(
                name=info.id,
                kind=kind,
                target=name,
                created=info.time,
                pinned=pinned is not None and pinned.until is None,
                pinned_until=pinned.until if pinned is not None else None,
                set_id=info.group["id"] if info.group else None,  # sets are kept whole
            )
        )
    return candidates


def _announce(result: SnapshotPrune, sink: EventSink) -> None:
    kept, removed = len(result.kept), len(result.removed)
    data: dict[str, Any] = {"kept": kept, "removed": removed, "dry_run": result.dry_run}
    if result.store is None:
        message = f"snapshots: kept {kept}, would forget {removed}"
    else:
        report = result.store
        data.update(
            freed_bytes=report.bytes_removed,
            removed_packs=len(report.removed_packs),
            repacked_packs=len(report.repacked_packs),
        )
        message = (
            f"snapshots: kept {kept}, forgot {len(result.forgotten)}; the store prune "
            f"freed {human_bytes(report.bytes_removed)} ({len(report.removed_packs)} packs "
            f"removed, {len(report.repacked_packs)} repacked)"
        )
        if report.kept_young:
            message += f", {len(report.kept_young)} unneeded packs kept for the grace period"
        if report.refused:
            message += f", {len(report.refused)} deletions refused by the storage"
    sink(Event("prune", message, data=data))
