"""Physical base backups for point-in-time recovery (restore is in ``pitr_restore``).

A base backup is ``pg_basebackup -D - -Ft -X none`` (WAL comes from the archive), streamed in
one pass through zstd, age (when encryption is configured) and sha256 into
``base/base_YYYYMMDD_HHMMSS.tar.zst[.age]``; nothing is staged locally. Its JSON record
``base/base_....json`` (start/stop LSN, timeline, times, sha256, encryption) is written last:
the commit point. pg_basebackup's ``backup_manifest`` travels inside the tar, so a restore can
check the extracted files against it (``manifest.check_manifest``, else
``pg_verifybackup``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import crc32c

from ... import _proc, naming
from ...compress.zstd import ZstdWriter
from ...crypto import SUFFIX, EncryptionKey
from ...errors import IntegrityError, ToolError, UsageError
from ...model import Event, EventSink
from ...sources.postgres import PgTarget
from ...sources.tar.names import member_path
from ...storage import LocalStorage, Storage
from .._pipeline import HashingWriter, bind_key, encrypting, sha256_of
from . import archive as wal
from . import chain as wal_chain

BASE = naming.BASE_DIR


@dataclass(frozen=True)
class BaseBackup:
    name: str  # base_YYYYMMDD_HHMMSS
    sha256: str
    size: int
    raw_size: int
    start_lsn: str
    stop_lsn: str
    timeline: int
    started: datetime
    finished: datetime
    file: str = ""  # the stored archive under base/ ("" in records from before encryption)
    encryption: dict[str, Any] | None = None

    @property
    def start_segment(self) -> str:
        return wal.segment_of(self.start_lsn, self.timeline)

    @property
    def data_key(self) -> str:
        return f"{BASE}/{self.file or self.name + '.tar.zst'}"

    @property
    def record_key(self) -> str:
        return f"{BASE}/{self.name}.json"

    def keys(self) -> list[str]:
        """Its keys in removal order: the record (the commit point) first, then the data."""
        return [self.record_key, self.data_key]

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.update(started=self.started.isoformat(), finished=self.finished.isoformat())
        data["start_segment"] = self.start_segment
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BaseBackup:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["started"] = datetime.fromisoformat(data["started"])
        fields["finished"] = datetime.fromisoformat(data["finished"])
        return cls(**fields)


class _TarWatch:
    """Counts the raw tar stream and keeps ``backup_manifest`` and ``backup_label`` as they pass
    (pg_basebackup writes plain ustar headers for them)."""

    WANTED = ("backup_manifest", "backup_label")

    def __init__(self, inner: ZstdWriter) -> None:
        self.inner = inner
        self.size = 0
        self.found: dict[str, bytes] = {}
        self._header = bytearray()
        self._skip = 0  # bytes of member data + padding still to pass
        self._capture: tuple[str, bytearray, int] | None = None

    def write(self, data: bytes | memoryview) -> int:
        self.size += len(data)
        self.inner.write(data)
        view = memoryview(data)
        while view:
            if self._skip:
                take = min(self._skip, len(view))
                if self._capture is not None:
                    name, buf, want = self._capture
                    buf += view[: max(0, min(take, want - len(buf)))]
                    if len(buf) >= want:
                        self.found[name] = bytes(buf)
                        self._capture = None
                self._skip -= take
                view = view[take:]
                continue
            take = min(512 - len(self._header), len(view))
            self._header += view[:take]
            view = view[take:]
            if len(self._header) == 512:
                self._parse(bytes(self._header))
                self._header.clear()
        return len(data)

    def _parse(self, header: bytes) -> None:
        if not header.strip(b"\0"):
            return
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace").lstrip("./")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        self._skip = (size + 511) // 512 * 512
        if name in self.WANTED:
            self._capture = (name, bytearray(), size)
            if size == 0:
                self.found[name] = b""
                self._capture = None


def _wal_range(found: dict[str, bytes]) -> tuple[str, str, int]:
    """(start LSN, stop LSN, timeline) from backup_manifest's WAL-Ranges."""
    if "backup_manifest" in found:
        ranges = json.loads(found["backup_manifest"])["WAL-Ranges"]
        return ranges[0]["Start-LSN"], ranges[-1]["End-LSN"], int(ranges[-1]["Timeline"])
    raise ToolError("pg_basebackup's stream had no backup_manifest (PostgreSQL 13 or newer?)")


