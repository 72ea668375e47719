"""What ``backup --physical``, ``restore --pitr`` and ``pitr base-backup|restore`` share: the
base backup with its copies, and the point-in-time restore with its options."""

from __future__ import annotations

import dataclasses
import functools
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import StorageError, UsageError
from ..operations.copy import copy_repository_key
from ..operations.pitr import archive as wal
from ..operations.pitr import base as pitr
from ..operations.pitr import restore as pitr_restore
from ..operations.pitr import setup as pitr_setup
from ..sources.pg_cluster import free_port, server_bin_dir
from ..storage import LocalStorage, Storage
from .aliases import deprecated_flag
from .runtime import Runtime
from .wal_places import wal_archive

if TYPE_CHECKING:
    from ..operations.checks.drill import DrillRecord

F = TypeVar("F", bound=Callable[..., Any])
COMMAND_HELP = "how the server should run safehold (default: this installation's safehold)"


def config_file(rt: Runtime) -> Path | None:
    """The config file this run read, for commands the server runs on our behalf."""
    return None if rt.settings.source == "defaults" else Path(rt.settings.source)


def run_base_backup(rt: Runtime, as_json: bool) -> None:
    """A physical base backup into the repository, then into each copy location."""
    archive = wal_archive(rt)
    assert isinstance(archive.primary, LocalStorage)
    record = pitr.base_backup(rt.settings.pg_target(), archive.primary, rt.sink, archive.encryption)
    for name, storage in archive.copies:
        try:
            copy_repository_key(archive.primary, storage)
            copied = pitr.copy_base(archive.primary, record, storage)
        except StorageError as exc:
            exc.message = (
                f"base backup {record.name} is good locally, but copying it to {name} failed: "
                f"{exc.message}"
            )
            raise
        rt.sink_info(f"{record.name}: copied to {name} ({copied} bytes)")
    if as_json:
        rt.emit_json(record.to_json())
    else:
        rt.out.print(
            f"{record.name}: {record.size} bytes, LSN {record.start_lsn} .. {record.stop_lsn}, "
            f"timeline {record.timeline}, WAL from {record.start_segment}",
            highlight=False,
        )


@dataclass(frozen=True)
class PitrRequest:
    to_time: str | None
    to_lsn: str | None
    to_name: str | None
    to_end: bool
    target_dir: Path | None
    force: bool
    port: int | None
    server_user: str | None
    keep_running: bool
    archiving: bool | None
    command: str | None
    timeout: float

    def target(self) -> pitr_restore.Target:
        given = [x for x in (self.to_time, self.to_lsn, self.to_name) if x is not None]
        if len(given) + self.to_end != 1:
            raise UsageError(
                "give exactly one recovery target",
                hint="--to-time TS, --to-lsn LSN, --to-name NAME or --to-end",
            )
        when = None
        if self.to_time is not None:
            try:
                when = datetime.fromisoformat(self.to_time)
            except ValueError:
                raise UsageError(
                    f"--to-time {self.to_time!r} is not an ISO 8601 time",
                    hint='for example "2026-11-24 14:05:00" (UTC) or "2026-11-24T14:05:00+01:00"',
                ) from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
        return pitr_restore.Target(time=when, lsn=self.to_lsn, name=self.to_name)


_OPTIONS = [
    click.option("--to-time", help="recover up to this time (ISO 8601; UTC without a zone)"),
    click.option("--to-lsn", metavar="LSN", help="recover up to this WAL position (0/3000060)"),
    click.option("--to-name", metavar="NAME", help="recover up to this named restore point"),
    click.option("--to-end", is_flag=True, help="recover to the end of the archive"),
    # --latest means "the newest backup of each target" in every other command
    deprecated_flag("--latest", "to_end", "--to-end"),
    click.option(
        "--target-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="data folder for the restored cluster: new and empty, or with --force the "
        "current one (moved aside first, never deleted)",
    ),
    click.option(
        "--force",
        is_flag=True,
        help="--pitr: restore over a stopped cluster's folder; --database: restore a backup of "
        "another database over this one",
    ),
    click.option("--port", type=int, help="port for the restored server (default: a free one)"),
    click.option("--server-user", help="OS user to run the server as (root only)"),
    click.option("--keep-running", is_flag=True, help="leave the restored server running"),
    click.option(
        "--archive/--no-archive",
        "archiving",
        default=None,
        help="the restored server keeps archiving WAL here (default: only with --force)",
    ),
    click.option("--command", "command", help=COMMAND_HELP),
    click.option("--timeout", type=float, default=3600.0, help="seconds to wait for recovery"),
]
_KEYS = [
    "to_time",
    "to_lsn",
    "to_name",
    "to_end",
    "target_dir",
    "force",
    "port",
    "server_user",
    "keep_running",
    "archiving",
    "command",
    "timeout",
]


