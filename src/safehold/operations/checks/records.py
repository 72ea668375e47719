"""The last verification of each artifact, as kept in the repository
(``.safehold/verify/<artifact>.json``): written by verify, read by list, status and report."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ... import naming
from ...model import Kind, parse_time
from ...storage import Storage

Level = Literal["quick", "full"]
Outcome = Literal["ok", "failed", "unverifiable"]
LEVELS: tuple[str, ...] = ("quick", "full")
VERIFY_DIR = naming.VERIFY_DIR
RECORD_FORMAT = 1


def verify_key(artifact: str) -> str:
    return f"{VERIFY_DIR}/{artifact}.json"


@dataclass(frozen=True)
class VerifyResult:
    """One verification of one artifact; also the record kept in the repository."""

    artifact: str
    kind: Kind
    target: str | None
    level: Level
    outcome: Outcome
    checked_at: datetime
    duration_s: float
    bytes_read: int
    error: str | None = None
    hint: str | None = None
    found: dict[str, Any] = field(default_factory=dict)  # sha256; full: counts or TOC tables

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["checked_at"] = f"{self.checked_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
        data["duration_s"] = round(self.duration_s, 3)
        data["format"] = RECORD_FORMAT
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerifyResult:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["checked_at"] = parse_time(values["checked_at"])
        return cls(**values)


def read_verify(storage: Storage, artifact: str) -> VerifyResult | None:
    """The last recorded verification of ``artifact``; ``None`` when there is none (or it is
    unreadable: a record is advice, never a reason to fail)."""
    try:
        raw = storage.read_bytes(verify_key(artifact))
    except FileNotFoundError:
        return None
    try:
        return VerifyResult.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
