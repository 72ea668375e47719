"""``safehold doctor``: the troubleshooting list as checks that each say OK, WARN, FAIL or SKIP,
what was found and how to fix it. A check never raises: an expected failure becomes a FAIL with
its message and hint, anything else a FAIL saying the check itself broke. Nothing is changed but
the storage probe (a hidden file written and removed). No password appears in any result.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from .... import _proc, catalog, naming
from ....crypto import DecryptionKey
from ....errors import SafeholdError
from ....model import BackupRecord, Event, EventSink, null_sink
from ....sinks.log import human_bytes
from ....sources.docker.engine import connect_docker, select_volumes, volume_mountpoint
from ....sources.postgres import PgTarget
from ....storage import LocalStorage, Storage
from . import leftovers as doctor_leftovers
from . import locations as doctor_locations
from . import schedule as doctor_schedule
from . import server as doctor_server
from . import wal as doctor_wal
from .check import RESULTS, Check, Result, State, names
from .rights import rights, roles

__all__ = ["RESULTS", "Check", "DoctorSetup", "Result", "run_checks"]

FAIL_FACTOR = 1.2  # free space under the newest backups' size times this: the next may not fit
WARN_FACTOR = 2.0
SCRIPTS = ("backup.sh", "restore.sh", "_safehold")  # the seed's scripts and their launcher
_URL_PASSWORD = re.compile(r"(\w+://[^/:@\s]*):[^/@\s]*@")  # scheme://user:secret@host

Step = Callable[[], list["Check"]]


@dataclass(frozen=True)
class DoctorSetup:
    """What to check. ``storages`` defaults to the local repository at ``backup_dir``."""

    target: PgTarget
    backup_dir: Path
    volume_include: tuple[str, ...] = ()
    volume_labels: tuple[str, ...] = ()
    volume_exclude: tuple[str, ...] = ()
    script_dirs: tuple[Path, ...] = ()
    docker_host: str | None = None
    storages: tuple[Storage, ...] = ()
    key: DecryptionKey | None = None  # reads the newest backup's globals when encrypted
    locations: tuple[tuple[str, Storage], ...] = ()  # the configured copy locations, by name
    archive_needs: doctor_wal.NeedsOf | None = None  # files a config makes wal-push use
    full_schedule: str | None = None  # the full-system job's cron expression, when scheduled


def run_checks(setup: DoctorSetup, sink: EventSink = null_sink) -> list[Check]:
    """Every check, in the order an operator would look. Never raises (but KeyboardInterrupt)."""
    state = State()
    target, folder = setup.target, setup.backup_dir
    storages = setup.storages or (LocalStorage(folder),)
    labels = [doctor_locations.storage_name(s) for s in storages]
    steps: list[tuple[str, Step]] = [
        ("backup folder", _one(_backup_folder, folder)),
        ("free space", _one(_free_space, folder)),
        *[(n, _one(doctor_locations.probe, n, s)) for n, s in zip(labels, storages, strict=True)],
        *[(f"location {n}", _many(doctor_locations.location, n, s)) for n, s in setup.locations],
        ("database server", lambda: doctor_server.database(target, state)),
        ("restore rights", lambda: [rights(target, state.reached)]),
        ("roles", lambda: [roles(target, folder, setup.key, state.reached)]),
        *[(t, _one(doctor_server.tool, target, t, state)) for t in ("pg_dump", "pg_restore")],
        ("server host", _many(doctor_server.locate, target, state)),
        ("data folder space", _one(doctor_server.data_folder, state)),
        ("wal archiver", lambda: doctor_wal.checks(target, state, folder, setup.archive_needs)),
        ("interrupted runs", _one(doctor_leftovers.leftovers, folder)),
        ("unfinished files", _one(doctor_leftovers.partials, folder)),
        ("leftover databases", lambda: [doctor_leftovers.databases(target, state.reached)]),
        ("scripts", _one(_scripts, setup.script_dirs)),
        ("docker", _one(_docker, setup, state)),
        ("volumes", lambda: _volumes(setup, state)),
        (
            doctor_schedule.NAME,
            lambda: doctor_schedule.full_system(
                setup.volume_include, setup.volume_labels, setup.full_schedule, storages[0]
            ),
        ),
    ]
    checks: list[Check] = []
    try:
        for name, step in steps:
            sink(Event("doctor", f"checking {name}", "debug"))
            checks += _guarded(name, step)
    finally:
        if state.docker_client is not None:
            state.docker_client.close()
    return [_clean(c, setup.target.password) for c in checks]


def _guarded(name: str, step: Step) -> list[Check]:
    try:
        return step()
    except SafeholdError as exc:
        return [Check(name, "FAIL", exc.message, exc.hint or "")]
    except Exception as exc:  # one broken check must not take the report down with it
        detail = f"the check itself failed unexpectedly: {type(exc).__name__}: {exc}"
        return [Check(name, "FAIL", detail, "please report this as a bug, with this line")]


def _clean(check: Check, password: str | None) -> Check:
    def scrub(text: str) -> str:
        return _URL_PASSWORD.sub(r"\1:***@", _proc.redact(text, [password]))

    return Check(check.check, check.result, scrub(check.detail), scrub(check.fix))


def _one(check: Callable[..., Check], *args: Any) -> Step:
    return lambda: [check(*args)]


def _many(check: Callable[..., list[Check] | None], *args: Any) -> Step:
    """A step of several checks, or of none (one that only learns facts for later checks)."""
    return lambda: check(*args) or []


# --- the repository ---------------------------------------------------------------------------


def _backup_folder(root: Path) -> Check:
    name = "backup folder"
    elsewhere = "or point BACKUP_DIR elsewhere"
    if not root.exists():
        parent = _existing_parent(root)
        if _read_only(parent) or not os.access(parent, os.W_OK | os.X_OK):
            detail = f"{root} does not exist and cannot be created: {parent} is not writable"
            fix = f"create it (mkdir -m 700) as a user who may, {elsewhere}"
            return Check(name, "FAIL", detail, fix)
        fix = f"run 'safehold backup' (it creates the folder 0700), or mkdir -m 700 {root}"
        return Check(name, "WARN", f"{root} does not exist yet (no backup was taken here)", fix)
    if not root.is_dir():
        detail = f"{root} is not a folder (a file is in the way)"
        return Check(name, "FAIL", detail, f"move that file away, {elsewhere}")
    if _read_only(root):
        detail = f"{root} is not writable: it is on a read-only file system"
        return Check(name, "FAIL", detail, f"remount it read-write, {elsewhere}")
    if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
        detail = f"{root} is not writable by this user (uid {os.geteuid()})"
        return Check(name, "FAIL", detail, f"fix its owner or mode (chmod 700 {root}), {elsewhere}")
    loose = [f"{p} ({stat.S_IMODE(m):04o})" for p, m in _repository_modes(root) if _loose(m)]
    if loose:
        detail = f"open to group or others: {names(loose)} (safehold writes 0600/0700)"
        return Check(name, "WARN", detail, f"chmod -R go-rwx {root}")
    mode = stat.S_IMODE(root.stat().st_mode)
    detail = f"{root} is writable ({mode:04o}); no backup or manifest is readable by others"
    return Check(name, "OK", detail)


def _loose(mode: int) -> bool:
    """A file group or others may read or change, or a folder others may change. A folder's
    read/enter bits show names only (every file in it is 0600), and its parents that safehold
    creates on the way get the umask's mode (0755, 0750); a group-writable folder is how the
    server's OS user is let in to archive WAL."""
    return bool(mode & (0o002 if stat.S_ISDIR(mode) else 0o077))


