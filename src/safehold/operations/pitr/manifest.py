"""The files of a restored base backup checked against pg_basebackup's manifest before the
server starts: from the CRC-32C sums ``base_extract`` took while writing them (``check_manifest``,
as ``pg_verifybackup -n`` checks), or with ``pg_verifybackup`` itself when those cannot decide.
WAL is checked by replay."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from ...errors import IntegrityError
from .base import BaseBackup
from .base_extract import Unpacked

# What pg_verifybackup leaves out by default (pg_wal with all below it): files a restore or
# pg_basebackup -R may change, and the WAL, which -X none leaves out and replay checks.
MANIFEST_IGNORED = (
    "backup_manifest",
    "pg_wal",
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
)


def verify(
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
