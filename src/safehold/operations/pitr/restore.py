"""Restore to a point in time: a base backup, then WAL replayed by the server up to a target.

Steps: pick the newest base backup that ends before the target; stream it from the first place
holding a good copy (the repository, else a copy location) through sha256 and age into
``zstd -d``, unpacked into the target folder (``base_extract``; the folder is wiped when the
stream proves damaged, and the next place is tried); every extracted file is checked
against pg_basebackup's manifest (from CRC-32C sums taken while unpacking, else with
``pg_verifybackup``) and is on disk before the server starts; the recovery settings go into
``postgresql.auto.conf`` with ``recovery.signal``; the server starts, replays WAL (read ahead by
``wal_prefetch``, else fetched by ``wal-fetch``) and promotes at the target; the point reached
is read from its log.

Timelines: ``recovery_target_timeline`` stays at PostgreSQL's default, ``latest``; the server
asks ``wal-fetch`` for ``N.history`` files and follows a switch made by an earlier recovery.
A restored server gets a new timeline; with archiving kept on (``archive=True``, the default
when restoring in place) its WAL joins the same archive and a later recovery can follow it.

A restore point's position is not known before replay: for ``--to-name`` the newest base
backup is tried first, and when the server reports the target was not reached, the next older.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..._proc import shell_word
from ...errors import IntegrityError, UsageError
from ...model import Event, EventSink
from ...sources.restored_server import (
    LOG,
    Server,
    TargetNotReached,
    default_server_user,
    own,
    pg_ctl,
    pid_alive,
    preload,
    reached,
    recover,
    running,
    stop,
)
from ...storage import LocalStorage, Storage
from . import archive as wal
from . import chain as wal_chain
from . import prefetch as wal_prefetch
from .base import BaseBackup, choose_base, timeline_switches
from .base_extract import Flusher, Unpacked, clear, extract

__all__ = ["LOG", "Server", "Target", "TargetNotReached", "default_server_user", "restore", "stop"]


@dataclass(frozen=True)
class Target:
    """Where recovery stops: a time, an LSN, a named restore point, or (none set) the end."""

    time: datetime | None = None
    lsn: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.time, self.lsn, self.name)) > 1:
            raise UsageError("give one recovery target: a time, an LSN or a restore point name")
        if self.lsn is not None:
            wal.lsn_value(self.lsn)

    def settings(self) -> dict[str, str]:
        if self.time is not None:
            return {"recovery_target_time": self.time.isoformat(sep=" ")}
        if self.lsn is not None:
            return {"recovery_target_lsn": self.lsn}
        if self.name is not None:
            return {"recovery_target_name": self.name}
        return {}

    def describe(self) -> str:
        if self.time is not None:
            return f"time {self.time.isoformat(sep=' ')}"
        if self.lsn is not None:
            return f"LSN {self.lsn}"
        if self.name is not None:
            return f"restore point {self.name!r}"
        return "the end of the archive"


@dataclass(frozen=True)
class RestoreResult:
    base: str
    read_from: str
    target_dir: Path
    port: int
    took_s: float
    extract_s: float
    verify_s: float  # checking the files against the manifest (verified_by says how)
    reached: str  # what the server logged about where recovery stopped
    lsn: str
    timeline: int
    running: bool
    moved_aside: Path | None
    read_ahead: int = 0  # segments the restore_command took from the read-ahead spool
    verified_by: str = ""


def restore(
    archive: wal.WalArchive,
    target_dir: Path,
    target: Target,
    server: Server,
    *,
    force: bool = False,
    keep_running: bool = False,
    archiving: bool | None = None,
    sink: EventSink,
    timeout: float = 3600.0,
    records: Storage | None = None,
) -> RestoreResult:
    """Restore into ``target_dir`` (new, or with ``force`` the current one, moved aside first)
    and recover to ``target``. ``archiving`` (default: on when restoring in place) keeps the
    restored server archiving into this repository. ``records``: the place whose base backup
    records and timelines are read (default: the repository; a location on a new host)."""
    began = time.monotonic()
    preload()
    if records is None:
        switches = timeline_switches(archive)
    else:
        switches = wal_chain.read_history(archive, wal_chain.newest_timeline(records))
    candidates = choose_base(
        records or archive.primary, to_time=target.time, to_lsn=target.lsn, switches=switches
    )
    if target.name is None:
        candidates = candidates[:1]
    target_dir = Path(target_dir).absolute()
    moved = _prepare(target_dir, force, server)
    if archiving is None:
        archiving = moved is not None
    for number, base in enumerate(candidates, 1):
        sink(Event("pitr", f"restoring base backup {base.name} into {target_dir}"))
        extract_began = time.monotonic()
        flusher = Flusher(target_dir, server.run_as)
        try:
            where, unpacked = extract(archive, base, flusher, sink)
            extract_s = time.monotonic() - extract_began
            # The flush threads finish the last files while the sums are compared
            verify_s, verified_by = _verify(base, unpacked, server.bin_dir, target_dir)
            flusher.finish()
        finally:
            flusher.close()
        sink(
            Event(
                "pitr",
                f"{base.name}: {base.raw_size} bytes extracted in {extract_s:.1f}s, checked "
                f"against its manifest ({verified_by}) in {verify_s:.2f}s, on disk after "
                f"{time.monotonic() - extract_began:.1f}s; starting the server",
            )
        )
        spool = target_dir / wal_prefetch.SPOOL
        _write_recovery(archive, target_dir, target, server, archiving, spool)
        own(target_dir, server.run_as)
        read_ahead = wal_prefetch.Prefetch(
            archive, base.start_segment, switches, spool, server.run_as
        )
        try:
            with read_ahead:
                lsn, timeline = recover(target_dir, server, began + timeout)
        except TargetNotReached:
            if number == len(candidates):
                raise
            sink(Event("pitr", f"{target.describe()} is not after {base.name}; trying older"))
            clear(target_dir)
            continue
        point = reached(target_dir / LOG)
        if not keep_running:
            pg_ctl(server, target_dir, "-m", "fast", "-w", "stop", check=False)
        took = time.monotonic() - began
        sink(Event("pitr", f"recovered {base.name} to: {point} (lsn {lsn}) in {took:.1f}s"))
        return RestoreResult(
            base.name,
            where,
            target_dir,
            server.port,
            took,
            extract_s,
            verify_s,
            point,
            lsn,
            timeline,
            keep_running,
            moved,
            read_ahead.fetched - read_ahead.left,
            verified_by,
        )
    raise AssertionError("unreachable: choose_base returns at least one base backup")


def _prepare(target_dir: Path, force: bool, server: Server) -> Path | None:
    """An empty folder to restore into; with ``force`` an existing cluster is moved aside
    (never deleted), refusing while its server runs."""
    moved = None
    if target_dir.exists() and any(target_dir.iterdir()):
        if not force:
            raise UsageError(
                f"{target_dir} is not empty",
                hint="restore into a new folder, or give --force to move the current one aside",
            )
        if running(server, target_dir) or pid_alive(target_dir):
            raise UsageError(
                f"a server is running on {target_dir}",
                hint="stop it first (pg_ctl stop -D ..., or stop its service/container)",
            )
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        moved = target_dir.with_name(f"{target_dir.name}.safehold-before-{stamp}")
        os.rename(target_dir, moved)
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(target_dir, 0o700)
    return moved


def _verify(
    base: BaseBackup, unpacked: Unpacked, bin_dir: Path, target_dir: Path
) -> tuple[float, str]:
    """Check every unpacked file against pg_basebackup's manifest before the server starts:
    from the CRC-32C sums taken while writing (``check_manifest``), or, when those cannot
    decide, with ``pg_verifybackup``; (seconds, which). WAL is checked by replay (-n)."""
    started = time.monotonic()
    problems = None
    if unpacked.manifest is not None:
        problems = check_manifest(base, unpacked.manifest, unpacked.files, target_dir)
    if problems is None:
        return _verify_backup(bin_dir, target_dir), "pg_verifybackup"
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise IntegrityError(
            f"base backup {base.name} does not match its manifest: "
            + "; ".join(problems[:5])
            + more,
            hint="the base backup's files do not match its manifest; restore from another copy",
        )
    return time.monotonic() - started, "CRC-32C while unpacking"


def _verify_backup(bin_dir: Path, target_dir: Path) -> float:
    """pg_verifybackup against the manifest pg_basebackup put in the tar (WAL is checked by
    replay, from the archive: -n)."""
    started = time.monotonic()
    tool = bin_dir / "pg_verifybackup"
    if not (target_dir / "backup_manifest").exists() or not tool.exists():
        return 0.0
    proc = subprocess.run(
        [str(tool), "-n", "-q", str(target_dir)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise IntegrityError(
            f"pg_verifybackup found damaged or missing files: {proc.stderr.strip()[-1500:]}",
            hint="the base backup's files do not match its manifest; restore from another copy",
        )
    return time.monotonic() - started


def _conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _write_recovery(
    archive: wal.WalArchive,
    target_dir: Path,
    target: Target,
    server: Server,
    archiving: bool,
    spool: Path,
) -> None:
    if not isinstance(archive.primary, LocalStorage):
        raise UsageError("point-in-time restore needs the local repository (BACKUP_DIR)")
    root = shell_word(str(archive.primary.root.absolute()))
    fetch = f"{server.command} wal-fetch --backup-dir {root}"
    if server.config is not None:
        fetch += f" --config {shell_word(str(server.config.absolute()))}"
    lines = {
        "restore_command": wal_prefetch.restore_command(spool, fetch),
        "recovery_target_action": "promote",
    }
    if not archiving:
        lines["archive_mode"] = "off"  # a side copy must not archive into the source's archive
    lines.update(target.settings())
    with (target_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"\n# safehold pitr restore to {target.describe()}\n")
        conf.writelines(f"{k} = {_conf(v)}\n" for k, v in lines.items())
    (target_dir / "recovery.signal").touch()
    (target_dir / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)


# What pg_verifybackup leaves out by default (pg_wal with all below it): files a restore or
# pg_basebackup -R may change, and the WAL, which -X none leaves out and replay checks.
MANIFEST_IGNORED = (
    "backup_manifest",
    "pg_wal",
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
)


def check_manifest(
    base: BaseBackup, manifest: bytes, files: dict[str, tuple[int, str | None]], folder: Path
) -> list[str] | None:
    """pg_verifybackup's checks (-n: no WAL) on a base backup unpacked into ``folder``, from
    the sizes and CRC-32C sums taken as each file was written (``files``); the problems found,
    or None when the manifest uses a checksum those sums cannot decide (pg_verifybackup must).
    The manifest's own SHA-256, every file in it present with its size and checksum, nothing
    else there (in ``files`` or on disk), and its WAL range and system id those of ``base``."""
    lines = manifest.split(b"\n")
    if len(lines) < 3 or lines[-1]:
        return ["backup_manifest is not a manifest (no final newline)"]
    body = b"\n".join(lines[:-2]) + b"\n"
    try:
        data = json.loads(manifest)
        listed = {_manifest_path(e): e for e in data["Files"]}
        ranges = data["WAL-Ranges"]
        claimed = str(data["Manifest-Checksum"])
    except (ValueError, KeyError, TypeError) as exc:
        return [f"backup_manifest cannot be read: {exc}"]
    problems = []
    if hashlib.sha256(body).hexdigest() != claimed.lower():
        problems.append("backup_manifest's own checksum does not match its content")
    if any(e.get("Checksum-Algorithm", "NONE") not in ("CRC32C", "NONE") for e in listed.values()):
        return None
    wal_range = (ranges[0]["Start-LSN"], ranges[-1]["End-LSN"], int(ranges[-1]["Timeline"]))
    if wal_range != (base.start_lsn, base.stop_lsn, base.timeline):
        problems.append(f"backup_manifest's WAL range {wal_range} is not {base.name}'s")
    on_disk = _regular_files(folder)
    for path, entry in listed.items():
        if _ignored(path):
            continue
        if path not in files or path not in on_disk:
            problems.append(f'"{path}" is in the manifest but not in the backup')
        elif entry["Size"] != files[path][0] or entry["Size"] != on_disk[path]:
            size = on_disk[path] if on_disk[path] != files[path][0] else files[path][0]
            problems.append(f'"{path}" has size {size}, the manifest says {entry["Size"]}')
        elif "Checksum" in entry and (files[path][1] or "") != entry["Checksum"].lower():
            problems.append(f'"{path}": checksum mismatch')
    extra = {p for p in (set(files) | set(on_disk)) - set(listed) if not _ignored(p)}
    problems += [f'"{p}" is in the backup but not in the manifest' for p in sorted(extra)]
    if "System-Identifier" in data and problems == []:
        with (folder / "global" / "pg_control").open("rb") as control:
            system = int.from_bytes(control.read(8), "little")
        if system != int(data["System-Identifier"]):
            problems.append("global/pg_control's system identifier is not the manifest's")
    return problems


def _manifest_path(entry: dict[str, Any]) -> str:
    if "Encoded-Path" in entry:
        return bytes.fromhex(entry["Encoded-Path"]).decode("utf-8", "surrogateescape")
    return str(entry["Path"])


def _ignored(path: str) -> bool:
    return any(path == name or path.startswith(name + "/") for name in MANIFEST_IGNORED)


def _regular_files(folder: Path) -> dict[str, int]:
    """Every entry below ``folder`` but folders, by relative path: size, or -1 when it is not
    a regular file (a link or a device: never part of a base backup)."""
    found = {}
    for root, dirs, names in os.walk(folder):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            info = os.lstat(path)
            found[os.path.relpath(path, folder)] = (
                info.st_size if stat.S_ISREG(info.st_mode) else -1
            )
    return found
