"""Every host of a bucket at once (``status --fleet``, ``report --fleet``).

Hosts sharing a bucket each write under their own prefix (``hosts/host-a``, ``hosts/host-b``);
the fleet is every prefix beside this host's, under the same parent (with no parent, the
bucket's top-level folders). A folder counts as a host only when it holds safehold's own
objects (``.safehold/``: manifests, sets, drill records); anything else in the bucket is not
a host and is left out.

Each host is read read-only from one recursive listing (``storage.listed``): its manifests
and records are fetched, never a backup's body, and nothing is locked or written. It is judged
by ``read_status``, the same rules as ``safehold status``, against the objectives its
repository carries (``.safehold/objectives.json``, written by its copies) or, without them, the
reader's. A host that cannot be read is UNKNOWN with the reason; the others are still judged.

The fleet's level is its worst host's, in the order ok < warning < unknown < critical (a host
known to be in breach outranks one that could not be read); the exit code follows status's
convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
"""

from __future__ import annotations

import copy
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from ... import naming
from ...errors import IntegrityError, SafeholdError
from ...model import Objectives
from ...storage.listed import ListedStorage, s3_folders, s3_tree
from ..checks.drill import DrillRecord
from .status import StatusReport, read_status

if TYPE_CHECKING:
    from ...storage import Storage
    from ...storage.s3 import S3Storage

FleetLevel = Literal["ok", "warning", "critical", "unknown"]
EXIT_CODES: tuple[FleetLevel, ...] = ("ok", "warning", "critical", "unknown")
SEVERITY: tuple[FleetLevel, ...] = ("ok", "warning", "unknown", "critical")
MARKER = naming.META + "/"
OBJECTIVES_KEY = naming.OBJECTIVES_KEY
READERS = 8  # hosts read at once: each is a few small requests, latency-bound


@dataclass(frozen=True)
class HostStatus:
    host: str  # the folder's name under the parent
    prefix: str  # its whole prefix in the bucket
    level: FleetLevel
    status: StatusReport | None = None
    error: str | None = None
    objectives_from: Literal["repository", "reader"] = "reader"
    keys: int = 0  # objects in its listing
    read_s: float = 0.0

    @property
    def last_drill(self) -> DrillRecord | None:
        """The newest drill that restored one of its targets, or its newest DR rehearsal."""
        if self.status is None:
            return None
        drills = [t.drill for t in self.status.targets if t.drill is not None]
        if self.status.rehearsal is not None and self.status.rehearsal.drill is not None:
            drills.append(self.status.rehearsal.drill)
        return max(drills, key=lambda d: (d.started_at, d.id), default=None)

    def to_json(self) -> dict[str, Any]:
        drill = self.last_drill
        status = self.status
        return {
            "host": self.host,
            "prefix": self.prefix,
            "level": self.level,
            "error": self.error,
            "objectives_from": self.objectives_from,
            "objectives": status.objectives.to_json() if status else None,
            "targets": [t.to_json() for t in status.targets] if status else [],
            "notes": status.notes if status else [],
            "last_drill": None
            if drill is None
            else {
                "id": drill.id,
                "at": drill.started_at.isoformat(),
                "outcome": drill.outcome,
                "recovery_s": round(drill.recovery_s, 3),
                "subject": drill.subject,
                "scope": drill.scope,
            },
            "keys": self.keys,
            "read_s": round(self.read_s, 3),
        }


@dataclass(frozen=True)
class FleetReport:
    checked_at: datetime
    location: str
    bucket: str
    where: str  # s3://bucket/parent/
    this_host: str | None  # this host's folder among them, when it has one
    objectives: Objectives  # the reader's
    hosts: list[HostStatus]
    notes: list[str] = field(default_factory=list)
    read_s: float = 0.0

    @property
    def level(self) -> FleetLevel:
        if not self.hosts:
            return "unknown"
        return max((h.level for h in self.hosts), key=SEVERITY.index)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.index(self.level)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "location": self.location,
            "bucket": self.bucket,
            "where": self.where,
            "this_host": self.this_host,
            "level": self.level,
            "exit_code": self.exit_code,
            "objectives": self.objectives.to_json(),
            "hosts": [h.to_json() for h in self.hosts],
            "notes": self.notes,
            "read_s": round(self.read_s, 3),
        }


