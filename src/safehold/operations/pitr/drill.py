"""A restore drill to a point in time: the PITR restore into a scratch folder, checked, timed,
recorded with the other drills, and removed. Live data is never touched: the scratch server
listens on its own port and socket folder and never archives."""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...errors import SafeholdError
from ...model import Event, EventSink
from ...sources.postgres import PgTarget, connect, count_rows
from ...storage import LocalStorage
from ..checks.drill import DrillRecord, new_drill_id, write_drill
from . import archive as wal
from .restore import Server, Target, restore, stop

SCRATCH_PREFIX = "safehold-drill-pitr-"


def drill_pitr(
    archive: wal.WalArchive,
    target: Target,
    server: Server,
    database: str,
    *,
    sink: EventSink,
    give_to: Any = None,
) -> DrillRecord:
    """Recover to ``target`` in a scratch folder, check ``database`` answers with its tables,
    and record the drill in the repository. ``give_to(path)`` hands the scratch folder to the
    server's OS user."""
    assert isinstance(archive.primary, LocalStorage)
    started = datetime.now(UTC)
    drill_id = new_drill_id(started)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    if give_to is not None:
        give_to(scratch)
    member: dict[str, Any] = {
        "artifact": f"pitr to {target.describe()}",
        "kind": "pitr",
        "target": database,
    }
    error: SafeholdError | None = None
    try:
        result = restore(
            archive, scratch / "data", target, server, keep_running=True, archiving=False, sink=sink
        )
        try:
            member |= {
                "base": result.base,
                "reached": result.reached,
                "lsn": result.lsn,
                "timeline": result.timeline,
                "seconds": round(result.took_s, 3),
            } | _check(scratch / "data", server, database)
        finally:
            stop(server, scratch / "data")
        member["outcome"] = "ok"
    except SafeholdError as exc:
        error = exc
        member |= {"outcome": "failed", "error": exc.message}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    record = DrillRecord(
        id=drill_id,
        subject=f"pitr:{target.describe()}",
        started_at=started,
        finished_at=datetime.now(UTC),
        outcome="failed" if error else "ok",
        recovery_s=float(member.get("seconds", 0.0)),
        members=[member],
        where=f"scratch cluster on 127.0.0.1:{server.port}",
        error=error.message if error else None,
    )
    write_drill(archive.primary, record)
    if error is not None:
        error.message = f"point-in-time drill failed: {error.message}"
        raise error
    sink(
        Event(
            "drill",
            f"point-in-time drill to {target.describe()} passed in {record.recovery_s:.1f}s",
            data={"drill": drill_id, "recovery_s": record.recovery_s},
        )
    )
    return record


def _check(data_dir: Path, server: Server, database: str) -> dict[str, Any]:
    """The restored database answers, and every user table reads to its end (counted)."""
    target = PgTarget(host=str(data_dir), port=server.port, dbname=database, user=server.user)
    with connect(target) as conn:
        counts = count_rows(conn)
    return {"database": database, "tables": len(counts), "rows": sum(counts.values())}
