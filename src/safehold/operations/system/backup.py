"""Full-system backup: the database(s) and a selection of volumes as one set with one id.

Several databases (``[database] names``) are members like volumes: one dump each, in one run
under one lock, even without volumes (``scope="databases"``: the set of a plain ``backup``).

One repository session covers the whole set (the lock is taken once, not per member), all
members share the set's timestamp, and a bounded pool writes them at once: per-user volumes are
often small, so the per-member cost is kept to the artifact, its manifest and a few fsyncs. Each
member commits on its own (its manifest) as soon as it is written; the ``latest`` links are
updated once; the set record is written last, and only when every member succeeded. A failed
member leaves the others as ordinary good backups, listed with their set id as incomplete.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import docker

from ... import catalog, naming
from ..._version import __version__
from ...errors import SafeholdError, UsageError
from ...model import BackupSet, Event, EventSink, Manifest, null_sink
from ...naming import VOLUME_COMPRESSIONS
from ...sources.docker.engine import check_target_name
from ...sources.postgres import PgTarget
from ...storage import LocalStorage
from .._pipeline import bind_key, commit, fresh_name, repository_session
from ..database.backup import BackupOptions, dump_database
from ..volumes.docker import volume_source
from ..volumes.downtime import quiesced
from ..volumes.folder import (
    TreeSource,
    folder_source,
    volume_artifact,
    write_tree_backup,
)
from ..volumes.options import VolumeOptions

NO_VOLUMES = (
    "the full-system backup holds no volumes, only the database: configure [volumes] include "
    "or labels (or pass --volume NAME|PATTERN)"
)


@dataclass(frozen=True)
class SetOptions:
    database: BackupOptions
    volumes: VolumeOptions = field(default_factory=VolumeOptions)
    concurrency: int = 4


def backup_set(
    storage: LocalStorage,
    *,
    database: PgTarget | None,
    client: docker.DockerClient | None,
    volumes: list[str],
    options: SetOptions,
    folders: dict[str, Path] | None = None,
    sink: EventSink = null_sink,
    databases: Sequence[PgTarget] = (),
    refused: Mapping[str, str] | None = None,
    scope: str = "full",
) -> BackupSet:
    """Back up ``database`` and ``databases`` (if given), Docker ``volumes`` and plain
    ``folders`` (target name -> folder, e.g. bind mounts) as one set; return its record.
    ``refused``: databases that were to be members but cannot be (name -> why), failing the
    set after the others are written; ``scope``: see ``BackupSet.scope``."""
    folders = dict(folders or {})
    dbs = sorted([*([database] if database else []), *databases], key=lambda t: t.dbname)
    if not dbs and not volumes and not folders and not refused:
        raise UsageError(
            "the full-system backup has nothing to back up",
            hint="configure [volumes] include / labels, or pass --volume NAME|PATTERN",
        )
    if not volumes and not folders and scope == "full":
        # Allowed (the database alone is a valid set), but a weekly full-system job that
        # silently takes no volumes leaves them without any backup.
        sink(Event("backup", NO_VOLUMES, "warning"))
    if options.volumes.compression not in VOLUME_COMPRESSIONS:
        raise UsageError(f"unknown compression {options.volumes.compression!r} for a volume")
    if options.concurrency < 1:
        raise UsageError("backup.concurrency must be at least 1")
    if len({t.dbname for t in dbs}) != len(dbs) or (len(dbs) > 1 and not options.database.named):
        # The seed's names carry no database: two dumps would share one file name.
        raise UsageError(
            "several databases in one set need distinct names and named files",
            hint="pass each database once, with BackupOptions(named=True)",
        )
    for target in folders:
        check_target_name(target)
    clash = sorted(set(folders) & set(volumes))
    if clash:
        raise UsageError(f"{', '.join(clash)} named both as a volume and as a folder")
    roots: dict[str, TreeSource] = {name: folder_source(path) for name, path in folders.items()}
    if volumes:
        assert client is not None
        for name in volumes:
            roots[name] = volume_source(client, name, options.volumes.access)
    targets = sorted(roots)
    with repository_session(
        storage,
        lock_timeout=options.database.lock_timeout,
        purpose="safehold full-system backup",
        sink=sink,
    ):
        key = bind_key(storage, options.database.encryption)
        db_options = replace(options.database, encryption=key)
        encrypted = key is not None

        def dump_name(moment: datetime, target: PgTarget) -> str:
            return db_options.artifact(moment, target.dbname, encrypted)

        def names_at(moment: datetime) -> list[str]:
            dumps = [dump_name(moment, db) for db in dbs]
            names = [n for dump in dumps for n in (dump, naming.globals_artifact(dump))]
            names.append(naming.set_key(naming.stamp(moment)))
            return names + [
                volume_artifact(v, moment, c, encrypted)
                for v in targets
                for c in (options.volumes.compression, *VOLUME_COMPRESSIONS)
            ]

        started, _ = fresh_name(storage, names_at)
        set_id = naming.stamp(started)
        what = [f"{len(dbs)} databases" if len(dbs) > 1 else "the database"] if dbs else []
        what += [f"{len(targets)} volume(s)/folder(s)"] if targets or scope == "full" else []
        sink(Event("backup", f"{_title(scope)} {set_id}: {' and '.join(what)}"))
        members = _Members(storage, sink, len(targets) + len(dbs) + len(refused or {}))
        for name, problem in sorted((refused or {}).items()):
            members.fail(f"database {name!r}", f"not backed up: {problem}")

        def copy(volume: str) -> Callable[[], Manifest]:
            name = volume_artifact(volume, started, options.volumes.compression, encrypted)

            def job() -> Manifest:
                made = write_tree_backup(
                    roots[volume],
                    volume,
                    storage,
                    name,
                    _now(),  # the member's own start: time spent queued is not its duration
                    options.volumes.compression,
                    sink,
                    set_id,
                    key,
                )
                if members.cancelled:  # finished after the containers were started again
                    storage.delete(made.artifact)
                    raise SafeholdError(f"{made.artifact} not kept: the backup was interrupted")
                return made

            return job

        try:
            with ThreadPoolExecutor(options.concurrency, thread_name_prefix="safehold") as pool:
                jobs: list[Future[None]] = []
                for db in dbs:
                    jobs.append(
                        pool.submit(
                            members.run,
                            f"database {db.dbname}" if len(dbs) > 1 else "database",
                            _dump_job(
                                db,
                                storage,
                                dump_name(started, db),
                                db_options,
                                sink,
                                set_id,
                            ),
                        )
                    )
                # One quiet period for all volumes: a container using several is stopped
                # once, and the volumes are copied at one moment of the application.
                with quiesced(
                    client,
                    volumes,
                    sink,
                    f"full-system backup {set_id}",
                    storage,
                    stop_timeout=options.volumes.stop_timeout,
                ):
                    try:
                        copies = [pool.submit(members.run, f"volume {v}", copy(v)) for v in targets]
                        wait(copies)
                    except BaseException:  # interrupted: no copy may outlast the quiet period
                        members.cancelled = True
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
                wait(jobs)
        finally:
            # Members committed so far are good backups: the links must know them.
            primary = dbs[0].dbname if len(dbs) == 1 and not db_options.named else None
            catalog.update_latest_links(storage, catalog.scan(storage), primary)
        if members.failed:
            done = len(members.manifests)
            raise SafeholdError(
                f"{_title(scope)} {set_id} is incomplete: {len(members.failed)} of "
                f"{members.total} members failed: {'; '.join(members.failed)}",
                hint=f"the {done} members that succeeded are kept as single backups (listed "
                "with the set id as incomplete); fix the cause and run the backup again",
            )
        record = BackupSet(
            id=set_id,
            started_at=started,
            finished_at=datetime.now(UTC),
            # A dump's globals artifact is a member too: the set is whole only with it.
            members=tuple(
                name
                for m in sorted(members.manifests, key=_member_order)
                for name in (m.artifact, *catalog.companions(m))
            ),
            database=dbs[0].dbname if dbs else None,
            volumes=tuple(targets),
            tool_version=__version__,
            folders=tuple(sorted(folders)),
            databases=tuple(t.dbname for t in dbs),
            scope=scope,
        )
        catalog.write_set(storage, record)
    size = sum(m.size for m in members.manifests)
    sink(
        Event(
            "backup",
            f"{_title(scope)} {set_id} done: {members.total} members, {size} bytes in "
            f"{record.duration_s:.1f}s",
            data={"set_id": set_id, "members": members.total, "size": size},
        )
    )
    return record


def _now() -> datetime:
    return datetime.now(UTC)


def _title(scope: str) -> str:
    return "full-system backup" if scope == "full" else "backup of the databases"


def _dump_job(
    target: PgTarget,
    storage: LocalStorage,
    name: str,
    options: BackupOptions,
    sink: EventSink,
    set_id: str,
) -> Callable[[], Manifest]:
    def job() -> Manifest:  # started now: time spent queued is not its duration
        return dump_database(target, storage, name, _now(), options, sink, set_id)

    return job


def _member_order(manifest: Manifest) -> tuple[int, str]:
    return (manifest.kind != "database", manifest.target)


def _detail(manifest: Manifest) -> str:
    if manifest.kind == "database":
        return f"{len(manifest.tables)} tables, "
    return f"{manifest.facts.get('files', 0)} files, "


class _Members:
    """Runs member jobs, commits each as it finishes, and collects what failed."""

    def __init__(self, storage: LocalStorage, sink: EventSink, total: int) -> None:
        self._storage = storage
        self._sink = sink
        self._guard = threading.Lock()
        self.total = total
        self.manifests: list[Manifest] = []
        self.failed: list[str] = []
        self.cancelled = False  # copies finishing from now on are not kept

    def run(self, what: str, job: Callable[[], Manifest]) -> None:
        try:
            manifest = job()
            commit(self._storage, manifest, self._sink, _detail(manifest), links=False)
        except SafeholdError as exc:
            self.fail(what, exc.message)
        except Exception as exc:  # one member's bug must not hide the others' results
            self.fail(what, f"{type(exc).__name__}: {exc}")
        else:
            with self._guard:
                self.manifests.append(manifest)

    def fail(self, what: str, message: str) -> None:
        self._sink(Event("backup", f"{what} failed: {message}", "error"))
        with self._guard:
            self.failed.append(f"{what}: {message}")
