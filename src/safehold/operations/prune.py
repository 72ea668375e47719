"""Prune one repository location by the retention policy (``safehold prune``); pins (``pins``).

Under the exclusive repository lock (``--dry-run``: shared, and nothing is written): scan
(setting aside what an interrupted prune left), read pins and verify records, ask
``retention.decide``, move the ``latest`` links to kept backups, then for each backup it does
not keep:

1. write an intent record ``.safehold/pruning/<artifact>.json`` (name, size, sha256, reason);
2. delete the manifest: from here on the backup no longer exists for any reader;
3. delete the artifact, then its verify record and ended pin, then the intent record.

A prune killed between 2 and 3 leaves a file without a manifest, which looks foreign; its
intent record says it is ours, so the next prune deletes it when its size still matches (a
pinned one is never deleted). Also cleaned: verify records and pins of backups that are gone,
set records whose members are all gone, and ``latest`` links (repointed to the newest kept
good backup of their target, or removed when their format or target has none left). Safety
copies go after ``safety_days``; a dump's globals go with the dump (``catalog.companions``).
Files without a manifest and no intent record are never removed: they are not ours.
PITR base backups and WAL of the location are pruned too, by ``prune_pitr``.

Works over the ``Storage`` contract, one location per call (``prune_location``); only the lock
(and the ``latest`` links, which exist on local disk only) needs ``LocalStorage`` today.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .. import catalog, naming, retention
from ..errors import IntegrityError
from ..lock import repository_lock
from ..model import BackupRecord, Event, EventSink, null_sink
from ..retention import Candidate, Decision, Policy
from ..sinks.log import human_bytes
from ..storage import LocalStorage, Storage
from ._pipeline import repository_session
from .checks.verify import VERIFY_DIR, read_verify, verify_key
from .pins import PINS_DIR, Pin, pin, pin_key, read_pins, unpin
from .pins import delete as _delete
from .pins import records as _records
from .pins import require_repository as _require_repository
from .pitr import prune as prune_pitr

PRUNING_DIR = naming.PRUNING_DIR
# Pins live in ``pins``; named here too, where callers have always found them.
__all__ = [
    "PINS_DIR",
    "PRUNING_DIR",
    "Pin",
    "PruneResult",
    "intent_key",
    "pin",
    "pin_key",
    "prune",
    "prune_location",
    "read_pins",
    "unpin",
]


def intent_key(artifact: str) -> str:
    return f"{PRUNING_DIR}/{artifact}.json"


@dataclass(frozen=True)
class PruneResult:
    location: str
    dry_run: bool
    decisions: list[Decision]
    removed: list[str]  # backups removed (dry run: that would be)
    freed_bytes: int  # their artifacts' sizes, plus orphaned artifacts cleaned
    cleaned: list[str]  # orphaned keys removed: interrupted prunes, verify records, pins
    sets_removed: list[str] = field(default_factory=list)
    links_removed: list[str] = field(default_factory=list)
    pins: dict[str, Pin] = field(default_factory=dict)
    sizes: dict[str, int | None] = field(default_factory=dict)
    pitr: prune_pitr.PitrPrune | None = None  # base backups and WAL, when there are any

    @property
    def kept(self) -> int:
        return sum(d.keep for d in self.decisions)

    def to_json(self) -> dict[str, Any]:
        backups = []
        for decision in self.decisions:
            pin = self.pins.get(decision.candidate.name)
            entry = decision.to_json()
            entry["size"] = self.sizes.get(decision.candidate.name)
            entry["pin"] = pin.to_json() if pin else None
            backups.append(entry)
        return {
            "location": self.location,
            "dry_run": self.dry_run,
            "backups": backups,
            "removed": self.removed,
            "freed_bytes": self.freed_bytes,
            "cleaned": self.cleaned,
            "sets_removed": self.sets_removed,
            "links_removed": self.links_removed,
            **(self.pitr.to_json() if self.pitr else {}),
        }


def prune(
    storage: LocalStorage,
    policy: Policy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    sink: EventSink = null_sink,
    lock_timeout: float = 300.0,
    primary: str | None = None,
) -> PruneResult:
    """Apply ``policy`` to the location ``storage``; ``dry_run`` decides and changes nothing;
    ``primary``: the database the seed's ``latest`` names follow (``catalog.latest_link_plan``)."""
    policy.check()  # before the lock: a bad policy is a usage error, not a wait
    _require_repository(storage)
    moment = now or datetime.now(UTC)
    if dry_run:
        purpose = "safehold prune --dry-run"
        with repository_lock(storage.root, exclusive=False, timeout=lock_timeout, purpose=purpose):
            return prune_location(storage, policy, moment, dry_run=True, sink=sink, primary=primary)
    with repository_session(
        storage, lock_timeout=lock_timeout, purpose="safehold prune", sink=sink
    ):
        return prune_location(storage, policy, moment, dry_run=False, sink=sink, primary=primary)


