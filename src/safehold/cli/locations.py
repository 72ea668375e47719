"""The configured copy locations ([locations.NAME]) as storages, and the copy steps commands
share: after a backup, and before a restore that reads from another location.

A new host after a disaster has the config file, the key and an empty BACKUP_DIR: the commands
that read (list, restore, verify, drill) then take the one configured location as ``--from``
(``read_source``), and what a restore reads is fetched into the local repository, verified and
with its manifest, so the local repository afterwards is one a later copy finds complete.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from .. import catalog, naming
from ..config import LocationSettings, Settings
from ..errors import SafeholdError, StorageError, UsageError
from ..model import BackupRecord, Kind, Manifest
from ..operations.copy import CopyResult, Location, copy_backups, fetch, mirror
from ..operations.pitr.base import BASE
from ..storage import LocalStorage, Storage
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


def location_storage(rt: Runtime, name: str) -> Storage:
    (place,) = locations(rt.settings, [name])
    return place.storage


def holds_backups(storage: Storage) -> bool:
    """Anything a reading command could use: an artifact, a manifest, a set or a base backup
    (listings only: a large repository is not read to answer this)."""
    return (
        any(naming.parse(key) is not None for key in storage.list())
        or bool(storage.list(naming.MANIFEST_DIR))
        or bool(storage.list(naming.SETS_DIR))
        or any(key.endswith(".json") for key in storage.list(BASE))
    )


def read_source(
    rt: Runtime, storage: LocalStorage, source: str | None, *, strict: bool = True
) -> str | None:
    """The location a reading command reads from: ``source`` when given; when the local
    repository holds no backups (a new host), the only configured location, said in one line.
    With several, which one is the user's choice: ``strict`` commands stop and name the flag,
    the others (list) warn and go on with the empty repository."""
    if source is None:
        storage.check_root()  # a BACKUP_DIR that is a file is a mistake, not an empty repository
    if source is not None or not rt.settings.locations or holds_backups(storage):
        return source
    names = [spec.name for spec in rt.settings.locations]
    if len(names) == 1:
        rt.sink_info(
            f"{storage.description} holds no backups: reading from location {names[0]}, "
            "the only one configured"
        )
        return names[0]
    message = f"{storage.description} holds no backups and {len(names)} locations are configured"
    hint = f"add --from NAME to read from one of them ({', '.join(names)})"
    if strict:
        raise UsageError(message, hint=hint)
    rt.sink_warning(f"{message}; {hint}")
    return None


def copy_to(
    rt: Runtime, storage: LocalStorage, targets: list[Location], names: list[str]
) -> list[CopyResult]:
    """Copy ``names`` to each target under that location's bucket lock (hosts sharing a
    bucket each use their own prefix, and one writer per prefix at a time)."""
    from ..operations.report.fleet import write_objectives
    from ..storage.s3 import S3Storage
    from ..storage.s3_lock import S3Lock

    done = []
    for target in targets:
        assert isinstance(target.storage, S3Storage)
        target.storage.ensure()
        lock = S3Lock(target.storage, purpose="safehold copy")
        with lock.hold(timeout=rt.settings.lock_timeout):
            done.append(copy_backups(storage, target, names, rt.sink))
            # For fleet readers (status --fleet): this host's RPO/RTO beside its backups.
            write_objectives(target.storage, rt.settings.objectives_s())
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
    if naming.latest_link_of(ref) is not None:
        ref = "latest"  # a seed's fixed name means the newest good backup, not a file to fetch
    if ref == "latest":
        if source:
            (where,) = locations(rt.settings, [source])
            newest = catalog.latest(catalog.scan(where.storage), kind, target)
        else:
            newest = _newest_anywhere(rt, storage, kind, target)
        if newest is None:
            return ref  # the restore says there is none
        name = newest.name
    ensure_local(rt, storage, name, source)
    return name


def _newest_anywhere(
    rt: Runtime, storage: LocalStorage, kind: Kind, target: str | None
) -> BackupRecord | None:
    """The newest good backup of the target: the local one, unless a newer backup the local
    repository holds is damaged or missing there and a location holds a good copy of it (the
    local copy was replaced or cut: latest is still that backup, read from the location)."""
    records = catalog.scan(storage)
    good = catalog.latest(records, kind, target)
    suspects = {
        r.name
        for r in records
        if r.kind == kind
        and r.status != "ok"
        and (good is None or r.created > good.created)
        and (kind != "volume" or _volume_of(r.name) == target)
    }
    if not suspects:
        return good
    for place in locations(rt.settings):
        try:
            there = catalog.latest(catalog.scan(place.storage), kind, target)
        except SafeholdError as exc:
            rt.sink_warning(f"location {place.name} could not be read: {exc.message}")
            continue
        newer = there is not None and (good is None or there.created > good.created)
        if newer and there is not None and there.name in suspects:
            good = there
    return good


def _volume_of(name: str) -> str | None:
    """The volume an artifact's name says it holds (a damaged manifest may say another)."""
    parsed = naming.parse(name)
    return parsed.target if parsed is not None else None


def fetch_set(
    rt: Runtime, storage: LocalStorage, source: str, ref: str | None, moment: datetime | None
) -> str:
    """Fetch a complete set from location ``source`` into the local repository: every member
    (verified, with its manifest and companions), then the set record, last as in a backup.
    ``ref`` is a set id or latest; ``moment`` picks the newest good set taken at or before it.
    Returns the set's id."""
    (location,) = locations(rt.settings, [source])
    sets = catalog.read_sets(location.storage)
    if ref not in (None, "latest"):
        chosen = [s for s in sets if s.id == ref]
    else:
        by_name = {r.name: r for r in catalog.scan(location.storage)}
        chosen = [
            s
            for s in sets
            if catalog.set_status(s, by_name) == "ok" and (moment is None or s.started_at <= moment)
        ][-1:]
    if not chosen:
        raise UsageError(
            f"no complete backup set {ref or 'latest'} in location {source}"
            + (f" taken at or before {moment:%Y-%m-%d %H:%M:%S %Z}" if moment else ""),
            hint=f"'safehold list --sets --from {source}' shows the sets it holds",
        )
    backup_set = chosen[0]
    rt.sink_info(
        f"fetching set {backup_set.id} ({len(backup_set.members)} members) from location {source}"
    )
    fetched: set[str] = set()
    for member in backup_set.members:
        if member in fetched:
            continue  # it came as an earlier member's companion (a dump's globals)
        fetch(storage, [location], member, rt.sink, force=True)
        fetched.add(member)
        fetched.update(catalog.companions(catalog.read_manifest(storage, member)))
    catalog.write_set(storage, backup_set)
    return backup_set.id


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