def _repository_modes(root: Path) -> list[tuple[Path, int]]:
    """The folder, its artifacts and everything under .safehold (links are not followed)."""
    found = [(root, root.stat().st_mode)]
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if naming.parse(entry.name) and entry.is_file(follow_symlinks=False):
                found.append((Path(entry.path), entry.stat(follow_symlinks=False).st_mode))
    meta = root / naming.META
    if meta.is_dir() and not meta.is_symlink():
        for path in [meta, *sorted(meta.rglob("*"))]:
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                found.append((path, mode))
    return found


def _free_space(root: Path) -> Check:
    name = "free space"
    usage = os.statvfs(root if root.is_dir() else _existing_parent(root))
    free = usage.f_bavail * usage.f_frsize
    newest = _newest_per_target(root) if root.is_dir() else []
    if not newest:
        return Check(name, "OK", f"{human_bytes(free)} free for {root}; no backup to size against")
    total = sum(r.size or 0 for r in newest)
    parts = []
    for kind in ("database", "volume"):
        sizes = [r.size or 0 for r in newest if r.kind == kind]
        if sizes:
            parts.append(f"{len(sizes)} {kind}{'s' * (len(sizes) > 1)} {human_bytes(sum(sizes))}")
    need, comfort = int(total * FAIL_FACTOR), int(total * WARN_FACTOR)
    detail = (
        f"{human_bytes(free)} free for {root}; the newest backup of each target takes "
        f"{human_bytes(total)} together ({', '.join(parts)}); the next run needs "
        f"{human_bytes(need)} ({FAIL_FACTOR}x)"
    )
    fix = f"free space on the disk holding {root}, remove backups you no longer need "
    fix += "('safehold list' shows them), or move BACKUP_DIR to a larger disk"
    if free < need:
        return Check(name, "FAIL", f"{detail}: the next backup will not fit", fix)
    if free < comfort:
        detail += f", {human_bytes(comfort)} recommended ({WARN_FACTOR}x)"
        return Check(name, "WARN", detail, fix)
    return Check(name, "OK", detail)