def prune_location(
    storage: Storage,
    policy: Policy,
    now: datetime,
    *,
    dry_run: bool,
    sink: EventSink,
    primary: str | None = None,
) -> PruneResult:
    """The work of ``prune`` on any ``Storage``; the caller holds the location's lock."""
    records = catalog.scan(storage)
    pins = read_pins(storage)
    orphaned, cleaned = _orphans(storage, records, pins, sink)
    records = [r for r in records if r.name not in orphaned]
    dumps = _dumps_by_globals(records)
    decisions = retention.decide(
        [_candidate(storage, r, pins, dumps) for r in records], policy, now
    )
    by_name = {r.name: r for r in records}
    # A dump goes before its globals: a dump is never left without what it needs.
    doomed = sorted(
        (d for d in decisions if not d.keep), key=lambda d: d.candidate.kind == "globals"
    )
    gone = {d.candidate.name for d in doomed}
    kept = [r for r in records if r.name not in gone]
    freed = sum(by_name[name].size or 0 for name in gone) + sum(orphaned.values())
    sets_gone = _sets_gone(storage, {r.name for r in kept}, sink)
    primary = primary or catalog.seed_link_database(storage, records)
    links = catalog.stale_latest_links(storage, catalog.latest_link_plan(kept, primary))
    pitr = prune_pitr.plan(storage, policy, now, dry_run=dry_run, sink=sink)
    if not dry_run:
        # Links first: they never point at a removed backup, not even for a moment.
        catalog.update_latest_links(storage, kept, primary)
        for decision in doomed:
            ended = decision.candidate.pinned_until is not None
            _remove(storage, by_name[decision.candidate.name], decision.reasons[0], sink, ended)
        for key in cleaned:
            _delete(storage, key)
        for set_id in sets_gone:
            _delete(storage, naming.set_key(set_id))
        if pitr is not None:
            prune_pitr.apply(storage, pitr, sink, _delete)
    result = PruneResult(
        location=storage.description,
        dry_run=dry_run,
        decisions=decisions,
        removed=sorted(gone),
        freed_bytes=freed,
        cleaned=cleaned,
        sets_removed=sets_gone,
        links_removed=links,
        pins=pins,
        sizes={r.name: r.size for r in records},
        pitr=pitr,
    )
    _announce(result, sink)
    return result


def _dumps_by_globals(records: list[BackupRecord]) -> dict[str, str]:
    """Globals artifact -> its dump: as the dump's manifest names it, else by the stamp."""
    dumps: dict[str, str] = {}
    for record in records:
        if record.kind == "database":
            dumps[naming.globals_artifact(record.name)] = record.name
            dumps.update(dict.fromkeys(catalog.companions(record.manifest), record.name))
    return dumps


def _candidate(
    storage: Storage, record: BackupRecord, pins: dict[str, Pin], dumps: dict[str, str]
) -> Candidate:
    manifest = record.manifest
    parsed = naming.parse(record.name)
    target = manifest.target if manifest else (parsed.target if parsed else None)
    check = read_verify(storage, record.name)
    held = pins.get(record.name)
    return Candidate(
        name=record.name,
        kind=record.kind,
        target=target,
        created=record.created,
        status=record.status,
        pinned=held is not None and held.until is None,
        pinned_until=held.until if held is not None else None,
        verified_ok=check is not None and check.ok,
        set_id=manifest.set_id if manifest else None,
        companion_of=dumps.get(record.name) if record.kind == "globals" else None,
    )


def _remove(
    storage: Storage, record: BackupRecord, reason: str, sink: EventSink, ended_pin: bool
) -> None:
    """Intent, manifest, artifact, verify record, ended pin, intent: each step is safe to stop
    after."""
    name = record.name
    intent = {
        "artifact": name,
        "size": record.size,
        "sha256": record.sha256,
        "reason": reason,
        "at": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
    }
    storage.put_bytes(intent_key(name), json.dumps(intent, sort_keys=True).encode() + b"\n")
    # An ended pin goes with its backup (a pin that holds never lets it get here).
    pin_keys = [pin_key(name)] if ended_pin else []
    for key in (naming.manifest_key(name), name, verify_key(name), *pin_keys, intent_key(name)):
        _delete(storage, key)
    size = human_bytes(record.size) if record.size is not None else "no file"
    sink(Event("prune", f"removed {name} ({size}): {reason}", data={"artifact": name}))


def _orphans(
    storage: Storage, records: list[BackupRecord], pins: dict[str, Pin], sink: EventSink
) -> tuple[dict[str, int], list[str]]:
    """Artifacts an interrupted prune left (name -> size), and every key to clean, in order."""
    by_name = {r.name: r for r in records}
    orphaned: dict[str, int] = {}
    keys: list[str] = []
    for key in _records(storage, PRUNING_DIR):
        name = naming.artifact_of(key)
        record = by_name.get(name)
        if record is not None and record.status == "unverified/foreign" and record.size is not None:
            if record.size == _recorded_size(storage, key) and name not in pins:
                orphaned[name] = record.size
                keys.append(name)
            else:
                sink(Event("prune", f"{name} has an unfinished removal record but does not match "
                           "it (or is pinned): left in place", "warning"))  # fmt: skip
        keys.append(key)
    present = set(by_name) - set(orphaned)
    for folder in (VERIFY_DIR, PINS_DIR):
        keys += [k for k in _records(storage, folder) if naming.artifact_of(k) not in present]
    return orphaned, keys


def _sets_gone(storage: Storage, remaining: set[str], sink: EventSink) -> list[str]:
    try:
        sets = catalog.read_sets(storage)
    except IntegrityError as exc:
        sink(Event("prune", f"set records not cleaned: {exc.message}", "warning"))
        return []
    return [s.id for s in sets if not remaining.intersection(s.members)]


def _announce(result: PruneResult, sink: EventSink) -> None:
    verb, kept = "would remove" if result.dry_run else "removed", result.kept
    extra = f", {len(result.cleaned)} orphaned records" if result.cleaned else ""
    message = f"prune {result.location}: kept {kept}, {verb} {len(result.removed)} backups "
    data = {"removed": len(result.removed), "kept": kept, "freed_bytes": result.freed_bytes}
    message += f"({human_bytes(result.freed_bytes)}){extra}"
    sink(Event("prune", message, data={**data, "dry_run": result.dry_run}))


# --- helpers ----------------------------------------------------------------------------------


def _recorded_size(storage: Storage, key: str) -> object:
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return json.loads(storage.read_bytes(key))["size"]
    return None
