"""Verify backups without restoring them (``safehold verify``).

``quick``: the artifact exists and its size and sha256 match the manifest (one read of the
file). ``full``: in that same pass it is decompressed and read as what it is: a dump's TOC must
hold TABLE DATA for exactly the manifest's tables, an archive's files and bytes must match.

Outcomes: ``ok``; ``failed`` (damaged, truncated, missing, not matching its manifest);
``unverifiable`` (no manifest, so no checksum; ``full`` still reads it, and one that does not
read as a dump or archive is ``failed``). Only ``ok`` counts as verified. Each result is
recorded as ``.safehold/verify/<artifact>.json`` (atomic put; ``read_verify``), under the
shared repository lock. Problems of the environment (pg_restore missing, lock busy) raise:
they say nothing about the backup and are not recorded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ... import catalog, naming
from ...crypto import DecryptionKey, age_reader
from ...errors import IntegrityError, StorageError, UsageError
from ...lock import repository_lock
from ...model import ByteSource, Event, EventSink, Kind, Manifest, null_sink
from ...sinks.log import human_bytes
from ...storage import LocalStorage
from .._pipeline import HashingReader, Progress, check_digest, unlock_key
from ..volumes.extract import ExtractFacts
from .content import (
    DumpContent,
    compare_content,
    compression_of,
    describe,
    pg_restore_tool,
    read_content,
)
from .records import (
    LEVELS,
    RECORD_FORMAT,
    VERIFY_DIR,
    Level,
    Outcome,
    VerifyResult,
    read_verify,
    verify_key,
)

OLDER_HINT = "restore an older backup ('safehold list' shows them)"

__all__ = [
    "LEVELS",
    "RECORD_FORMAT",
    "VERIFY_DIR",
    "Level",
    "Outcome",
    "VerifyResult",
    "read_verify",
    "verify_all",
    "verify_backup",
    "verify_key",
    "verify_newest",
]


def verify_backup(
    storage: LocalStorage,
    name: str,
    level: Level = "quick",
    sink: EventSink = null_sink,
    *,
    lock_timeout: float = 300.0,
    pg_bin_dir: Path | None = None,
    key: DecryptionKey | None = None,
) -> VerifyResult:
    """Verify one artifact: its name in the repository, a ``latest`` link's name (the backup
    it points at), or a path to either inside the repository."""
    _check_level(level)
    if name == "latest":
        raise UsageError(
            "'latest' means the newest backup of every target",
            hint="call verify_newest(), or name one backup ('safehold list' shows them)",
        )
    with _session(storage, lock_timeout, sink) as entries:
        entry = _find(storage, entries, name)
        return _verify(storage, entry, level, sink, pg_bin_dir, key)


def verify_all(
    storage: LocalStorage,
    level: Level = "quick",
    sink: EventSink = null_sink,
    *,
    lock_timeout: float = 300.0,
    pg_bin_dir: Path | None = None,
    key: DecryptionKey | None = None,
) -> list[VerifyResult]:
    """Every artifact and orphaned manifest, oldest first; goes on after a failure."""
    _check_level(level)
    with _session(storage, lock_timeout, sink) as entries:
        if not entries:
            raise _nothing(storage, "no backups")
        return [_verify(storage, entry, level, sink, pg_bin_dir, key) for entry in entries]


def verify_newest(
    storage: LocalStorage,
    level: Level = "quick",
    sink: EventSink = null_sink,
    *,
    lock_timeout: float = 300.0,
    pg_bin_dir: Path | None = None,
    key: DecryptionKey | None = None,
) -> list[VerifyResult]:
    """The newest backup of each target (database name, volume), whatever its state: a damaged
    or missing newest backup is reported, not skipped for an older good one. Files without a
    manifest belong to no known target and are left to ``verify_all``."""
    _check_level(level)
    with _session(storage, lock_timeout, sink) as entries:
        newest: dict[tuple[str, str | None], _Entry] = {}
        for entry in entries:
            if entry.has_manifest:
                newest[(entry.kind, entry.target)] = entry
        if not newest:
            raise _nothing(storage, f"no backups with a manifest ({len(entries)} without)")
        chosen = sorted(newest.values(), key=lambda e: (e.created, e.name))
        return [_verify(storage, entry, level, sink, pg_bin_dir, key) for entry in chosen]


# --- what the repository holds ----------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: Kind
    created: datetime
    present: bool  # the artifact file exists
    manifest: Manifest | None
    manifest_error: IntegrityError | None  # a manifest exists but cannot be read
    name_target: str | None

    @property
    def has_manifest(self) -> bool:
        return self.manifest is not None or self.manifest_error is not None

    @property
    def target(self) -> str | None:
        return self.manifest.target if self.manifest is not None else self.name_target


@contextlib.contextmanager
def _session(storage: LocalStorage, lock_timeout: float, sink: EventSink) -> Iterator[list[_Entry]]:
    if not storage.root.is_dir():
        raise UsageError(
            f"there is no backup repository at {storage.root}",
            hint="set BACKUP_DIR or --backup-dir to the folder holding the backups",
        )
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                repository_lock(
                    storage.root, exclusive=False, timeout=lock_timeout, purpose="safehold verify"
                )
            )
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise StorageError(f"cannot open the lock of {storage.root}: {exc}") from exc
            sink(Event("verify", f"{storage.root} is read-only: verifying without its lock",
                       "warning"))  # fmt: skip
        yield _entries(storage)


def _entries(storage: LocalStorage) -> list[_Entry]:
    """Like ``catalog.scan``, but an unreadable manifest is a finding, not an error."""
    artifacts = {key for key in storage.list() if naming.parse(key) is not None}
    manifests = {
        naming.artifact_of(key)
        for key in storage.list(naming.MANIFEST_DIR)
        if key.endswith(".json")
    }
    entries = []
    for name in artifacts | manifests:
        parsed = naming.parse(name)
        if parsed is None:
            continue
        manifest, error = None, None
        if name in manifests:
            try:
                manifest = catalog.read_manifest(storage, name)
            except IntegrityError as exc:
                error = exc
        created = manifest.started_at if manifest is not None else parsed.created
        entries.append(
            _Entry(name, parsed.kind, created, name in artifacts, manifest, error, parsed.target)
        )
    return sorted(entries, key=lambda e: (e.created, e.name))


def _find(storage: LocalStorage, entries: list[_Entry], ref: str) -> _Entry:
    root = storage.root.resolve()
    name = ref
    if "/" in ref:
        given = Path(ref)
        if given.resolve().parent != root and given.parent.resolve() != root:
            raise UsageError(
                f"{ref} is not in the repository {storage.root}",
                hint="verify checks the backups of the repository; name one as "
                "'safehold list' shows it",
            )
        name = given.name
    path = storage.root / name
    if path.is_symlink() and path.resolve().parent == root:
        name = path.resolve().name  # a "latest" link names a real backup
    for entry in entries:
        if entry.name == name:
            return entry
    raise UsageError(
        f"no backup named {ref!r} in {storage.root}",
        hint="'safehold list' shows the backups; 'safehold verify' alone checks the newest",
    )


def _nothing(storage: LocalStorage, what: str) -> UsageError:
    return UsageError(
        f"nothing to verify: {what} in {storage.root}",
        hint="run 'safehold backup' first ('safehold verify --all-backups' also checks files "
        "without a manifest)",
    )


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise UsageError(f"unknown verify level {level!r}", hint="use quick or full")


# --- one artifact -----------------------------------------------------------------------------


@dataclass
class _Tally:
    bytes_read: int = 0
    found: dict[str, Any] = field(default_factory=dict)


def _verify(
    storage: LocalStorage,
    entry: _Entry,
    level: Level,
    sink: EventSink,
    bin_dir: Path | None,
    key: DecryptionKey | None = None,
) -> VerifyResult:
    checked_at = datetime.now(UTC)
    clock = time.monotonic()
    sink(Event("verify", f"verifying {entry.name} ({level})", data={"artifact": entry.name}))
    tally = _Tally()
    outcome: Outcome = "ok"
    error = hint = None
    try:
        foreign = _check(storage, entry, level, sink, bin_dir, tally, key)
        if foreign is not None:
            outcome, error, hint = "unverifiable", foreign, _FOREIGN_HINT
    except IntegrityError as exc:
        outcome, error, hint = "failed", exc.message, exc.hint
    took = time.monotonic() - clock
    result = VerifyResult(entry.name, entry.kind, entry.target, level, outcome, checked_at, took,
                          tally.bytes_read, error, hint, tally.found)  # fmt: skip
    _record(storage, result, sink)
    _announce(result, sink)
    return result


_FOREIGN = "no manifest (unverified/foreign): there is no checksum to check it against"
_FOREIGN_HINT = (
    "trust it only as much as where it came from; 'safehold backup' makes verifiable ones"
)


def _check(
    storage: LocalStorage,
    entry: _Entry,
    level: Level,
    sink: EventSink,
    bin_dir: Path | None,
    tally: _Tally,
    key: DecryptionKey | None,
) -> str | None:
    """Raise IntegrityError for a failure; return why when unverifiable; None when ok."""
    name, manifest = entry.name, entry.manifest
    if entry.manifest_error is not None:
        raise IntegrityError(
            entry.manifest_error.message,
            hint=f"{OLDER_HINT}; the manifest was damaged or edited (the file may be good, "
            "but nothing is left to check it against)",
        )
    # The one identity rule every reader applies (names, kind, target); size and sha256 are
    # checked below with what the file holds, in verify's own words.
    if manifest is not None and (problem := catalog.identity_problem(name, manifest)):
        raise catalog.identity_error(name, problem)
    if not entry.present:
        raise IntegrityError(
            f"backup {name} is missing: its manifest is in the repository but the file is not",
            hint=f"{OLDER_HINT}; if the file was removed on purpose, delete "
            f"{naming.manifest_key(name)}",
        )
    path = storage.path(name)
    size = path.stat().st_size
    what = "dump" if entry.kind == "database" else "archive"
    if manifest is None and level == "quick":
        return f"{name} has {_FOREIGN} ('--level full' checks it reads as a complete {what})"
    if manifest is not None and size != manifest.size:
        check_digest(name, manifest.sha256, "", manifest.size, size)  # raises: size differs
    full = level == "full"
    # A globals artifact is a short SQL script: its sha256 (and age's tags) are the whole check.
    readable = full and entry.kind != "globals"
    compression = compression_of(path, entry.kind, manifest) if readable else ""
    tool = pg_restore_tool(bin_dir, manifest) if full and entry.kind == "database" else ""
    progress = Progress(sink, f"verify {name}", size)
    content: DumpContent | ExtractFacts | None = None
    with path.open("rb") as raw:
        hashed = HashingReader(raw, progress, fast=bool(manifest and manifest.blake3))
        try:
            if full:
                # Encrypted: decrypted on the fly, read to the end (age checks its last tag).
                opened = unlock_key(storage, key, name) if name.endswith(".age") else None
                clear: ByteSource = age_reader(hashed, opened) if opened else hashed
                if readable:
                    content = read_content(name, entry.kind, compression, clear, tool)
                    tally.found.update(describe(content))
                while clear.read(1 << 20):
                    pass
            hashed.drain()
        except IntegrityError:
            # Damage usually breaks decompression first; a checksum mismatch says more.
            hashed.drain()
            if manifest is not None:
                hashed.check(name, manifest)
            raise
        finally:
            tally.bytes_read = hashed.size
    progress.close()
    tally.found["sha256"] = hashed.hexdigest()
    if manifest is None:
        return f"{name} has {_FOREIGN}; it reads as a complete {what}"
    hashed.check(name, manifest)
    if content is not None:
        compare_content(name, manifest, content)
    return None


def _record(storage: LocalStorage, result: VerifyResult, sink: EventSink) -> None:
    body = json.dumps(result.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    try:
        storage.put_bytes(verify_key(result.artifact), body)
    except (StorageError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        sink(Event("verify", f"could not record the result of {result.artifact}: {message}",
                   "warning"))  # fmt: skip


def _announce(result: VerifyResult, sink: EventSink) -> None:
    data = {"artifact": result.artifact, "level": result.level, "outcome": result.outcome}
    took = f"{human_bytes(result.bytes_read)} read in {result.duration_s:.1f}s"
    if result.ok:
        sink(Event("verify", f"{result.artifact}: ok ({result.level}, {took})", data=data))
        return
    level: Literal["warning", "error"] = "warning" if result.outcome == "unverifiable" else "error"
    hint = f" (hint: {result.hint})" if result.hint else ""
    sink(Event("verify", f"{result.outcome}: {result.error}{hint}", level, data))
