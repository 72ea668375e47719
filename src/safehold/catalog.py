"""What a repository holds: artifacts joined with their manifests, and which one is "latest".

An artifact counts as a backup only when its manifest exists and belongs to it
(``identity_problem``: the manifest names this artifact, its kind and target agree with the
name, and its size with the file). Temp files from unfinished writes never match an artifact
name, so they are never listed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import naming
from .errors import IntegrityError, UsageError
from .model import BACKUP_KINDS, BackupRecord, BackupSet, Kind, Manifest
from .storage import LocalStorage, Storage


def write_manifest(storage: Storage, manifest: Manifest) -> None:
    """The commit point of a backup: written atomically, after the artifact is durable."""
    body = json.dumps(manifest.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    storage.put_bytes(naming.manifest_key(manifest.artifact), body)


def read_manifest(storage: Storage, artifact: str) -> Manifest | None:
    try:
        raw = storage.read_bytes(naming.manifest_key(artifact))
    except FileNotFoundError:
        return None
    try:
        return Manifest.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(
            f"the manifest of {artifact} is unreadable: {exc}",
            hint="verify the repository; the artifact itself may still be restorable",
        ) from None


def identity_problem(name: str, manifest: Manifest, size: int | None = None) -> str | None:
    """Why ``manifest`` is not the record of artifact ``name`` (``size``: the file's, when
    known), or ``None``. The one rule every reader applies before it trusts a manifest: a file
    copied over another backup's name, with that backup's manifest, matches it on size and
    sha256, so only the names and the name's kind and target give it away. The sha256 is
    checked by the readers that read the bytes."""
    parsed = naming.parse(name)
    wrong = []
    if manifest.artifact != name:
        wrong.append(f"its manifest names {manifest.artifact}")
    if parsed is not None and manifest.kind != parsed.kind:
        wrong.append(f"its manifest says {manifest.kind}, the name says {parsed.kind}")
    if parsed is not None and parsed.target is not None and manifest.target != parsed.target:
        wrong.append(f"its manifest is of {manifest.target!r}, the name says {parsed.target!r}")
    if not manifest.target:
        wrong.append("its manifest names no target")  # a dump's target is its database
    if size is not None and manifest.size != size:
        wrong.append(f"{size} bytes on disk, the manifest says {manifest.size}")
    return "; ".join(wrong) or None


def identity_error(name: str, problem: str) -> IntegrityError:
    return IntegrityError(
        f"backup {name} is damaged: {problem}",
        hint="restore another backup ('safehold list' shows them), or its copy in a location "
        "(--from NAME); the file or its manifest was replaced or changed",
    )


def scan(storage: Storage) -> list[BackupRecord]:
    """Every artifact and every orphaned manifest, oldest first."""
    artifacts = {n.name: n for key in storage.list() if (n := naming.parse(key)) is not None}
    manifests = {
        naming.artifact_of(key)
        for key in storage.list(naming.MANIFEST_DIR)
        if key.endswith(".json")
    }
    records: list[BackupRecord] = []
    for name in sorted(artifacts.keys() | (manifests & _parseable(manifests))):
        parsed = artifacts.get(name) or naming.parse(name)
        assert parsed is not None
        try:
            manifest = read_manifest(storage, name) if name in manifests else None
            unreadable = False
        except IntegrityError:
            # One broken manifest must not hide every other backup: show it as damaged.
            manifest, unreadable = None, True
        size = storage.size(name) if name in artifacts else None
        if unreadable:
            status = "damaged"
        elif size is None:
            status = "missing"
        elif manifest is None:
            status = "unverified/foreign"
        elif identity_problem(name, manifest, size) is not None:
            status = "damaged"
        else:
            status = "ok"
        # A damaged record's manifest may be another backup's: its name tells its time.
        created = manifest.started_at if manifest and status == "ok" else parsed.created
        records.append(BackupRecord(name, parsed.kind, created, size, status, manifest))  # type: ignore[arg-type]
    # A dump's globals share its time; ordered just before it, so a newest-first listing shows
    # each dump followed by its globals.
    records.sort(key=lambda r: (r.created, r.kind != "globals", r.name))
    return records


def companions(manifest: Manifest | None) -> tuple[str, ...]:
    """Artifacts that travel with a backup wherever it goes (copied, fetched, pruned with it):
    a database dump's globals (``facts["globals"]``, written by the backup)."""
    if manifest is None or manifest.kind != "database":
        return ()
    name = manifest.facts.get("globals")
    return (str(name),) if name else ()


