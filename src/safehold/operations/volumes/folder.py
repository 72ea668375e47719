"""Folder and Docker volume backup/restore: tree -> compressor -> sha256 -> atomic file.

The commit rules are the database backup's: exclusive repository lock, stale partials removed,
the artifact committed before its manifest, then the ``latest`` links. Restore verifies the
sha256 while it extracts (one pass) and swaps nothing in unless the digest and the counts agree.
Sources and destinations are pluggable (``TreeSource``, ``Unpack``): a folder here, or a Docker
volume through the engine API (``docker_volume.py`` chooses).

A restore holds the folder's (or volume's) lock exclusive and a backup holds it shared
(``lock.volume_lock``), so two restores of one target never interleave and a backup never
reads a swap half-done; the repository's journal covers the swap itself (``extract.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from ... import catalog, naming
from ..._version import __version__
from ...compress import SUFFIXES, open_compressor, open_decompressor
from ...crypto import DecryptionKey, EncryptionKey, age_reader, is_age
from ...errors import IntegrityError, UsageError
from ...lock import folder_key, repository_lock, volume_lock
from ...model import ByteSink, ByteSource, Event, EventSink, Manifest, null_sink
from ...sources.docker.engine import check_target_name
from ...sources.tar.tree import TreeFacts, write_tree
from ...storage import LocalStorage
from .. import journal
from .._pipeline import (
    HashingReader,
    HashingWriter,
    Progress,
    bind_key,
    check_digest,
    commit,
    encrypting,
    fresh_name,
    repository_session,
    unlock_key,
)
from .extract import ExtractFacts, SwapJournal, extract_tree
from .recovery_containers import UNFINISHED_KIND

# Docker's own rule for volume names (daemon/names.RestrictedNamePattern).
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class VolumeRestore:
    facts: ExtractFacts
    source: str  # artifact name (or file name) that was restored
    safety_backup: Manifest | None  # the backup of the content that was replaced


@dataclass(frozen=True)
class TreeSource:
    """Where a tree comes from: a folder read here, or a volume read through the engine."""

    description: str
    write: Callable[[ByteSink, EventSink], TreeFacts]


def folder_source(root: Path) -> TreeSource:
    return TreeSource(str(root), lambda out, events: write_tree(root, out, events=events))


# Unpacks an (uncompressed) tar stream into its destination; calls the check before the swap.
# (decompressed tar stream, the check before the swap, the manifest's byte count or None)
Unpack = Callable[[ByteSource, Callable[[ExtractFacts], None], int | None], ExtractFacts]


def folder_unpack(target: Path, sink: EventSink, journal_to: SwapJournal | None = None) -> Unpack:
    return lambda stream, check, expected: extract_tree(
        stream, target, events=sink, before_swap=check, journal_to=journal_to,
        expected_bytes=expected,
    )  # fmt: skip


def volume_artifact(
    target_name: str, moment: datetime, compression: str, encrypted: bool = False
) -> str:
    age = naming.AGE_SUFFIX if encrypted else ""
    return f"volume_{target_name}_{naming.stamp(moment)}{SUFFIXES[compression]}{age}"


def backup_tree(
    root: Path,
    target_name: str,
    storage: LocalStorage,
    *,
    compression: str = "gzip",
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
    encryption: EncryptionKey | None = None,
) -> Manifest:
    """Archive the folder ``root`` as a backup of the volume ``target_name``."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder", hint="give the folder to back up")
    storage.ensure()
    with volume_lock(
        storage.root,
        folder_key(root),
        exclusive=False,
        timeout=lock_timeout,
        purpose=f"safehold backup of {root}",
    ):
        return backup_source(
            folder_source(root),
            target_name,
            storage,
            compression=compression,
            lock_timeout=lock_timeout,
            sink=sink,
            encryption=encryption,
        )


def backup_source(
    source: TreeSource,
    target_name: str,
    storage: LocalStorage,
    *,
    compression: str = "gzip",
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
    encryption: EncryptionKey | None = None,
    safety: bool = False,
) -> Manifest:
    """Back up ``source`` as the volume ``target_name``: session, fresh name, write, commit.
    ``safety``: a pre-restore safety copy (kind "safety", ``safety_volume_...``), never the
    volume's latest backup."""
    check_target_name(target_name)
    if compression not in naming.VOLUME_COMPRESSIONS:
        raise UsageError(
            f"unknown compression {compression!r} for a volume",
            hint=f"use one of {', '.join(naming.VOLUME_COMPRESSIONS)}",
        )
    with repository_session(
        storage, lock_timeout=lock_timeout, purpose="safehold volume backup", sink=sink
    ):
        key = bind_key(storage, encryption)
        named = naming.safety_artifact if safety else str
        # A backup in another format in the same second would share the stamp: wait too.
        started, name = fresh_name(
            storage,
            lambda moment: [
                named(artifact)
                for artifact in [
                    volume_artifact(target_name, moment, c, key is not None)
                    for c in (compression, *naming.VOLUME_COMPRESSIONS)
                ]
                + [volume_artifact(target_name, moment, compression, key is None)]
            ],
        )
        # Run by a restore, not by a schedule: no later backup may come to clear what a kill
        # leaves, so the next command of any kind removes it (``recovery_containers``).
        unfinished = (
            journal.recorded(
                storage,
                UNFINISHED_KIND,
                {"artifact": name, "what": f"safety copy of volume {target_name}"},
                "safehold restore",
            )
            if safety
            else contextlib.nullcontext()
        )
        with unfinished:
            manifest = write_tree_backup(
                source, target_name, storage, name, started, compression, sink, encryption=key
            )
            if safety:
                manifest = dataclasses.replace(manifest, kind="safety")
            commit(storage, manifest, sink, f"{manifest.facts['files']} files, ")
    return manifest


