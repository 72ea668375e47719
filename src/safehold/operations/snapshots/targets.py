"""Snapshot target names: ``database:NAME`` and ``volume:NAME`` (folders are volumes, as in
the catalog), so one store holds every target of an application without clashes."""

from __future__ import annotations

from typing import Literal

from ...errors import UsageError

TargetKind = Literal["database", "volume"]


def database_target(name: str) -> str:
    return f"database:{name}"


def volume_target(name: str) -> str:
    return f"volume:{name}"


def split_target(target: str) -> tuple[TargetKind, str]:
    """``database:NAME`` -> ("database", NAME); anything else is not a product snapshot."""
    kind, sep, name = target.partition(":")
    if sep and name and kind == "database":
        return "database", name
    if sep and name and kind == "volume":
        return "volume", name
    raise UsageError(
        f"snapshot target {target!r} is not database:NAME or volume:NAME",
        hint="snapshots written by the chunkstore library directly are restored with it",
    )