def pitr_options(func: F) -> F:
    """Adds the point-in-time restore options; the command receives them as ``pitr_request``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {key: kwargs.pop(key) for key in _KEYS}
        return func(*args, pitr_request=PitrRequest(**values), **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def _server(rt: Runtime, request: PitrRequest) -> pitr_restore.Server:
    return pitr_restore.Server(
        command=request.command or pitr_setup.which_safehold(),
        bin_dir=server_bin_dir(),
        run_as=request.server_user or pitr_restore.default_server_user(),
        port=request.port or free_port(),
        user=rt.settings.database.user,
        config=config_file(rt),
    )


def from_location(
    rt: Runtime, archive: wal.WalArchive, source: str | None
) -> tuple[wal.WalArchive, Storage | None]:
    """The archive to restore from and where its base backup records are read: with a
    location (``--from``, or a new host's only one), its records, and the location among the
    places base backups and WAL are read from (it is already there unless it is an archive)."""
    if source is None:
        return archive, None
    held = dict(archive.copies)
    if source in held:
        return archive, held[source]
    from .locations import location_storage

    storage = location_storage(rt, source)
    return dataclasses.replace(archive, copies=(*archive.copies, (source, storage))), storage


def run_restore(rt: Runtime, request: PitrRequest, source: str | None = None) -> None:
    target = request.target()
    if request.target_dir is None:
        raise UsageError(
            "--target-dir is required for a point-in-time restore",
            hint="a new folder, or the cluster's own data folder with --force",
        )
    server = _server(rt, request)
    archive, records = from_location(rt, wal_archive(rt, fetching=True), source)
    result = pitr_restore.restore(
        archive,
        request.target_dir,
        target,
        server,
        force=request.force,
        keep_running=request.keep_running,
        archiving=request.archiving,
        sink=rt.sink,
        timeout=request.timeout,
        records=records,
        journal_to=LocalStorage(rt.settings.backup_dir),
    )
    if rt.as_json:
        data = dict(result.__dict__)
        data.update(target=target.describe())
        rt.emit_json(data)
        return
    state = f"running on port {result.port}" if result.running else "stopped"
    moved = f"; the previous folder is {result.moved_aside}" if result.moved_aside else ""
    rt.out.print(
        f"restored {result.base} into {result.target_dir} (to {target.describe()}): "
        f"{result.reached}; lsn {result.lsn}, timeline {result.timeline}; "
        f"{result.took_s:.1f}s ({result.verified_by or 'manifest check'} "
        f"{result.verify_s:.1f}s); server {state}{moved}",
        highlight=False,
    )


def run_pitr_drill(
    rt: Runtime,
    to_time: str | None,
    to_lsn: str | None,
    to_name: str | None,
    server_user: str | None,
    command: str | None,
) -> DrillRecord:
    request = PitrRequest(
        to_time,
        to_lsn,
        to_name,
        to_end=not (to_time or to_lsn or to_name),
        target_dir=None,
        force=False,
        port=None,
        server_user=server_user,
        keep_running=False,
        archiving=False,
        command=command,
        timeout=3600.0,
    )
    run_as = server_user or pitr_restore.default_server_user()

    def give_to(path: Path) -> None:
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    from ..operations.pitr.drill import drill_pitr  # the drill module loads the docker SDK

    return drill_pitr(
        wal_archive(rt, fetching=True),
        request.target(),
        _server(rt, request),
        rt.settings.database.name,
        sink=rt.sink,
        give_to=give_to,
    )