def parent_of(prefix: str) -> tuple[str, str | None]:
    """(the fleet's parent prefix, this host's folder in it): ``hosts/host-a`` ->
    (``hosts``, ``host-a``); ``host-a`` -> ("", ``host-a``); "" -> ("", None)."""
    parent, _, own = prefix.strip("/").rpartition("/")
    return parent, own or None


def read_fleet(
    storage: S3Storage, *, location: str, now: datetime, objectives: Objectives
) -> FleetReport:
    """Every host beside ``storage``'s prefix (this host's repository in the location),
    judged at ``now``; ``objectives``: the reader's, for hosts that carry none."""
    began = time.monotonic()
    parent, own = parent_of(storage.prefix)
    where = f"s3://{storage.bucket}/{parent + '/' if parent else ''}"
    folders = s3_folders(storage, parent)
    notes = []
    if not parent and MARKER.rstrip("/") in folders:
        notes.append(
            "the bucket's top level holds a repository too: it is not shown (give each host "
            "a prefix of its own)"
        )
    candidates = [f for f in folders if f not in (".", "..")]
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        found = list(pool.map(lambda f: _host(storage, parent, f, now, objectives), candidates))
    hosts = [h for h in found if h is not None]
    if not hosts:
        notes.append(
            f"no folder under {where} holds a safehold repository (a .safehold/ folder): "
            "nothing to judge"
        )
    return FleetReport(
        checked_at=now,
        location=location,
        bucket=storage.bucket,
        where=where,
        this_host=own if any(h.host == own for h in hosts) else None,
        objectives=objectives,
        hosts=hosts,
        notes=notes,
        read_s=time.monotonic() - began,
    )


def _host(
    storage: S3Storage, parent: str, folder: str, now: datetime, objectives: Objectives
) -> HostStatus | None:
    """None when the folder holds no repository; UNKNOWN with the reason when it cannot be
    read (denied, unreachable, an unreadable objectives record)."""
    began = time.monotonic()
    prefix = f"{parent}/{folder}" if parent else folder
    host = copy.copy(storage)  # the same client and settings, another prefix
    host.prefix = prefix
    keys = 0
    try:
        sizes = s3_tree(host, MARKER)
        if sizes is None:
            return None
        keys = len(sizes)
        view = ListedStorage(host, sizes)
        own = read_objectives(view)
        status = read_status(view, now=now, objectives=own or objectives, database=None)
    except SafeholdError as exc:
        why = exc.message + (f" ({exc.hint})" if exc.hint else "")
        return HostStatus(folder, prefix, "unknown", error=why, keys=keys, read_s=_since(began))
    except Exception as exc:  # a host must never stop the others from being judged
        why = f"{type(exc).__name__}: {exc}"
        return HostStatus(folder, prefix, "unknown", error=why, keys=keys, read_s=_since(began))
    return HostStatus(
        folder,
        prefix,
        status.level,
        status=status,
        objectives_from="repository" if own is not None else "reader",
        keys=keys,
        read_s=_since(began),
    )


def read_objectives(storage: Storage) -> Objectives | None:
    """The objectives a repository carries (its host's, written with its copies), or None."""
    try:
        raw = storage.read_bytes(OBJECTIVES_KEY)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        data["rpo_targets"] = tuple(dict(data.get("rpo_targets") or {}).items())
        return Objectives(**data)
    except (ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(
            f"its objectives record {OBJECTIVES_KEY} is unreadable: {exc}",
            hint="its RPO is unknown here; the host rewrites the record with its next copy",
        ) from None


def write_objectives(storage: Storage, objectives: Objectives) -> None:
    """Record a host's objectives in its repository (a location), for fleet readers."""
    body = json.dumps(objectives.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    storage.put_bytes(OBJECTIVES_KEY, body)


def _since(began: float) -> float:
    return time.monotonic() - began