def write_set(storage: Storage, backup_set: BackupSet) -> None:
    """The commit point of a full-system backup: written after every member's manifest."""
    body = json.dumps(backup_set.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    storage.put_bytes(naming.set_key(backup_set.id), body)


def read_sets(storage: Storage) -> list[BackupSet]:
    """Every complete set, oldest first."""
    sets: list[BackupSet] = []
    for key in storage.list(naming.SETS_DIR):
        if not key.endswith(".json"):
            continue
        try:
            sets.append(BackupSet.from_json(json.loads(storage.read_bytes(key))))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"the set record {key} is unreadable: {exc}",
                hint="its members are still listed as single backups and can be restored one "
                "by one",
            ) from None
    sets.sort(key=lambda s: (s.started_at, s.id))
    return sets


def set_status(backup_set: BackupSet, by_name: dict[str, BackupRecord]) -> str:
    """ok when every member is a good backup, else what is wrong with the first that is not."""
    for member in backup_set.members:
        record = by_name.get(member)
        if record is None:
            return f"member {member} missing"
        if record.status != "ok":
            return f"member {member} {record.status}"
    return "ok"


def _parseable(names: Iterable[str]) -> set[str]:
    return {name for name in names if naming.parse(name) is not None}


def newest_by_target(
    records: Iterable[BackupRecord], *, good_only: bool = True
) -> dict[tuple[Kind, str], BackupRecord]:
    """The newest backup of each (kind, target) among ``records`` (oldest first, as ``scan``
    returns them); only good backups unless ``good_only`` is false. Globals and safety copies
    are not a target's backups."""
    newest: dict[tuple[Kind, str], BackupRecord] = {}
    for record in records:
        if record.kind not in BACKUP_KINDS:
            continue
        if record.manifest is not None and (record.status == "ok" or not good_only):
            newest[(record.kind, record.manifest.target)] = record
    return newest


def latest(
    records: Iterable[BackupRecord], kind: Kind, target: str | None = None
) -> BackupRecord | None:
    good = [
        r
        for r in records
        if r.kind == kind
        and r.status == "ok"
        and (target is None or (r.manifest is not None and r.manifest.target == target))
    ]
    return good[-1] if good else None


@dataclass(frozen=True)
class Resolved:
    """A restore source: a catalogued artifact, or a file the user handed us directly."""

    path: Path
    name: str
    manifest: Manifest | None
    in_repository: bool


def resolve(storage: LocalStorage, ref: str, kind: Kind, target: str | None = None) -> Resolved:
    """``latest``, an artifact name in the repository, or a path to any file. A fixed
    ``latest`` name of the repository (``db_backup_latest.sql``...) means what it links to,
    the newest good backup, read from the manifests: also where the link is missing."""
    fixed = _fixed_name(storage, ref)
    if fixed is not None and fixed[0] == kind:
        # Like the link: the newest good backup of its target; the seed's database names
        # give none, so they mean the database the caller restores (DB_NAME).
        ref, target = "latest", fixed[1] if fixed[1] is not None else target
    if ref == "latest":
        record = latest(scan(storage), kind, target)
        if record is None:
            what = f"{kind} {target!r}" if target else kind
            raise UsageError(
                f"no good backup of {what} in {storage.description}",
                hint="run 'safehold backup' first, or name a backup file ('safehold list')",
            )
        return Resolved(storage.path(record.name), record.name, record.manifest, True)
    candidate = Path(ref)
    in_repo = storage.path(candidate.name)
    if candidate.name == ref and in_repo.exists():
        candidate = in_repo
    if candidate.is_symlink() and candidate.resolve().parent == storage.root.resolve():
        candidate = storage.path(candidate.resolve().name)  # a "latest" link names a real backup
    if not candidate.exists():
        raise UsageError(
            f"no backup named {ref!r}",
            hint=f"'safehold list' shows the backups in {storage.description}",
        )
    if not candidate.is_file():
        raise UsageError(f"{ref} is not a file")
    repo_root = storage.root.resolve()
    if candidate.resolve().parent == repo_root and naming.parse(candidate.name):
        manifest = read_manifest(storage, candidate.name)
        problem = manifest and identity_problem(candidate.name, manifest, candidate.stat().st_size)
        if problem:
            raise identity_error(candidate.name, problem)
        return Resolved(candidate, candidate.name, manifest, True)
    return Resolved(candidate, candidate.name, None, False)


