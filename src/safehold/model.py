"""Frozen records shared by every layer: what a backup is, and what an operation reports."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

MANIFEST_FORMAT = 1

# "database" and "volume" are a target's backups. "globals" is the cluster objects (roles,
# database settings) a database backup needs on a fresh server, written beside each dump under
# the same stamp. "safety" is a volume's content taken just before a restore replaced it: kept
# for a short while, never a target's latest backup nor a retention representative.
Kind = Literal["database", "volume", "globals", "safety"]
BACKUP_KINDS: tuple[Kind, ...] = ("database", "volume")
Status = Literal["ok", "unverified/foreign", "damaged", "missing"]


@dataclass(frozen=True)
class Manifest:
    """The commit record of one artifact. Written last: an artifact without one is not a backup."""

    artifact: str
    kind: Kind
    target: str
    compression: str
    size: int
    sha256: str
    started_at: datetime
    finished_at: datetime
    tool_version: str
    facts: dict[str, Any] = field(default_factory=dict)
    set_id: str | None = None
    encryption: dict[str, Any] | None = None  # age: mode and recipients (never a secret)
    format: int = MANIFEST_FORMAT
    blake3: str | None = None  # database dumps: the restore's fast pre-SQL check of the bytes

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def tables(self) -> dict[str, int]:
        """Rows per table counted in the dump's snapshot (database artifacts only)."""
        return dict(self.facts.get("tables", {}))

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["started_at"] = _iso(self.started_at)
        data["finished_at"] = _iso(self.finished_at)
        data["duration_s"] = round(self.duration_s, 3)
        if data["blake3"] is None:
            del data["blake3"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["started_at"] = parse_time(values["started_at"])
        values["finished_at"] = parse_time(values["finished_at"])
        return cls(**values)


@dataclass(frozen=True)
class Objectives:
    """Recovery objectives in seconds (the procedures: RPO 24 h; RTO database 30 min,
    container data 1 h, full system 2 h).

    ``rpo_s`` is the database's RPO and every target's without one of its own;
    ``rpo_volumes_s`` the volumes' (None: ``rpo_s``); ``rpo_targets`` per target name or
    pattern (``user-*``), first match wins. A backup is late once older than its RPO plus the
    grace: ``grace_share`` of the RPO, at least ``grace_min_s``, never more than half the RPO.
    Built by hand the grace is 0 (exact thresholds); the settings give it its default."""

    rpo_s: float = 24 * 3600
    rto_database_s: float = 30 * 60
    rto_volumes_s: float = 60 * 60
    rto_full_s: float = 120 * 60
    rpo_volumes_s: float | None = None
    rpo_targets: tuple[tuple[str, float], ...] = ()
    grace_share: float = 0.0
    grace_min_s: float = 0.0

    def rto(self, kind: str) -> float:
        return self.rto_database_s if kind == "database" else self.rto_volumes_s

    def rpo(self, kind: str, target: str) -> float:
        for pattern, seconds in self.rpo_targets:
            if fnmatch.fnmatchcase(target, pattern):
                return seconds
        if kind == "volume" and self.rpo_volumes_s is not None:
            return self.rpo_volumes_s
        return self.rpo_s

    def grace(self, rpo_s: float) -> float:
        # Capped at half the RPO: a 30 min floor would otherwise hide a missed run of a
        # schedule that runs every few minutes.
        return min(max(rpo_s * self.grace_share, self.grace_min_s), rpo_s / 2)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["rpo_targets"] = dict(self.rpo_targets)
        return data


@dataclass(frozen=True)
class BackupSet:
    """A full-system backup: the database and volumes taken together under one id. Its record
    is written after every member's manifest: a set without one is incomplete."""

    id: str
    started_at: datetime
    finished_at: datetime
    members: tuple[str, ...]  # artifact names
    database: str | None  # the database's name, when the set holds one
    volumes: tuple[str, ...]  # Docker volumes and plain folders, by target name
    tool_version: str
    folders: tuple[str, ...] = ()  # the targets among ``volumes`` that are plain folders
    format: int = MANIFEST_FORMAT
    # Every database of the set (``database`` is the first, for readers of one): several
    # when ``[database] names`` configures them.
    databases: tuple[str, ...] = ()
    # "full": backup --all, what restore --all takes by default; "databases": the databases of
    # one backup run, taken together (restore --all --set ID restores them).
    scope: str = "full"

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["folders"] = list(self.folders)
        data["databases"] = list(self.databases)
        data["started_at"] = _iso(self.started_at)
        data["finished_at"] = _iso(self.finished_at)
        data["duration_s"] = round(self.duration_s, 3)
        data["members"] = list(self.members)
        data["volumes"] = list(self.volumes)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackupSet:
        return cls(
            id=str(data["id"]),
            started_at=parse_time(data["started_at"]),
            finished_at=parse_time(data["finished_at"]),
            members=tuple(data["members"]),
            database=data.get("database"),
            volumes=tuple(data.get("volumes", ())),
            tool_version=str(data.get("tool_version", "")),
            folders=tuple(data.get("folders", ())),
            format=int(data.get("format", MANIFEST_FORMAT)),
            databases=tuple(
                data.get("databases", (data["database"],) if data.get("database") else ())
            ),
            scope=str(data.get("scope", "full")),
        )


@dataclass(frozen=True)
class BackupRecord:
    """One line of ``safehold list``: an artifact as found in a repository."""

    name: str
    kind: Kind
    created: datetime
    size: int | None
    status: Status
    manifest: Manifest | None = None

    @property
    def sha256(self) -> str | None:
        return self.manifest.sha256 if self.manifest else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.manifest.target if self.manifest else None,
            "created_utc": _iso(self.created),
            "created_local": self.created.astimezone().isoformat(timespec="seconds"),
            "size": self.size,
            "sha256": self.sha256,
            "compression": self.manifest.compression if self.manifest else None,
            "set_id": self.manifest.set_id if self.manifest else None,
            "encryption": self.manifest.encryption if self.manifest else None,
            "status": self.status,
        }


@dataclass(frozen=True)
class Event:
    """Something an operation wants an operator to know. Sinks decide how (if) to show it."""

    kind: str
    message: str
    level: Literal["debug", "info", "warning", "error"] = "info"
    data: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


EventSink = Callable[[Event], None]


def null_sink(event: Event) -> None:
    """The sink a library caller gets by default: operations never print."""


class ByteSink(Protocol):
    """Where a stream goes. ``write`` must consume or copy ``data`` before it returns: producers
    reuse the buffer behind a memoryview for the next chunk."""

    def write(self, data: bytes | memoryview) -> int: ...


class ByteSource(Protocol):
    def read(self, size: int = -1) -> bytes: ...
