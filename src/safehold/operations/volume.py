"""Folder and Docker volume backup/restore: tree -> compressor -> sha256 -> atomic file.

The commit rules are the database backup's: exclusive repository lock, stale partials removed,
the artifact committed before its manifest, then the ``latest`` links. Restore verifies the
sha256 while it extracts (one pass) and swaps nothing in unless the digest and the counts agree.
Docker is only asked where a volume lives and who uses it; the data goes through the host's
filesystem, so this must run on the Docker host with read access to the volume folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import docker
import docker.errors
import requests

from .. import catalog, naming
from .._version import __version__
from ..compress import SUFFIXES, open_compressor, open_decompressor
from ..errors import HookFailed, IntegrityError, UsageError
from ..lock import repository_lock
from ..model import Event, EventSink, Manifest, null_sink
from ..sources.tree import write_tree
from ..storage import LocalStorage
from ._pipeline import (
    HashingReader,
    HashingWriter,
    Progress,
    check_digest,
    commit,
    fresh_name,
    repository_session,
)
from .engine import (
    check_target_name,
    quiesced,
    refuse_if_in_use,
    stopped,
    unavailable,
    users_of,
    volume_mountpoint,
)
from .extract import ExtractFacts, extract_tree

VOLUME_COMPRESSIONS = ("gzip", "zstd")
# Docker's own rule for volume names (daemon/names.RestrictedNamePattern).
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class VolumeRestore:
    facts: ExtractFacts
    source: str  # artifact name (or file name) that was restored
    safety_backup: Manifest | None  # the backup of the content that was replaced


def volume_artifact(target_name: str, moment: datetime, compression: str) -> str:
    return f"volume_{target_name}_{naming.stamp(moment)}{SUFFIXES[compression]}"


def backup_tree(
    root: Path,
    target_name: str,
    storage: LocalStorage,
    *,
    compression: str = "gzip",
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
) -> Manifest:
    """Archive the folder ``root`` as a backup of the volume ``target_name``."""
    check_target_name(target_name)
    if compression not in VOLUME_COMPRESSIONS:
        raise UsageError(
            f"unknown compression {compression!r} for a volume",
            hint=f"use one of {', '.join(VOLUME_COMPRESSIONS)}",
        )
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder", hint="give the folder to back up")
    with repository_session(
        storage, lock_timeout=lock_timeout, purpose="safehold volume backup", sink=sink
    ):
        # A backup in the other format in the same second would share the stamp: wait too.
        started, name = fresh_name(
            storage,
            lambda moment: [
                volume_artifact(target_name, moment, c) for c in (compression, *VOLUME_COMPRESSIONS)
            ],
        )
        manifest = write_tree_backup(root, target_name, storage, name, started, compression, sink)
        commit(storage, manifest, sink, f"{manifest.facts['files']} files, ")
    return manifest


def write_tree_backup(
    root: Path,
    target_name: str,
    storage: LocalStorage,
    name: str,
    started: datetime,
    compression: str,
    sink: EventSink,
    set_id: str | None = None,
) -> Manifest:
    """Write the artifact ``name`` (the caller holds the repository session) and return its
    manifest, not yet committed."""
    sink(Event("backup", f"backing up {root} (volume {target_name}) to {storage.path(name)}"))
    with storage.open_writer(name) as writer:
        hashed = HashingWriter(writer)
        compressor = open_compressor(compression, hashed)
        try:
            facts = write_tree(root, compressor, events=sink)
            # Finish inside the writer block: a failure aborts instead of committing.
            compressor.finish()
        except BaseException:
            abort = getattr(compressor, "abort", None)
            if abort is not None:
                abort()  # stop gzip's worker threads; the writer drops the partial file
            raise
    return Manifest(
        artifact=name,
        kind="volume",
        target=target_name,
        compression=compression,
        size=hashed.size,
        sha256=hashed.hexdigest(),
        started_at=started,
        finished_at=datetime.now(UTC),
        tool_version=__version__,
        facts={**facts.to_json(), "source": str(root)},
        set_id=set_id,
    )


def restore_tree(
    storage: LocalStorage,
    ref: str,
    target_dir: Path,
    *,
    target_name: str | None = None,
    sink: EventSink = null_sink,
    lock_timeout: float = 300.0,
) -> ExtractFacts:
    """Replace the content of ``target_dir`` with a volume backup, verified on the way."""
    source = catalog.resolve(storage, ref, "volume", target_name)
    if source.manifest is not None and source.manifest.kind != "volume":
        raise UsageError(f"{source.name} is not a volume backup")
    if not source.in_repository:
        return _restore_file(source, Path(target_dir), sink)
    with repository_lock(
        storage.root, exclusive=False, timeout=lock_timeout, purpose="safehold volume restore"
    ):
        return _restore_file(source, Path(target_dir), sink)


def _restore_file(source: catalog.Resolved, target: Path, sink: EventSink) -> ExtractFacts:
    manifest = source.manifest
    with source.path.open("rb") as raw:
        kind = manifest.compression if manifest is not None else _sniff(raw)
        progress = Progress(sink, f"restore {source.name}", source.path.stat().st_size)
        hashed = HashingReader(raw, progress)

        def before_swap(facts: ExtractFacts) -> None:
            # The decompressor may stop at the end of its frame; the digest covers every byte.
            hashed.drain()
            if manifest is None:
                return
            check_digest(
                source.name, manifest.sha256, hashed.hexdigest(), manifest.size, hashed.size
            )
            _check_facts(source.name, manifest, facts)

        sink(Event("restore", f"restoring {source.name} into {target}"))
        try:
            facts = extract_tree(
                open_decompressor(kind, hashed), target, events=sink, before_swap=before_swap
            )
        except IntegrityError:
            # A damaged stream usually fails decompression first; a checksum mismatch is the
            # clearer message, so report that when it applies.
            if manifest is not None:
                hashed.drain()
                check_digest(
                    source.name, manifest.sha256, hashed.hexdigest(), manifest.size, hashed.size
                )
            raise
        progress.close()
    if manifest is None:
        sink(
            Event(
                "restore",
                f"{source.name} has no manifest: it extracted as a valid tar archive, but was "
                "not checked against a checksum",
                "warning",
            )
        )
    return facts


def _check_facts(name: str, manifest: Manifest, facts: ExtractFacts) -> None:
    expected = manifest.facts
    wrong = [
        f"{key}: {getattr(facts, key)}, expected {expected[key]}"
        for key in ("files", "bytes")
        if key in expected and expected[key] != getattr(facts, key)
    ]
    if wrong:
        raise IntegrityError(
            f"backup {name} does not match its manifest ({', '.join(wrong)})",
            hint="restore an older backup ('safehold list' shows them); the folder was left "
            "as it was",
        )


def _sniff(raw: IO[bytes]) -> str:
    head = raw.read(4)
    raw.seek(0)
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"  # maybe a plain tar; extraction proves it or refuses


# --- Docker volumes -------------------------------------------------------------------------


def backup_volume(
    client: docker.DockerClient,
    name: str,
    storage: LocalStorage,
    *,
    compression: str = "gzip",
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
) -> Manifest:
    """Back up a volume. Running containers that use it run their safehold.pre-backup command
    first (a failure stops the backup); those labelled safehold.stop-during-backup=true are
    stopped for the copy and started again afterwards, also when the copy fails; then the
    safehold.post-backup commands run."""
    root = readable(volume_mountpoint(client, name), name)
    manifest: Manifest | None = None
    try:
        with quiesced(client, [name], sink, f"backup of volume {name}"):
            manifest = backup_tree(
                root, name, storage, compression=compression, lock_timeout=lock_timeout, sink=sink
            )
    except HookFailed as exc:
        if manifest is not None:
            exc.message += f" (the backup {manifest.artifact} itself was written and is good)"
        raise
    return manifest


def restore_volume(
    client: docker.DockerClient,
    name: str,
    storage: LocalStorage,
    ref: str = "latest",
    *,
    safety_backup: bool = True,
    stop_containers: bool = False,
    compression: str = "gzip",
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
) -> VolumeRestore:
    """Replace a volume's content; refused while a running container uses it, unless
    ``stop_containers``: then they are stopped, and started again afterwards."""
    check_target_name(name)
    # Resolve before the safety backup, or "latest" would name the safety backup itself.
    source = catalog.resolve(storage, ref, "volume", name)
    users = users_of(client, name) if stop_containers else []
    with stopped(users, sink, f"restore of volume {name}"):
        return _replace(
            client, name, storage, source, safety_backup, compression, lock_timeout, sink
        )


def _replace(
    client: docker.DockerClient,
    name: str,
    storage: LocalStorage,
    source: catalog.Resolved,
    safety_backup: bool,
    compression: str,
    lock_timeout: float,
    sink: EventSink,
) -> VolumeRestore:
    refuse_if_in_use(client, name)
    created = False
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        client.volumes.create(name=name)
        created = True
        sink(Event("restore", f"created Docker volume {name}"))
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    root = readable(volume_mountpoint(client, name), name)
    safety: Manifest | None = None
    if safety_backup and not created:
        sink(Event("restore", f"safety backup of the current content of volume {name}"))
        safety = backup_tree(
            root, name, storage, compression=compression, lock_timeout=lock_timeout, sink=sink
        )
        sink(
            Event(
                "restore",
                f"the current content of {name} is kept as {safety.artifact}; it is a normal "
                "backup (listed, and the 'latest' link until the next backup)",
                data={"safety_backup": safety.artifact},
            )
        )
    # A container started meanwhile would see the swap happen under it; check again.
    refuse_if_in_use(client, name)
    facts = restore_tree(
        storage, str(source.path), root, target_name=name, sink=sink, lock_timeout=lock_timeout
    )
    return VolumeRestore(facts, source.name, safety)


def readable(mountpoint: Path, name: str) -> Path:
    if not (mountpoint.is_dir() and os.access(mountpoint, os.R_OK | os.X_OK)):
        raise UsageError(
            f"the folder of Docker volume {name} ({mountpoint}) is not readable here",
            hint="run safehold on the Docker host, as a user that can read the engine's "
            "volume folders (usually root)",
        )
    return mountpoint