def base_backup(
    target: PgTarget,
    storage: LocalStorage,
    sink: EventSink,
    key: EncryptionKey | None = None,
    *,
    threads: int = 2,
) -> BaseBackup:
    """Stream a physical base backup into the repository; its record is written last."""
    storage.ensure()
    key = bind_key(storage, key)
    started = datetime.now(UTC)
    name = f"base_{started:%Y%m%d_%H%M%S}"
    while storage.exists(f"{BASE}/{name}.json"):
        time.sleep(1)
        started = datetime.now(UTC)
        name = f"base_{started:%Y%m%d_%H%M%S}"
    argv = [target.tool("pg_basebackup"), "-D", "-", "-Ft", "-X", "none", "--checkpoint=fast"]
    argv += ["--no-password"]
    sink(Event("pitr", f"base backup {name} starting (pg_basebackup, checkpoint=fast)"))
    proc = _proc.spawn(argv, env=target.env())
    assert proc.stdout is not None and proc.stderr is not None
    tail = _proc.StderrTail(proc.stderr)
    file = f"{name}.tar.zst" + (SUFFIX if key is not None else "")
    writer = storage.open_writer(f"{BASE}/{file}")
    try:
        hashing = HashingWriter(writer)
        out, age = encrypting(hashing, key)
        counter = _TarWatch(ZstdWriter(out, threads=threads))
        while chunk := proc.stdout.read(1 << 20):
            counter.write(chunk)
        counter.inner.finish()
        if age is not None:
            age.finish()
        code = proc.wait()
        stderr = _proc.redact(tail.text(), [target.password])
        if code != 0:
            raise ToolError(f"pg_basebackup failed (exit {code}): {stderr[-1500:]}")
        start_lsn, stop_lsn, timeline = _wal_range(counter.found)
        writer.commit()
    except BaseException:
        writer.abort()
        _proc.stop(proc)
        raise
    record = BaseBackup(
        name=name,
        sha256=hashing.hexdigest(),
        size=hashing.size,
        raw_size=counter.size,
        start_lsn=start_lsn,
        stop_lsn=stop_lsn,
        timeline=timeline,
        started=started,
        finished=datetime.now(UTC),
        file=file,
        encryption=key.describe() if key is not None else None,
    )
    storage.put_bytes(record.record_key, record_bytes(record))
    sink(
        Event(
            "pitr",
            f"base backup {name} done: {record.size} bytes, WAL from {record.start_segment}",
            data=record.to_json(),
        )
    )
    return record


def record_bytes(record: BaseBackup) -> bytes:
    return json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n"


def base_backups(storage: Storage) -> list[BaseBackup]:
    """Committed base backups, oldest first."""
    found = []
    for key in storage.list(BASE):
        if key.endswith(".json"):
            found.append(BaseBackup.from_json(json.loads(storage.read_bytes(key))))
    return sorted(found, key=lambda b: b.finished)


def choose_base(
    storage: Storage,
    *,
    to_time: datetime | None = None,
    to_lsn: str | None = None,
    switches: list[wal_chain.Switch] | None = None,
) -> list[BaseBackup]:
    """Base backups recovery can start from for the target, best (newest) first: those that
    finished before ``to_time`` / ended at or before ``to_lsn`` (all, for other targets), and
    from which replay can follow ``switches`` to the newest timeline."""
    bases = base_backups(storage)
    usable = [
        b
        for b in bases
        if (to_time is None or b.finished < to_time)
        and (to_lsn is None or wal.lsn_value(b.stop_lsn) <= wal.lsn_value(to_lsn))
        and (switches is None or wal_chain.on_path(switches, b.timeline, b.stop_lsn))
    ]
    if not usable:
        raise UsageError(
            "no base backup ends before the recovery target"
            if bases
            else "the repository has no base backup",
            hint="take one with 'safehold backup --physical'; recovery can only start from a "
            "base backup older than the target",
        )
    return usable[::-1]