def _fixed_name(storage: LocalStorage, ref: str) -> tuple[Kind, str | None] | None:
    """(kind, volume) when ``ref`` is a fixed ``latest`` name, bare or in the repository."""
    given = Path(ref)
    if given.name != ref and given.parent.resolve() != storage.root.resolve():
        return None  # a file of that name elsewhere is a file the user hands us
    return naming.latest_link_of(given.name)


def latest_link_plan(records: Iterable[BackupRecord], primary: str | None = None) -> dict[str, str]:
    """Fixed name -> artifact: each target's newest good backup (``records`` oldest first)
    takes every name ``naming.latest_links`` gives it.

    Databases: a dump whose name carries its database takes ``db_backup_NAME_latest.sql``.
    The seed's ``db_backup_latest.sql`` / ``latest_db_backup.sql`` name the newest seed-named
    dump of one database, ``primary`` (the one DB_NAME names; ``None``: the database of the
    newest seed-named dump), never another database's: two databases backed up with the
    seed's names into one repository used to make them name whichever ran last. When seed-named
    dumps of several databases share a repository, each of them also gets
    ``db_backup_NAME_latest.sql``."""
    plan: dict[str, str] = {}
    databases: dict[str, tuple[str, naming.ArtifactName]] = {}  # newest of each, any style
    seed: dict[str, tuple[str, naming.ArtifactName]] = {}  # newest seed-named dump of each
    named: set[str] = set()  # databases with a dump whose name carries it
    newest_seed: str | None = None
    for record in records:
        parsed = naming.parse(record.name)
        if record.status != "ok" or parsed is None or parsed.kind not in BACKUP_KINDS:
            continue
        if parsed.kind == "volume":
            for link in _links_of_target(parsed):
                plan.pop(link, None)  # a newer backup of the target drops the older's names
            plan.update(dict.fromkeys(naming.latest_links(parsed), record.name))
            continue
        assert record.manifest is not None  # "ok" means a manifest that names this file
        database = record.manifest.target
        databases[database] = (record.name, parsed)
        if parsed.target is None:
            seed[database] = (record.name, parsed)
            newest_seed = database
        else:
            named.add(database)
    for database, (name, parsed) in databases.items():
        if (database in named or len(seed) > 1) and not naming.database_name_problem(database):
            as_named = dataclasses.replace(parsed, target=database)
            plan.update(dict.fromkeys(naming.latest_links(as_named), name))
    chosen = primary if primary in seed else newest_seed
    if chosen is not None:
        name, parsed = seed[chosen]
        plan.update(dict.fromkeys(naming.latest_links(parsed), name))
    return plan


def stale_latest_links(storage: Storage, plan: dict[str, str]) -> list[str]:
    """The fixed-name links (local disk only) that ``plan`` does not keep: a format-specific
    name whose format is no longer the newest, or a target with no good backup left."""
    if not isinstance(storage, LocalStorage) or not storage.root.is_dir():
        return []
    with os.scandir(storage.root) as entries:
        return sorted(
            entry.name
            for entry in entries
            if entry.is_symlink()
            and naming.latest_link_of(entry.name) is not None
            and entry.name not in plan
        )


def update_latest_links(
    storage: Storage, records: list[BackupRecord], primary: str | None = None
) -> list[str]:
    """Point the fixed ``latest`` names at the newest good backup of each target and remove
    the ones that name none (links first, so a name never points at nothing newer); returns
    the links removed. ``primary``: the database the seed's names follow (DB_NAME); ``None``
    keeps the one they name now (``seed_link_database``)."""
    if not isinstance(storage, LocalStorage):
        return []
    plan = latest_link_plan(records, primary or seed_link_database(storage, records))
    for link, artifact in plan.items():
        storage.link(link, artifact)
    stale = stale_latest_links(storage, plan)
    for link in stale:
        storage.delete(link)
    return stale


def seed_link_database(storage: Storage, records: Iterable[BackupRecord]) -> str | None:
    """The database the seed's ``db_backup_latest.sql`` names now (local disk), if any."""
    if not isinstance(storage, LocalStorage):
        return None
    try:
        pointed = os.readlink(storage.path(naming.DB_LATEST_LINKS[0]))
    except OSError:
        return None
    name = Path(pointed).name
    found = next((r for r in records if r.name == name and r.manifest is not None), None)
    return found.manifest.target if found is not None and found.manifest is not None else None


def _links_of_target(parsed: naming.ArtifactName) -> tuple[str, ...]:
    """Every fixed name a backup of this target could have, in any format."""
    return tuple(
        link
        for zstd in (False, True)
        for encrypted in (False, True)
        for link in naming.latest_links(dataclasses.replace(parsed, zstd=zstd, encrypted=encrypted))
    )
