"""``safehold snapshots``: what the chunk store holds (``format = "chunked"``) and the work on it
that is not a restore of a live target: list, ls, export, restore into a folder, verify, prune.

Listing, verifying structure and pruning need only the backup host's id key; ls, export, a
restore and ``verify --read-data`` need the age identity, since every pack and snapshot body is
encrypted to the recipients. (``restore --database SNAPSHOT`` / ``--volume NAME:SNAPSHOT`` put a
live target back from a snapshot.)
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import click

from ..chunkstore import ChunkStore, VerifyReport
from ..chunkstore.trees import export_stream, export_tar_gz, list_tree, restore_tree
from ..errors import IntegrityError, UsageError
from ..operations.snapshots import info_json, info_line, materialize, prune_snapshots
from ..operations.snapshots.damage import affected_files
from ..storage import LocalStorage
from .cat_cmd import Stdout
from .chunk_places import copy_store, open_for_reading
from .flags import shared_options
from .locations import automatic, locations
from .output import ReportedFailure
from .prune_cmd import policy_of
from .runtime import runtime


@click.group("snapshots")
def snapshots_cmd() -> None:
    """The chunk store's snapshots (backup.format = "chunked"): list, ls, export, restore into
    a folder, verify, prune, copy."""


@snapshots_cmd.command("list")
@click.option("--target", metavar="TARGET", help="only this target (database:NAME, volume:NAME)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def list_snapshots(ctx: click.Context, target: str | None, as_json: bool) -> None:
    """Every snapshot, oldest first: id, target, time, size, new bytes, host. Needs only the
    backup host's id key (or the identity)."""
    with runtime(ctx, as_json=as_json) as rt:
        found = open_for_reading(rt).snapshots(target)
        if as_json:
            rt.emit_json([info_json(info) for info in found])
            return
        if not found:
            click.echo("no snapshots" + (f" of {target}" if target else ""))
        for info in found:
            click.echo(info_line(info))


