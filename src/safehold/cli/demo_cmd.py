from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .. import catalog
from ..errors import IntegrityError
from ..operations.backup import backup_database
from ..operations.restore import RestoreOptions, restore_database
from ..sandbox import SandboxCluster, load_sample
from ..sources.postgres import connect, table_fingerprints
from ..storage import LocalStorage
from .output import backups_table
from .runtime import Runtime, runtime, shared_options

DEMO_DB = "container_app"
RESTORED_DB = "container_app_restored"


@click.command()
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="where the backups go (default: a new temp folder)",
)
@click.option("--keep", is_flag=True, help="keep the workdir with its backups afterwards")
@click.option("--users", type=int, default=500, show_default=True, help="sample users to create")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def demo(ctx: click.Context, workdir: Path | None, keep: bool, users: int, as_json: bool) -> None:
    """Run the whole job on a sandbox: start PostgreSQL with sample data, back it up, list,
    restore side by side, and compare the restored data with the original, table by table.

    Needs nothing configured: it starts its own throwaway cluster on a free loopback port.
    """
    root = workdir or Path(tempfile.mkdtemp(prefix="safehold-demo-"))
    cluster = SandboxCluster()
    try:
        with runtime(ctx, as_json=as_json) as rt:
            _run(rt, cluster, root / "backups", users, keep_root=root if keep else None)
    finally:
        cluster.remove()
        if keep:
            click.echo(f"kept {root}", err=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


def _run(
    rt: Runtime, cluster: SandboxCluster, backups: Path, users: int, keep_root: Path | None
) -> None:
    server = cluster.start()
    target = server.with_db(DEMO_DB)
    load_sample(server, DEMO_DB, users=users)
    click.echo(
        f"sandbox PostgreSQL on 127.0.0.1:{cluster.port} with {users} sample users", err=True
    )
    storage = LocalStorage(backups)
    manifest = backup_database(target, storage, sink=rt.sink)
    if not rt.as_json:
        backups_table(
            catalog.scan(storage), rt.out, storage.description, catalog.read_sets(storage)
        )
    result = restore_database(
        target, storage, "latest", RestoreOptions(target_db=RESTORED_DB), sink=rt.sink
    )
    with connect(target, DEMO_DB) as live, connect(target, RESTORED_DB) as copy:
        before, after = table_fingerprints(live), table_fingerprints(copy)
    same = before == after
    if rt.as_json:
        rt.emit_json(
            {
                "backup": manifest.to_json(),
                "restore": result.to_json(),
                "identical": same,
                "workdir": str(keep_root) if keep_root else None,
            }
        )
    else:
        _comparison(rt.out, before, after)
        rt.out.print(
            f"restored copy is {'IDENTICAL' if same else 'DIFFERENT'} "
            f"({len(before)} tables compared by rows and content hash)"
        )
    if not same:
        raise IntegrityError("the restored copy differs from the original")


def _comparison(
    console: Console, before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]
) -> None:
    table = Table(title="original vs restored", title_justify="left", box=None)
    for column in ("TABLE", "ROWS", "RESTORED ROWS", "CONTENT"):
        table.add_column(column)
    for name in sorted(before.keys() | after.keys()):
        rows, digest = before.get(name, (0, ""))
        rows2, digest2 = after.get(name, (0, ""))
        table.add_row(name, str(rows), str(rows2), "same" if digest == digest2 else "DIFFERENT")
    console.print(table)
