"""Doctor's check of the schedule against what it backs up: a full-system job (``backup --all``,
weekly by default) with no volumes configured is one more database backup, and the volumes get
none, with nothing else saying so (the job succeeds every week)."""

from __future__ import annotations

from .... import catalog
from ....errors import IntegrityError
from ....storage import Storage
from .check import Check

NAME = "full-system volumes"
FIX = (
    "name them in [volumes] include (names or patterns such as user-*) or labels; if the "
    'database is all there is, set schedule.full = "off"'
)


def full_system(
    include: tuple[str, ...], labels: tuple[str, ...], full_schedule: str | None, storage: Storage
) -> list[Check]:
    """``full_schedule``: the full-system job's cron expression, None when it is off or the
    caller did not say; then the newest set in ``storage`` is the evidence of such a job."""
    if include or labels:
        return [Check(NAME, "OK", "full-system backups take the volumes [volumes] names")]
    if full_schedule:
        detail = (
            f"the full-system job ({full_schedule}) backs up no volumes: [volumes] include and "
            "labels are empty, so each run is the database only"
        )
        return [Check(NAME, "WARN", detail, FIX)]
    try:
        sets = catalog.read_sets(storage)
    except (IntegrityError, OSError):
        return []  # the repository checks report an unreadable repository
    if sets and not sets[-1].volumes:
        detail = (
            f"the newest full-system set {sets[-1].id} holds no volumes: [volumes] include and "
            "labels are empty"
        )
        return [Check(NAME, "WARN", detail, FIX)]
    return []