def timeline_switches(archive: wal.WalArchive) -> list[wal_chain.Switch]:
    """The switches leading to the newest timeline in the archive (none on timeline 1)."""
    return wal_chain.read_history(archive, wal_chain.newest_timeline(archive.primary))


def check(archive: wal.WalArchive) -> list[tuple[BaseBackup, wal_chain.ChainReport | None]]:
    """For each base backup, newest first: is the WAL from it to the newest archived segment
    on the newest timeline complete? None for a base backup that cannot reach that timeline
    (it is on a timeline another recovery branched away from)."""
    switches = timeline_switches(archive)
    usable = {b.name for b in choose_base(archive.primary, switches=switches)}
    return [
        (base, wal_chain.check_chain(archive, base.start_segment, switches))
        if base.name in usable
        else (base, None)
        for base in reversed(base_backups(archive.primary))
    ]


def copy_base(source: Storage, base: BaseBackup, destination: Storage) -> int:
    """Copy one base backup to another place: data first, its record last (the commit point
    there too). Returns the bytes copied; an identical copy already there is left alone."""
    if destination.exists(base.record_key):
        return 0
    with source.open_reader(base.data_key) as reader, destination.open_writer(base.data_key) as out:
        copied = 0
        while chunk := reader.read(8 << 20):
            out.write(chunk)
            copied += len(chunk)
    destination.put_bytes(base.record_key, record_bytes(base))
    return copied


def verify_base(storage: Storage, base: BaseBackup) -> str | None:
    """Size and sha256 of the stored file against its record; None when intact, else why.
    (The files inside are checked against its manifest on every restore and drill.)"""
    try:
        with storage.open_reader(base.data_key) as reader:
            digest, size = sha256_of(reader)
    except FileNotFoundError:
        return f"{base.data_key} is missing"
    if size != base.size:
        return f"{size} bytes stored, the record says {base.size}"
    if digest != base.sha256:
        return f"sha256 {digest[:12]}… does not match the record's {base.sha256[:12]}…"
    return None


def crc32c_extend(value: int, data: bytes | memoryview) -> int:
    """The CRC-32C of pg_basebackup's manifest over ``data``, continued from ``value`` (0 to
    start). The GIL is kept: a 1 MiB sum takes ~40 us, less than winning the GIL back."""
    return int(crc32c.crc32c(data, value, gil_release_mode=0))


def tar_header(block: bytes) -> tuple[str, str, int, int, int]:
    """(type, relative name, size, mode, mtime in ns) of a ustar header; damage raises."""
    stored = _number(block[148:156])
    if stored != sum(block[:148]) + 256 + sum(block[156:]):
        raise IntegrityError("the base backup's tar has a header with a wrong checksum")
    kind = chr(block[156]) if block[156] else "0"
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0" and block[345] != 0:
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    text = name.decode("utf-8", "surrogateescape")
    try:
        rel = member_path(text)
    except ValueError:
        rel = ""
    if kind not in "05" or not rel:
        raise IntegrityError(f"the base backup's tar has an unexpected member {text!r} ({kind})")
    return (
        kind,
        rel,
        _number(block[124:136]),
        _number(block[100:108]),
        (_number(block[136:148]) * 1_000_000_000),
    )


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # base-256, as PostgreSQL writes sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big") + ((field[0] & 0x7F) << (8 * (len(field) - 1)))
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise IntegrityError("the base backup's tar has a damaged header") from None
