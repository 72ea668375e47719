"""A snapshot header as the commands print it."""

from __future__ import annotations

from typing import Any

from ...chunkstore import SnapshotInfo


def info_json(info: SnapshotInfo) -> dict[str, Any]:
    return {
        "snapshot": info.id,
        "target": info.target,
        "kind": info.kind,
        "time": info.time.isoformat(),
        "host": info.host,
        "stats": dict(info.stats),
        "set": info.group["id"] if info.group else None,
    }


def info_line(info: SnapshotInfo) -> str:
    stats = info.stats
    when = info.time.strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"{info.id}  {info.target:<28} {when}  {stats.get('bytes', 0):>14,} B  "
        f"new {stats.get('new_bytes', 0):,} B  ({info.host})"
    )