@snapshots_cmd.command("ls")
@click.argument("snapshot_id", metavar="SNAPSHOT")
@click.argument("path", required=False)
@click.option(
    "-r", "--recursive", is_flag=True, help="everything below PATH, not only its children"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def ls_snapshot(
    ctx: click.Context, snapshot_id: str, path: str | None, recursive: bool, as_json: bool
) -> None:
    """The entries of a folder snapshot (at PATH, default its root): type, mode, owner, size,
    mtime, name. Reads only the tree blobs PATH needs (needs the identity)."""
    with runtime(ctx, as_json=as_json) as rt:
        entries = list_tree(open_for_reading(rt), snapshot_id, path, recursive=recursive)
        if as_json:
            rt.emit_json(entries)
            return
        for item in entries:
            when = datetime.fromtimestamp(item["mtime_ns"] / 1e9, UTC)
            link = f" -> {item['link']}" if item.get("link") else ""
            click.echo(
                f"{item['type']:<8} {item['mode']:04o} {item['uid']:>5}:{item['gid']:<5} "
                f"{item['size']:>12} {when:%Y-%m-%d %H:%M:%S} {item['path']}{link}"
            )


@snapshots_cmd.command("export")
@click.argument("snapshot_id", metavar="SNAPSHOT")
@click.option(
    "-o",
    "--output",
    metavar="FILE|-",
    help="write the plain .tar.gz / pg_dump custom-format archive here ('-': standard output) "
    "instead of into BACKUP_DIR as a backup with its manifest",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def export_snapshot(
    ctx: click.Context, snapshot_id: str, output: str | None, as_json: bool
) -> None:
    """Export a snapshot in the seed's format: a database snapshot as the pg_dump custom-format
    archive pg_restore reads, a folder snapshot as the .tar.gz tar -xzf reads.

    Without -o it becomes a backup in BACKUP_DIR (db_backup_STAMP.sql[.age] with its globals,
    or volume_NAME_STAMP.tar.gz[.age], encrypted like every backup) with its manifest."""
    with runtime(ctx, as_json=as_json) as rt:
        store = open_for_reading(rt)
        info = store.snapshot(snapshot_id)
        if output is None:
            manifest = materialize(
                store,
                snapshot_id,
                LocalStorage(rt.settings.backup_dir),
                encryption=rt.settings.encryption_key(),
                lock_timeout=rt.settings.lock_timeout,
                sink=rt.sink,
            )
            if as_json:
                rt.emit_json(manifest.to_json())
            else:
                click.echo(rt.settings.backup_dir / manifest.artifact)
            return
        export = export_stream if info.kind == "stream" else export_tar_gz
        if output == "-":
            if sys.stdout.isatty():
                raise UsageError("refusing to write an archive to a terminal", hint="use -o FILE")
            export(store, snapshot_id, Stdout(sys.stdout.fileno()))
            return
        _export_file(Path(output), lambda out: export(store, snapshot_id, out))
        if as_json:
            rt.emit_json({**info_json(info), "output": output})
        else:
            click.echo(output)


def _export_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Into ``path.partial``, renamed when whole: a killed export leaves no archive behind."""
    if path.exists():
        raise UsageError(f"{path} exists", hint="choose a new file name; nothing is overwritten")
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("xb") as out:
            write(out)
            out.flush()
        partial.rename(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@snapshots_cmd.command("restore")
@click.argument("snapshot_id", metavar="SNAPSHOT")
@click.option(
    "--to",
    "dest",
    required=True,
    type=click.Path(path_type=Path),
    help="a new or empty folder to restore into (nothing existing is replaced)",
)
@click.option("--include", metavar="PATH", help="only this file or folder of the snapshot")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def restore_snapshot(
    ctx: click.Context, snapshot_id: str, dest: Path, include: str | None, as_json: bool
) -> None:
    """Restore a folder snapshot (or one file or folder of it, --include) into a new folder:
    built in a staging folder beside it and renamed into place when whole, so a killed restore
    leaves no half-built folder. Modes, owners (as root), mtimes, links and holes come back."""
    with runtime(ctx, as_json=as_json) as rt:
        store = open_for_reading(rt)
        if store.snapshot(snapshot_id).kind != "tree":
            raise UsageError(
                f"snapshot {snapshot_id} is a database dump, not a folder",
                hint="use 'safehold restore --database SNAPSHOT', or 'snapshots export'",
            )
        facts = restore_tree(store, snapshot_id, dest, include=include, events=rt.sink)
        if as_json:
            rt.emit_json({"snapshot": snapshot_id, "to": str(dest), **facts.to_json()})
        else:
            click.echo(f"restored {facts.files} files into {dest}")


@snapshots_cmd.command("verify")
@click.option(
    "--read-data",
    type=click.FloatRange(0.0, 100.0),
    default=0.0,
    metavar="PERCENT",
    help="also read and check this share of the packs (needs the identity)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def verify_snapshots(ctx: click.Context, read_data: float, as_json: bool) -> None:
    """Check the chunk store: every snapshot's blobs indexed in a pack that exists; with
    --read-data, packs decrypted and each chunk's hash checked. Problems name the snapshots
    they affect; the exit status is 6 when any is found."""
    with runtime(ctx, as_json=as_json) as rt:
        store = open_for_reading(rt)
        report = store.verify(read_data=read_data / 100)
        files = _affected(store, report) if store.decryption is not None else {}
        data = dataclasses.asdict(report)
        if as_json:
            rt.emit_json({**data, "ok": report.ok, "files": files})
        else:
            click.echo(
                f"{report.snapshots} snapshots, {report.packs} packs ({report.packs_read} read, "
                f"{report.blobs_checked} blobs checked): {'ok' if report.ok else 'DAMAGED'}"
            )
            for error in report.errors:
                click.echo(f"  {error}")
            for snapshot_id, (count, paths) in files.items():
                click.echo(
                    f"  snapshot {snapshot_id}: {count} file(s) affected: {', '.join(paths)}"
                )
        if not report.ok:
            failure = IntegrityError(
                f"the chunk store has {len(report.errors)} problem(s): {report.errors[0]}",
                hint="a restore reads a damaged pack from another location's copy ('snapshots "
                "copy' makes one); 'snapshots list' shows the snapshots",
            )
            raise ReportedFailure(failure) if as_json else failure


def _affected(store: ChunkStore, report: VerifyReport) -> dict[str, tuple[int, list[str]]]:
    """Snapshot -> (files affected, their paths) for every snapshot a bad pack hurts."""
    out: dict[str, tuple[int, list[str]]] = {}
    for pack, snapshots in report.affected.items():
        blobs = {bytes.fromhex(h) for h in report.bad_blobs.get(pack, [])}
        for snapshot_id in snapshots:
            count, paths = affected_files(store, snapshot_id, blobs)
            before = out.get(snapshot_id, (0, []))
            out[snapshot_id] = (before[0] + count, before[1] + paths)
    return out


@snapshots_cmd.command("prune")
@click.option("--dry-run", is_flag=True, help="print the decisions and change nothing")
@click.option(
    "--grace-minutes",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="packs no snapshot needs are removed only once this old (a writer whose lock was "
    "lost may still be about to name them)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def prune_snapshots_cmd(
    ctx: click.Context, dry_run: bool, grace_minutes: float, as_json: bool
) -> None:
    """Apply the retention policy ([retention]) to each target's snapshots, forget the others,
    then remove the packs no snapshot needs (repacking partly used ones) under the store's
    exclusive lock: backups wait, a killed prune is finished by the next one."""
    with runtime(ctx, as_json=as_json) as rt:
        store = open_for_reading(rt)
        result = prune_snapshots(
            store,
            policy_of(rt.settings.retention),
            datetime.now(UTC),
            dry_run=dry_run,
            sink=rt.sink,
            grace=timedelta(minutes=grace_minutes),
        )
        if as_json:
            rt.emit_json(result.to_json())
            return
        for decision in result.decisions:
            verdict = "keep  " if decision.keep else "remove"
            click.echo(
                f"{verdict} {decision.candidate.name} {decision.candidate.kind}:"
                f"{decision.candidate.target}  {'; '.join(decision.reasons)}"
            )
        if dry_run:
            click.echo("dry run: nothing changed")


@snapshots_cmd.command("copy")
@click.option(
    "--to",
    "names",
    multiple=True,
    metavar="LOCATION",
    help="copy to this location (repeatable; default: every location that takes each backup)",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def copy_snapshots(ctx: click.Context, names: tuple[str, ...], as_json: bool) -> None:
    """Copy the chunk store to other locations, object for object: what a location lacks is
    sent (packs, then index, then snapshots, so a snapshot arrives only whole), nothing there
    is overwritten or removed. Packs stay encrypted; no key is needed. A copy is a mirror: a
    restore reads a missing or damaged pack from it."""
    with runtime(ctx, as_json=as_json) as rt:
        store = open_for_reading(rt)
        wanted = list(names) or [p.name for p in automatic(locations(rt.settings))]
        if not wanted:
            raise UsageError(
                "no location to copy to",
                hint="name one with --to, or configure [locations.NAME] (see 'S3 locations')",
            )
        done = copy_store(rt, store, wanted)
        if as_json:
            rt.emit_json([{"location": n, **dataclasses.asdict(r)} for n, r in done])
            return
        for name, report in done:
            click.echo(
                f"{name}: {len(report.snapshots)} snapshot(s) copied ({report.already} there "
                f"already), {report.packs} pack(s), {report.bytes:,} bytes"
            )
