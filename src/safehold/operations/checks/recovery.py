"""What a killed full-system drill leaves, removed by the next command.

``drill_rehearsal``: ``drill_system`` records the drill before it creates anything (its id, the
scratch database and the server it is on, the throwaway cluster's folder with ``--sandbox``,
the scratch folders) and crosses the entry out once its teardown removed everything. A run
killed in between leaves the entry; this resolver removes what carries the drill's label in
Docker (copies, network, scratch volumes), drops the scratch database, stops and removes a
throwaway cluster, and deletes the scratch folders. It runs after the other kinds, so a scratch
volume's or database's own interrupted swap is settled before the whole rehearsal goes.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import docker
import psycopg

from ...errors import RestoreError, SafeholdError
from ...sources import pg_admin
from ...sources.postgres import PgTarget
from ...sources.restored_server import stop_abandoned
from .. import journal
from .rehearsal import KIND
from .rehearsal_docker import remove_rehearsal

_SERVER_EXIT_S = 30.0


@journal.resolver(KIND, last=True)
def remove_leftovers(entry: journal.Entry, context: journal.Context) -> str:
    data = entry.data
    drill_id = str(data["drill"])
    client: docker.DockerClient = context.get("docker")
    gone = remove_rehearsal(client, drill_id)
    if data.get("folders"):
        shutil.rmtree(str(data["folders"]), ignore_errors=True)
        gone.append(f"folder {data['folders']}")
    if data.get("sandbox"):
        _remove_cluster(Path(str(data["sandbox"])))
        gone.append(f"throwaway cluster {data['sandbox']}")
    elif data.get("database"):
        target: PgTarget = context.get("pg")
        server = dataclasses.replace(target, host=str(data["host"]), port=int(data["port"]))
        try:
            with pg_admin.admin(server) as conn:
                if pg_admin.exists(conn, str(data["database"])):
                    pg_admin.drop(conn, str(data["database"]))
                    gone.append(f"database {data['database']!r}")
        except psycopg.Error as exc:
            raise SafeholdError(f"dropping {data['database']!r} failed: {exc}") from exc
    what = ", ".join(gone) if gone else "nothing was left"
    return f"removed the rehearsal of full-system drill {drill_id}: {what}"


def _remove_cluster(root: Path) -> None:
    """Stop the throwaway server (immediate shutdown: its data is about to go) and delete it."""
    try:
        stop_abandoned(root / "data", _SERVER_EXIT_S)
    except RestoreError as exc:
        raise SafeholdError(f"the throwaway cluster's server did not stop: {exc.message}") from exc
    shutil.rmtree(root, ignore_errors=True)
