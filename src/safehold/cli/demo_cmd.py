from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
import docker
from rich.console import Console
from rich.table import Table

from .. import catalog
from ..errors import IntegrityError, SafeholdError
from ..operations.checks.drill import drill
from ..operations.database.backup import BackupOptions
from ..operations.database.restore import RestoreOptions, restore_database
from ..operations.system.backup import SetOptions, backup_set
from ..operations.volumes.folder import restore_tree
from ..sandbox import SandboxCluster, load_sample
from ..sandbox.dockerd import SandboxDockerd
from ..sources.postgres import connect, table_fingerprints
from ..storage import LocalStorage
from .flags import shared_options
from .output import backups_table
from .runtime import Runtime, runtime

DEMO_DB = "container_app"
RESTORED_DB = "container_app_restored"
DEMO_VOLUME = "app-data"


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
    """Run the whole job on a sandbox: PostgreSQL with sample data and a Docker volume with
    sample files, backed up together as one full-system set, listed, restored side by side and
    compared (tables by rows and content hash, files byte for byte), then drilled.

    Needs nothing configured: it starts its own throwaway cluster on a free loopback port and
    its own private Docker engine (a plain folder stands in for the volume when Docker is not
    installed or this is not root).
    """
    root = workdir or Path(tempfile.mkdtemp(prefix="safehold-demo-"))
    cluster = SandboxCluster()
    try:
        with runtime(ctx, as_json=as_json) as rt, _volume(rt, root) as (client, folder):
            _run(rt, cluster, client, folder, root, users, keep_root=root if keep else None)
    finally:
        cluster.remove()
        if keep:
            click.echo(f"kept {root}", err=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _volume(rt: Runtime, root: Path) -> Iterator[tuple[docker.DockerClient | None, Path]]:
    """The sample volume: in a private Docker engine when possible, else a folder."""
    engine = SandboxDockerd()
    try:
        engine.start()
    except SafeholdError as exc:
        engine.remove()
        rt.sink_warning(f"no private Docker engine ({exc.message}): a folder stands in")
        folder = root / DEMO_VOLUME
        folder.mkdir(parents=True)
        _fill(folder)
        yield None, folder
        return
    try:
        with contextlib.closing(engine.client()) as client:
            volume = client.volumes.create(name=DEMO_VOLUME)
            folder = Path(volume.attrs["Mountpoint"])
            _fill(folder)
            yield client, folder
    finally:
        engine.remove()


def _fill(folder: Path) -> None:
    """What a per-user app keeps in a volume: small JSON files, a log, a binary blob, a link."""
    for user in range(1, 41):
        home = folder / "users" / f"user-{user}"
        home.mkdir(parents=True)
        (home / "settings.json").write_text(f'{{"id": {user}, "theme": "dark"}}\n')
    (folder / "app.log").write_text("".join(f"line {n}\n" for n in range(5000)))
    (folder / "blob.bin").write_bytes(os.urandom(256 * 1024))
    (folder / "current").symlink_to("users/user-1")


def _run(
    rt: Runtime,
    cluster: SandboxCluster,
    client: docker.DockerClient | None,
    folder: Path,
    root: Path,
    users: int,
    keep_root: Path | None,
) -> None:
    server = cluster.start()
    target = server.with_db(DEMO_DB)
    load_sample(server, DEMO_DB, users=users)
    where = f"Docker volume {DEMO_VOLUME}" if client else f"folder {folder}"
    click.echo(
        f"sandbox PostgreSQL on 127.0.0.1:{cluster.port} with {users} sample users; {where}",
        err=True,
    )
    storage = LocalStorage(root / "backups")
    made = backup_set(
        storage,
        database=target,
        client=client,
        volumes=[DEMO_VOLUME] if client else [],
        folders={} if client else {DEMO_VOLUME: folder},
        options=SetOptions(BackupOptions()),
        sink=rt.sink,
    )
    if not rt.as_json:
        backups_table(
            catalog.scan(storage), rt.out, storage.description, catalog.read_sets(storage)
        )
    result = restore_database(
        target, storage, "latest", RestoreOptions(target_db=RESTORED_DB), sink=rt.sink
    )
    with connect(target, DEMO_DB) as live, connect(target, RESTORED_DB) as copy:
        before, after = table_fingerprints(live), table_fingerprints(copy)
    copy_dir = root / "restored-volume"
    volume_member = next(m for m in made.members if m.startswith("volume_"))
    restore_tree(storage, volume_member, copy_dir, target_name=DEMO_VOLUME, sink=rt.sink)
    files_same = _tree_digest(folder) == _tree_digest(copy_dir)
    drilled = drill(storage, f"set:{made.id}", server=server, live_database=DEMO_DB, sink=rt.sink)
    same = before == after and files_same
    if rt.as_json:
        rt.emit_json(
            {
                "set": made.to_json(),
                "restore": result.to_json(),
                "identical": same,
                "drill": drilled.to_json(),
                "workdir": str(keep_root) if keep_root else None,
            }
        )
    else:
        _comparison(rt.out, before, after)
        rt.out.print(
            f"restored database is {'IDENTICAL' if before == after else 'DIFFERENT'} "
            f"({len(before)} tables compared by rows and content hash); restored volume is "
            f"{'IDENTICAL' if files_same else 'DIFFERENT'} (every file, link and mode)"
        )
        rt.out.print(
            f"restore drill of set {made.id}: passed, measured recovery time "
            f"{drilled.recovery_s:.1f}s"
        )
    if not same:
        raise IntegrityError("the restored copy differs from the original")


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(folder, name)
            st = path.lstat()
            digest.update(f"{path.relative_to(root)}|{st.st_mode:o}|".encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


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
