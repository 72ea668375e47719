"""The configured copy locations ([locations.NAME]) as storages, and the copy steps commands
share: after a backup, and before a restore that reads from another location."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .. import catalog, naming
from ..config import LocationSettings, Settings
from ..errors import StorageError, UsageError
from ..model import BackupRecord, Kind, Manifest
from ..operations.copy import CopyResult, Location, copy_backups, fetch, mirror
from ..storage import LocalStorage
from .runtime import Runtime

MIB = 1 << 20


def open_location(spec: LocationSettings) -> Location:
    # boto3 takes half a second to import: only commands that use a location pay for it.
    from ..storage.s3 import S3Storage

    storage = S3Storage(
        spec.endpoint or None,
        spec.bucket,
        spec.prefix,
        region=spec.region or None,
        ca_bundle=spec.ca_bundle,
        profile=spec.profile or None,
        credentials_file=spec.credentials_file,
        part_size=spec.part_size_mb * MIB,
        concurrency=spec.concurrency,
        max_attempts=spec.max_attempts,
        retry_mode=spec.retry_mode,  # type: ignore[arg-type]  # botocore checks it
        allow_http=spec.allow_http,
    )
    return Location(spec.name, storage, spec.copy_after_backup, spec.archive)


def locations(settings: Settings, names: Sequence[str] = ()) -> list[Location]:
    """Every configured location, or the ones named (an unknown name is an error)."""
    known = {spec.name: spec for spec in settings.locations}
    for name in names:
        if name not in known:
            raise UsageError(
                f"no location named {name!r}",
                hint="configured: " + (", ".join(known) or "none ([locations.NAME] in the file)"),
            )
    return [open_location(known[n]) for n in (names or list(known))]


def copy_to(
    rt: Runtime, storage: LocalStorage, targets: list[Location], names: list[str]
) -> list[CopyResult]:
    """Copy ``names`` to each target under that location's bucket lock (hosts sharing a
    bucket each use their own prefix, and one writer per prefix at a time)."""
    from ..storage.s3 import S3Storage
    from ..storage.s3_lock import S3Lock

    done = []
    for target in targets:
        assert isinstance(target.storage, S3Storage)
        target.storage.ensure()
        lock = S3Lock(target.storage, purpose="safehold copy")
        with lock.hold(timeout=rt.settings.lock_timeout):
            done.append(copy_backups(storage, target, names, rt.sink))
    return done


def automatic(places: Sequence[Location]) -> list[Location]:
    """The locations that take a copy of everything (backups, base backups, WAL) as it is
    made: not the long-term archive, which only the schedule's monthly copy fills."""
    return [place for place in places if place.copy_after_backup and not place.archive]


def copy_after_backup(rt: Runtime, storage: LocalStorage, made: list[Manifest]) -> None:
    """The automatic copies; a failure says the backup itself is good."""
    targets = automatic(locations(rt.settings))
    if not targets or not made:
        return
    try:
        copy_to(rt, storage, targets, [m.artifact for m in made])
    except StorageError as exc:
        exc.message = (
            f"the backup is written and good locally, but copying it failed: {exc.message}"
        )
        raise


def ensure_local(rt: Runtime, storage: LocalStorage, name: str, source: str | None) -> None:
    """Make the local repository hold a good copy of backup ``name``: from ``source`` when
    given, else from the first location holding a good one when the local copy is missing or
    damaged."""
    targets = locations(rt.settings, [source] if source else [])
    if source is not None or targets:
        where = fetch(storage, targets, name, rt.sink, force=source is not None)
        if where != "local":
            rt.sink_info(f"{name}: read from location {where}")


def local_ref(
    rt: Runtime,
    storage: LocalStorage,
    ref: str,
    kind: Kind,
    target: str | None,
    source: str | None,
) -> str:
    """The reference to restore from, made good locally first: a backup name or ``latest``
    (the newest good one in ``source`` when given) is fetched when ``source`` is given, or when
    the local copy is missing or damaged and locations are configured. A path is used as is."""
    if "/" in ref or (source is None and not rt.settings.locations):
        return ref
    name = ref
    if ref == "latest":
        where = locations(rt.settings, [source]) if source else []
        records = catalog.scan(where[0].storage if where else storage)
        newest = catalog.latest(records, kind, target)
        if newest is None:
            return ref  # the restore says there is none
        name = newest.name
    ensure_local(rt, storage, name, source)
    return name


@contextlib.contextmanager
def mirrored(
    rt: Runtime, source: str, pick: Callable[[list[BackupRecord]], list[str]]
) -> Iterator[LocalStorage]:
    """A scratch local repository holding location ``source``'s manifests and the artifacts
    ``pick`` chooses from its records, for verify and drill ``--from``; removed afterwards."""
    (location,) = locations(rt.settings, [source])
    scratch = Path(rt.settings.backup_dir) / naming.TMP_DIR
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"from-{source}-", dir=scratch))
    try:
        local = LocalStorage(folder)
        names = pick(catalog.scan(location.storage))
        rt.sink_info(f"reading {len(names)} backup(s) from location {source}")
        mirror(location.storage, local, names)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)
