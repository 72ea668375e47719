"""A snapshot exported as the seed's own files, with their manifests, so the restore that
follows is the one every backup gets (staging database or safety backup, journal, checks).

A database snapshot becomes ``db_backup_STAMP.sql[.age]`` (its uncompressed custom-format
dump, byte for byte what pg_dump wrote, its size and BLAKE3 checked against the snapshot) plus
``db_globals_STAMP.sql[.age]``; a tree snapshot becomes ``volume_NAME_STAMP.tar.gz[.age]``. The
stamp is the snapshot's time; the manifests say which snapshot (``facts["snapshot"]``), so a
second restore of the same snapshot reuses the files instead of exporting again. The files are
encrypted to the repository's recipients when it has them: plaintext never rests on disk.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ... import catalog, naming
from ..._version import __version__
from ...chunkstore import ChunkStore, SnapshotInfo
from ...chunkstore.trees import export_stream, export_tar_gz, stream_meta
from ...crypto import EncryptionKey
from ...errors import IntegrityError
from ...model import ByteSink, Event, EventSink, Manifest, null_sink
from ...sources import pg_custom_toc
from ...sources.pg_globals import Globals
from ...storage import LocalStorage
from .._pipeline import HashingWriter, bind_key, commit, encrypted, repository_session
from ..database.backup import write_globals
from ..volumes.folder import volume_artifact
from .backup import DUMP_FORMAT
from .targets import split_target
from .unfinished import guarded, recover_exports


def materialize(
    store: ChunkStore,
    snapshot_id: str,
    repo: LocalStorage,
    *,
    encryption: EncryptionKey | None,
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
) -> Manifest:
    """The committed manifest of the seed file holding snapshot ``snapshot_id``."""
    info = store.snapshot(snapshot_id)
    kind, _ = split_target(info.target)  # only product snapshots: refused before any work
    found = _already(repo, snapshot_id)
    if found is not None:
        return found
    with repository_session(
        repo, lock_timeout=lock_timeout, purpose="safehold snapshot export", sink=sink
    ):
        recover_exports(repo, sink)  # what a killed export of it left would take its names
        found = _already(repo, snapshot_id)  # another run exported it while this one waited
        if found is not None:
            return found
        key = bind_key(repo, encryption)
        names = [_free_name(repo, name) for name in _names(info, key)]
        sink(Event("restore", f"exporting snapshot {snapshot_id} of {info.target}"))
        with guarded(repo, snapshot_id, names):  # no file of it outlives an unfinished export
            if kind == "database":
                manifest = _dump(store, info, repo, key, names[0])
            else:
                manifest = _archive(store, info, repo, key, names[0])
            commit(repo, manifest, sink, f"from snapshot {snapshot_id}, ")
    return manifest


def _names(info: SnapshotInfo, key: EncryptionKey | None) -> list[str]:
    """The files snapshot ``info`` becomes, its artifact first (named after its time)."""
    kind, target = split_target(info.target)
    if kind == "database":
        name = naming.database_artifact(info.time, "none", key is not None)
        return [name, naming.globals_artifact(name)]
    return [volume_artifact(target, info.time, "gzip", key is not None)]


def _already(repo: LocalStorage, snapshot_id: str) -> Manifest | None:
    for record in catalog.scan(repo):
        manifest = record.manifest
        if record.status == "ok" and manifest and manifest.facts.get("snapshot") == snapshot_id:
            return manifest
    return None


def _free_name(repo: LocalStorage, name: str) -> str:
    if repo.exists(name) or repo.exists(naming.manifest_key(name)):
        raise IntegrityError(
            f"{name} already exists and holds another backup than this snapshot",
            hint="move that file aside, or restore the snapshot on another host",
        )
    return name


def _dump(
    store: ChunkStore, info: SnapshotInfo, repo: LocalStorage, key: EncryptionKey | None, name: str
) -> Manifest:
    meta = stream_meta(store, info.id)
    if meta.get("format") != DUMP_FORMAT or not isinstance(meta.get("facts"), dict):
        raise IntegrityError(f"snapshot {info.id} does not hold a database dump safehold wrote")
    facts: dict[str, Any] = dict(meta["facts"])
    finder = pg_custom_toc.BlockFinder()
    with repo.open_writer(name) as writer:
        hashed = HashingWriter(writer, fast=True)
        with encrypted(hashed, key) as out:
            size = export_stream(store, info.id, _Fed(out, finder))
    found = finder.result() if finder.failed is None else None
    if found is not None:
        facts["data_offsets"] = {str(dump_id): at for dump_id, at in found[1].items()}
    captured = Globals.from_json(meta["globals"])
    roles = write_globals(repo, name, captured, info.time, key)
    return Manifest(
        artifact=name,
        kind="database",
        target=str(facts.get("database", split_target(info.target)[1])),
        compression="none",
        size=hashed.size,
        sha256=hashed.hexdigest(),
        started_at=info.time,
        finished_at=datetime.now(UTC),
        tool_version=__version__,
        facts={**facts, "dump_bytes": size, "globals": roles.artifact, "snapshot": info.id},
        encryption=key.describe() if key else None,
        blake3=hashed.fast_hexdigest(),
    )


def _archive(
    store: ChunkStore, info: SnapshotInfo, repo: LocalStorage, key: EncryptionKey | None, name: str
) -> Manifest:
    _, target = split_target(info.target)
    with repo.open_writer(name) as writer:
        hashed = HashingWriter(writer)
        with encrypted(hashed, key) as out:
            exported = export_tar_gz(store, info.id, out)
    return Manifest(
        artifact=name,
        kind="volume",
        target=target,
        compression="gzip",
        size=hashed.size,
        sha256=hashed.hexdigest(),
        started_at=info.time,
        finished_at=datetime.now(UTC),
        tool_version=__version__,
        facts={**info.stats, **exported.to_json(), "snapshot": info.id, **_source(info)},
        encryption=key.describe() if key else None,
    )


def _source(info: SnapshotInfo) -> dict[str, str]:
    """A folder member of a set: where it was taken from (a set restores it in place)."""
    source = (info.group or {}).get("source")
    return {"source": str(source)} if source else {}


class _Fed:
    """The export's bytes to ``out``, seen on the way by the dump's block finder."""

    def __init__(self, out: ByteSink, finder: pg_custom_toc.BlockFinder) -> None:
        self._out = out
        self._finder = finder

    def write(self, data: bytes | memoryview) -> int:
        if self._finder.failed is None:
            try:
                self._finder.feed(data)
            except Exception as exc:  # only a restore's shortcut: never fails the export
                self._finder.failed = repr(exc)
        self._out.write(data)
        return len(data)