def write_tree_backup(
    source: TreeSource,
    target_name: str,
    storage: LocalStorage,
    name: str,
    started: datetime,
    compression: str,
    sink: EventSink,
    set_id: str | None = None,
    encryption: EncryptionKey | None = None,
) -> Manifest:
    """Write the artifact ``name`` (the caller holds the repository session) and return its
    manifest, not yet committed."""
    where = storage.path(name)
    sink(Event("backup", f"backing up {source.description} (volume {target_name}) to {where}"))
    with storage.open_writer(name) as writer:
        hashed = HashingWriter(writer)
        stored, age = encrypting(hashed, encryption)
        compressor = open_compressor(compression, stored)
        try:
            facts = source.write(compressor, sink)
            # Finish inside the writer block: a failure aborts instead of committing.
            compressor.finish()
            if age is not None:
                age.finish()
        except BaseException:
            abort = getattr(compressor, "abort", None)
            if abort is not None:
                abort()  # stop gzip's worker threads; the writer drops the partial file
            if age is not None:
                age.abort()
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
        facts={**facts.to_json(), "source": source.description},
        set_id=set_id,
        encryption=encryption.describe() if encryption else None,
    )


def restore_tree(
    storage: LocalStorage,
    ref: str,
    target_dir: Path,
    *,
    target_name: str | None = None,
    sink: EventSink = null_sink,
    lock_timeout: float = 300.0,
    key: DecryptionKey | None = None,
) -> ExtractFacts:
    """Replace the content of ``target_dir`` with a volume backup, verified on the way; the
    staging folder and the swap are journalled in ``storage``, the folder's lock held."""
    target_dir = Path(target_dir)
    source = catalog.resolve(storage, ref, "volume", target_name)
    lock = folder_key(target_dir)
    journal_to = SwapJournal(storage, f"folder {target_dir}", source.name, lock)
    storage.ensure()
    with volume_lock(
        storage.root,
        lock,
        exclusive=True,
        timeout=lock_timeout,
        purpose=f"safehold restore of {source.name} into {target_dir}",
    ):
        return restore_into(
            storage,
            str(source.path),
            folder_unpack(target_dir, sink, journal_to),
            str(target_dir),
            target_name,
            sink,
            lock_timeout,
            key,
        )


def restore_into(
    storage: LocalStorage,
    ref: str,
    unpack: Unpack,
    where: str,
    target_name: str | None,
    sink: EventSink,
    lock_timeout: float = 300.0,
    key: DecryptionKey | None = None,
) -> ExtractFacts:
    """Verify and unpack a volume backup with ``unpack`` (a folder here, or a volume through
    the engine), holding the repository lock shared when the backup is in the repository."""
    source = catalog.resolve(storage, ref, "volume", target_name)
    if source.manifest is not None and source.manifest.kind not in ("volume", "safety"):
        raise UsageError(f"{source.name} is not a volume backup")
    with source.path.open("rb") as fh:
        encrypted = is_age(fh.read(64))
    opened = unlock_key(storage, key, source.name) if encrypted else None
    if not source.in_repository:
        return _restore_file(source, unpack, where, sink, opened)
    with repository_lock(
        storage.root, exclusive=False, timeout=lock_timeout, purpose="safehold volume restore"
    ):
        return _restore_file(source, unpack, where, sink, opened)


def _restore_file(
    source: catalog.Resolved,
    unpack: Unpack,
    where: str,
    sink: EventSink,
    key: DecryptionKey | None,
) -> ExtractFacts:
    from ...compress.threaded import ReadAhead

    manifest = source.manifest
    with source.path.open("rb") as raw, contextlib.ExitStack() as threads:
        progress = Progress(sink, f"restore {source.name}", source.path.stat().st_size)
        if manifest is not None:
            kind = manifest.compression
        elif key is not None:
            kind = "zstd" if ".tar.zst" in source.name else "gzip"
        else:
            kind = _sniff(raw)
        # Three threads, as GNU tar and its gzip are two processes: one reads and hashes the
        # file, one decrypts and decompresses, this one extracts. Progress is told on this
        # thread, from the count hashed so far: event sinks are not thread-safe.
        hashed = HashingReader(raw)
        read = threads.enter_context(ReadAhead(hashed))
        clear: ByteSource = age_reader(read, key) if key is not None else read

        def advance() -> None:
            progress.advance(hashed.size - progress.done)

        def before_swap(facts: ExtractFacts) -> None:
            plain.finish()  # its thread has ended: ``clear`` is read on this thread from here
            # The decompressor may stop at the end of its frame; the digest covers every byte,
            # and age authenticates its last chunk only at the end of the stream.
            while clear.read(1 << 20):
                pass
            read.finish()  # ``hashed`` read to its end, and the reading thread ended
            advance()
            if manifest is None:
                return
            check_digest(
                source.name, manifest.sha256, hashed.hexdigest(), manifest.size, hashed.size
            )
            _check_facts(source.name, manifest, facts)

        sink(Event("restore", f"restoring {source.name} into {where}"))
        try:
            decompress = ReadAhead(open_decompressor(kind, clear), on_take=advance)
            plain = threads.enter_context(decompress)
            expected = manifest.facts.get("bytes") if manifest is not None else None
            facts = unpack(plain, before_swap, expected if isinstance(expected, int) else None)
        except IntegrityError:
            threads.close()  # no thread reads ``hashed`` any more
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