def _newest_per_target(root: Path) -> list[BackupRecord]:
    """The newest good backup of each database and volume: what the next full run writes."""
    return list(catalog.newest_by_target(catalog.scan(LocalStorage(root))).values())


def _existing_parent(path: Path) -> Path:
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


# --- seed scripts -----------------------------------------------------------------------------


def _scripts(dirs: tuple[Path, ...]) -> Check:
    name = "scripts"
    found = [d / s for d in dirs for s in SCRIPTS if (d / s).exists()]
    if not any(p.name != "_safehold" for p in found):
        where = ", ".join(str(d) for d in dirs) or "nowhere"
        detail = f"no backup.sh or restore.sh found (looked in {where})"
        return Check(name, "SKIP", detail, "run doctor from the folder holding scripts/")
    blocked = [str(p) for p in found if not (p.is_file() and os.access(p, os.X_OK))]
    if blocked:
        return Check(
            name, "FAIL", f"not executable: {names(blocked)}", f"chmod +x {' '.join(blocked)}"
        )
    writable = [str(p) for p in found if p.stat().st_mode & 0o022]
    if writable:
        detail = f"writable by group or others (cron runs them, often as root): {names(writable)}"
        return Check(name, "WARN", detail, f"chmod go-w {' '.join(writable)}")
    return Check(name, "OK", f"executable: {', '.join(str(p) for p in found)}")


# --- Docker -----------------------------------------------------------------------------------


def _docker(setup: DoctorSetup, state: State) -> Check:
    if not (setup.volume_include or setup.volume_labels or setup.docker_host):
        detail = "no volumes configured ([volumes] include/labels) and DOCKER_HOST not set"
        return Check("docker", "SKIP", detail)
    where = setup.docker_host or "the default socket"
    try:
        client = connect_docker()
    except SafeholdError as exc:
        state.docker_failed = True
        return Check("docker", "FAIL", f"{exc.message} (DOCKER_HOST: {where})", exc.hint or "")
    state.docker_client = client
    version = client.version().get("Version", "?")
    return Check("docker", "OK", f"Docker engine {version} answers at {where}")


def _volumes(setup: DoctorSetup, state: State) -> list[Check]:
    if not (setup.volume_include or setup.volume_labels):
        return []  # the docker check already said there is nothing to look at
    client = state.docker_client
    if client is None:
        why = "the Docker engine was not reached" if state.docker_failed else "no Docker engine"
        return [Check("volumes", "SKIP", f"not checked: {why}")]
    present = {str(v.name) for v in client.volumes.list()}
    missing = [
        n
        for n in setup.volume_include
        if not naming.is_pattern(n) and n not in present and n not in setup.volume_exclude
    ]
    fix = "'docker volume ls' lists them; create it, or fix [volumes] include"
    checks = [
        Check(f"volume {n}", "FAIL", f"no Docker volume {n} on the engine ([volumes] include)", fix)
        for n in missing
    ]
    include = tuple(n for n in setup.volume_include if n not in missing)
    chosen = select_volumes(client, include, setup.volume_labels, setup.volume_exclude)
    for volume in chosen:
        checks += _guarded(f"volume {volume}", _one(_volume, client, volume))
    if not chosen and not missing:
        detail = "no volume matches [volumes] include/labels yet (patterns may match none)"
        checks.append(Check("volumes", "OK", detail))
    return checks


def _volume(client: docker.DockerClient, name: str) -> Check:
    mountpoint = volume_mountpoint(client, name)
    try:
        with os.scandir(mountpoint) as entries:
            next(entries, None)
    except OSError as exc:
        detail = (
            f"exists, but its folder {mountpoint} is not readable here ({exc.strerror}): the "
            "helper-container path through the Docker API will be used"
        )
        fix = "run safehold on the Docker host as root to read the volume directly (faster)"
        return Check(f"volume {name}", "WARN", detail, fix)
    return Check(f"volume {name}", "OK", f"exists, readable at {mountpoint}")
