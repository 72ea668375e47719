"""Before a command touches the repository, what interrupted runs left behind is finished or
rolled back (``operations.journal``), and the command says what it did."""

from __future__ import annotations

import importlib

from ..model import Event
from ..operations import journal, runs
from ..storage import LocalStorage
from .runtime import Runtime

# Commands that recover first: every one that reads or writes backups, databases or volumes.
# (wal-push and wal-fetch run under the server with tight latency; they leave nothing behind.)
RECOVERING = frozenset(
    {
        "backup",
        "restore",
        "verify",
        "drill",
        "prune",
        "copy",
        "list",
        "status",
        "doctor",
        "cat",
        "pitr",
    }
)

# The modules that register a journal resolver (imported only when there is something to do).
RESOLVER_MODULES: tuple[str, ...] = (
    "safehold.operations.volumes.recovery",
    "safehold.operations.volumes.recovery_api",
    "safehold.operations.volumes.recovery_containers",
    "safehold.operations.database.recovery",
    "safehold.operations.checks.recovery",
    "safehold.operations.pitr.claim",
)


def recover_interrupted(rt: Runtime) -> int:
    """Resolve the repository's interrupted entries; how many were resolved."""
    if rt.command.partition(" ")[0] not in RECOVERING:
        return 0
    storage = LocalStorage(rt.settings.backup_dir)
    for torn in storage.remove_stale_partials(runs.RUNS_DIR):  # a kill while a record was written
        rt.sink(Event("recover", f"removed {torn}: a run record a killed run was writing", "debug"))
    if not storage.path(journal.JOURNAL_DIR).is_dir():
        return 0  # the usual case, one stat: nothing was ever left behind here
    for name in RESOLVER_MODULES:
        importlib.import_module(name)
    context = journal.Context(storage, {"pg": rt.settings.pg_target, "docker": _docker})
    return journal.recover(context, rt.sink)


def _docker() -> object:
    from ..sources.docker.engine import connect_docker

    return connect_docker()
