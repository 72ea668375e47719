"""Copies between locations: the local repository (primary) and any number of other storages
(S3-compatible buckets). Keys are the same everywhere, so a location is a mirror.

A copy streams the artifact once (read -> sha256 -> writer), checks the digest against the
manifest before the writer commits, then writes the manifest: like a backup, a copy without its
manifest is not a backup there, and a half upload is never visible (the writer aborts). Set
records follow their members. Copies are idempotent: an artifact already present with the
manifest's size and a manifest is skipped.

``fetch`` is the way back: when the local copy of a backup is missing or damaged, the first
location holding a good copy is read into the local repository (verified the same way), so
restore, verify and drill can fall back to another location.

A backup's companions (``catalog.companions``: a dump's globals) go wherever it goes, ahead of
it: a restore on a fresh host needs them beside the dump.

``representatives`` chooses what the monthly archive takes: retention's monthly (or yearly)
choice for each finished month, with the sets those belong to, not every backup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .. import catalog, naming, retention
from ..errors import IntegrityError, SafeholdError, UsageError
from ..model import Event, EventSink, Manifest, null_sink
from ..storage import LocalStorage, Storage
from ._pipeline import HashingWriter, Progress, check_digest, sha256_of
from .pitr.base import BASE

CHUNK = 1 << 20


@dataclass(frozen=True)
class Location:
    name: str
    storage: Storage
    copy_after_backup: bool = True
    archive: bool = False


@dataclass
class CopyResult:
    location: str
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0
    sets: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "location": self.location,
            "copied": self.copied,
            "skipped": self.skipped,
            "bytes": self.bytes,
            "sets": self.sets,
        }


def copy_backups(
    source: Storage, destination: Location, names: Sequence[str], sink: EventSink = null_sink
) -> CopyResult:
    """Copy the named artifacts (with manifests) and the records of sets they complete."""
    result = CopyResult(destination.name)
    for name in with_companions(source, names, sink):
        manifest = catalog.read_manifest(source, name)
        if manifest is None:
            raise UsageError(
                f"{name} has no manifest: only backups are copied",
                hint="'safehold list' shows the backups and their status",
            )
        if problem := _identity(source, name, manifest):
            # Copying it would hand the location a backup that is not what its name says.
            raise catalog.identity_error(name, problem)
        if _present(destination.storage, manifest):
            result.skipped.append(name)
            continue
        sink(Event("copy", f"copying {name} to {destination.name}"))
        _transfer(source, destination.storage, manifest, sink, f"copy {name}")
        catalog.write_manifest(destination.storage, manifest)
        result.copied.append(name)
        result.bytes += manifest.size
    copy_repository_key(source, destination.storage)
    there = set(names) | {
        naming.artifact_of(k) for k in destination.storage.list(naming.MANIFEST_DIR)
    }
    for backup_set in catalog.read_sets(source):
        if set(backup_set.members) <= there and not destination.storage.exists(
            naming.set_key(backup_set.id)
        ):
            catalog.write_set(destination.storage, backup_set)
            result.sets.append(backup_set.id)
    sink(
        Event(
            "copy",
            f"{destination.name}: {len(result.copied)} copied ({result.bytes} bytes), "
            f"{len(result.skipped)} already there",
            data=result.to_json(),
        )
    )
    return result


def representatives(storage: Storage, period: retention.Period, now: datetime) -> list[str]:
    """The good backups ``retention.representatives`` picks for each finished month (or year)
    of ``storage``, oldest first."""
    candidates = [
        retention.Candidate(
            r.name, r.kind, r.manifest.target, r.created, r.status, set_id=r.manifest.set_id
        )
        for r in catalog.scan(storage)
        if r.manifest is not None
    ]
    return retention.representatives(candidates, period, now)


def fetch(
    local: LocalStorage,
    locations: Sequence[Location],
    name: str,
    sink: EventSink = null_sink,
    *,
    force: bool = False,
) -> str:
    """Make the local repository hold a good copy of ``name``; returns where it came from
    ("local" when it was already good there). ``force``: read it from ``locations`` anyway."""
    try:
        manifest = catalog.read_manifest(local, name)
    except IntegrityError:
        manifest = None  # an unreadable local manifest is a damaged copy: fetch a good one
    if (
        not force
        and manifest is not None
        and _identity(local, name, manifest) is None
        and _good_locally(local, manifest)
    ):
        _fetch_companions(local, locations, manifest, sink, force=False)
        return "local"
    problems = []
    for location in locations:
        try:
            remote = catalog.read_manifest(location.storage, name)
            if remote is None:
                problems.append(f"{location.name}: no copy")
                continue
            if problem := catalog.identity_problem(name, remote):
                raise catalog.identity_error(name, problem)  # reported; the next location is tried
            sink(Event("fetch", f"{name}: reading the copy in {location.name}"))
            local.ensure()
            # Passphrase mode: the fetched copy opens only with the wrapped repository key.
            copy_repository_key(location.storage, local)
            _fetch_companions(local, locations, remote, sink, force=force)
            _transfer(location.storage, local, remote, sink, f"fetch {name}")
            catalog.write_manifest(local, remote)
            catalog.update_latest_links(local, catalog.scan(local))
            return location.name
        except SafeholdError as exc:
            problems.append(f"{location.name}: {exc.message}")
            sink(
                Event(
                    "fetch", f"{name}: the copy in {location.name} failed: {exc.message}", "warning"
                )
            )
    raise IntegrityError(
        f"no good copy of {name}: " + ("; ".join(problems) or "no other location configured"),
        hint="'safehold list' shows which locations hold each backup",
    )


def with_companions(
    storage: Storage, names: Sequence[str], sink: EventSink = null_sink
) -> list[str]:
    """``names`` with each backup's companions ahead of it (a copy is usable once its own
    manifest is there, so what it needs arrives first); a companion ``storage`` lacks is left
    out with a warning: the backup itself is still good."""
    ordered: list[str] = []
    for name in names:
        try:
            manifest = catalog.read_manifest(storage, name)
        except SafeholdError:
            manifest = None  # the caller reports the backup itself
        for companion in catalog.companions(manifest):
            try:
                found = catalog.read_manifest(storage, companion)
                problem = found and _identity(storage, companion, found)
            except SafeholdError as exc:
                found, problem = None, exc.message
            if found is None or problem:
                why = f"is damaged ({problem})" if problem else "is missing"
                sink(Event("copy", f"{name}: its companion {companion} {why}", "warning"))
            elif companion not in ordered:
                ordered.append(companion)
        if name not in ordered:
            ordered.append(name)
    return ordered


def _fetch_companions(
    local: LocalStorage,
    locations: Sequence[Location],
    manifest: Manifest,
    sink: EventSink,
    *,
    force: bool,
) -> None:
    """The companions of a fetched (or locally good) backup, fetched and verified the same way.
    One that no location holds is a warning: the backup restores into a server that already
    has its roles, and the restore says what is missing on one that does not."""
    for companion in catalog.companions(manifest):
        try:
            fetch(local, locations, companion, sink, force=force)
        except SafeholdError as exc:
            sink(Event("fetch", f"{manifest.artifact}: {exc.message}", "warning"))


def holders(locations: Sequence[Location]) -> dict[str, list[str]]:
    """Backup name -> the locations holding a manifest for it, or for a PITR base backup its
    record (two listings per location)."""
    found: dict[str, list[str]] = {}
    for location in locations:
        try:
            keys = location.storage.list(naming.MANIFEST_DIR)
            records = [k for k in location.storage.list(BASE) if k.endswith(".json")]
        except SafeholdError:
            continue
        names = [naming.artifact_of(k) for k in keys]
        names += [k.rsplit("/", 1)[-1].removesuffix(".json") for k in records]
        for name in names:
            found.setdefault(name, []).append(location.name)
    return found


def _present(storage: Storage, manifest: Manifest) -> bool:
    try:
        there = catalog.read_manifest(storage, manifest.artifact)
        return (
            there is not None
            and there.sha256 == manifest.sha256
            and _identity(storage, manifest.artifact, there) is None
        )
    except (FileNotFoundError, IntegrityError):
        return False  # absent or damaged there: the copy replaces it


def _identity(storage: Storage, name: str, manifest: Manifest) -> str | None:
    """``catalog.identity_problem`` with the stored size; a missing file is a problem too."""
    try:
        size = storage.size(name)
    except FileNotFoundError:
        return "the file is missing"
    return catalog.identity_problem(name, manifest, size)


def _good_locally(local: LocalStorage, manifest: Manifest) -> bool:
    if not local.exists(manifest.artifact) or local.size(manifest.artifact) != manifest.size:
        return False
    with local.open_reader(manifest.artifact) as raw:
        digest, _ = sha256_of(raw)
    return digest == manifest.sha256


def _transfer(
    source: Storage, destination: Storage, manifest: Manifest, sink: EventSink, task: str
) -> None:
    progress = Progress(sink, task, manifest.size)
    with (
        source.open_reader(manifest.artifact) as raw,
        destination.open_writer(manifest.artifact) as writer,
    ):
        hashed = HashingWriter(writer)
        while chunk := raw.read(CHUNK):
            hashed.write(chunk)
            progress.advance(len(chunk))
        # Inside the writer block: a mismatch aborts the upload instead of committing it.
        check_digest(
            manifest.artifact, manifest.sha256, hashed.hexdigest(), manifest.size, hashed.size
        )
    progress.close()


def copy_repository_key(source: Storage, destination: Storage) -> None:
    """Passphrase mode: the copies are useless without the (passphrase-wrapped) repository key,
    so it travels with them; it is never replaced once there."""
    try:
        key = source.read_bytes(naming.REPOSITORY_KEY)
    except FileNotFoundError:
        return
    if not destination.exists(naming.REPOSITORY_KEY):
        destination.put_bytes(naming.REPOSITORY_KEY, key)


def mirror(source: Storage, destination: LocalStorage, names: Sequence[str]) -> None:
    """Copy manifests, set records, the repository key and the artifacts ``names`` as they are
    (no digest check: what is read is what a verify or drill of ``source`` must judge)."""
    destination.ensure()
    for key in source.list(naming.MANIFEST_DIR) + source.list(naming.SETS_DIR):
        destination.put_bytes(key, source.read_bytes(key))
    copy_repository_key(source, destination)
    for name in with_companions(source, names):
        try:
            raw = source.open_reader(name)
        except FileNotFoundError:
            continue  # the manifest stays: verify reports the copy as missing
        with raw, destination.open_writer(name) as writer:
            while chunk := raw.read(CHUNK):
                writer.write(chunk)
