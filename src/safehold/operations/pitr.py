"""Point-in-time recovery: server settings, physical base backups, restore to a time.

A base backup is ``pg_basebackup -D - -Ft -X none`` (WAL comes from the archive), streamed
through zstd and sha256 into ``base/base_YYYYMMDD_HHMMSS.tar.zst``; its JSON record
``base/base_....json`` (start/stop LSN, timeline, times, sha256) is written last: the commit point.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from .. import _proc
from ..compress.zstd import ZstdError, ZstdWriter, zstd_reader
from ..errors import DatabaseError, IntegrityError, RestoreError, ToolError, UsageError
from ..model import Event, EventSink
from ..sources.postgres import PgTarget
from ..storage import LocalStorage
from . import wal
from ._pipeline import HashingWriter, check_digest

BASE = "base"


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

    @property
    def start_segment(self) -> str:
        return wal.segment_of(self.start_lsn, self.timeline)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.update(started=self.started.isoformat(), finished=self.finished.isoformat())
        data["start_segment"] = self.start_segment
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BaseBackup:
        fields = {k: data[k] for k in cls.__dataclass_fields__}
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


def base_backup(target: PgTarget, storage: LocalStorage, sink: EventSink) -> BaseBackup:
    """Stream a physical base backup into the repository; its record is written last."""
    storage.ensure()
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
    writer = storage.open_writer(f"{BASE}/{name}.tar.zst")
    try:
        hashing = HashingWriter(writer)
        counter = _TarWatch(ZstdWriter(hashing, threads=2))
        while chunk := proc.stdout.read(1 << 20):
            counter.write(chunk)
        counter.inner.finish()
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
    )
    body = json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    storage.put_bytes(f"{BASE}/{name}.json", body)
    sink(
        Event(
            "pitr",
            f"base backup {name} done: {record.size} bytes, WAL from {record.start_segment}",
            data=record.to_json(),
        )
    )
    return record


def base_backups(storage: LocalStorage) -> list[BaseBackup]:
    """Committed base backups, oldest first."""
    found = []
    for key in storage.list(BASE):
        if key.endswith(".json"):
            found.append(BaseBackup.from_json(json.loads(storage.read_bytes(key))))
    return sorted(found, key=lambda b: b.finished)


def choose_base(storage: LocalStorage, to_time: datetime | None) -> BaseBackup:
    """The newest base backup that finished before ``to_time`` (or the newest of all)."""
    bases = base_backups(storage)
    usable = [b for b in bases if to_time is None or b.finished < to_time]
    if not usable:
        raise UsageError(
            "no base backup finished before the target time"
            if bases
            else "the repository has no base backup",
            hint="take one with 'safehold pitr base-backup'; recovery can only start from a base "
            "backup older than the target",
        )
    return usable[-1]


def check(storage: LocalStorage) -> tuple[BaseBackup, wal.ChainReport]:
    base = choose_base(storage, None)
    return base, wal.check_chain(storage, base.start_segment)


@dataclass(frozen=True)
class RestoreResult:
    base: str
    target_dir: Path
    port: int
    took_s: float
    reached: str  # what the server logged about where recovery stopped
    lsn: str
    running: bool


class _HashingSource:
    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.raw.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data


def _conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def restore(
    storage: LocalStorage,
    target_dir: Path,
    *,
    to_time: datetime | None,
    command: str,
    bin_dir: Path,
    run_as: str | None,
    port: int,
    user: str,
    keep_running: bool,
    sink: EventSink,
    timeout: float = 600.0,
) -> RestoreResult:
    """Extract the chosen base backup into a new folder, recover to ``to_time`` (or the end of
    the archive), promote, and report where recovery stopped."""
    began = time.monotonic()
    base = choose_base(storage, to_time)
    target_dir = Path(target_dir).absolute()
    if target_dir.exists() and any(target_dir.iterdir()):
        raise UsageError(f"{target_dir} is not empty", hint="restore into a new, empty folder")
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(target_dir, 0o700)
    sink(Event("pitr", f"restoring base backup {base.name} into {target_dir}"))
    source = _HashingSource(storage.open_reader(f"{BASE}/{base.name}.tar.zst"))
    try:
        with tarfile.open(fileobj=zstd_reader(source), mode="r|") as archive:
            archive.extractall(target_dir, filter="data")
        while source.read(1 << 20):
            pass
    except (tarfile.TarError, ZstdError) as exc:
        raise IntegrityError(f"base backup {base.name} is damaged: {exc}") from exc
    finally:
        source.raw.close()
    check_digest(base.name, base.sha256, source.hash.hexdigest(), base.size, source.size)
    (target_dir / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
    fetch = f"{command} wal-fetch --backup-dir {wal.shell_word(str(storage.root.absolute()))} %f %p"
    lines = {
        "restore_command": fetch,
        "recovery_target_action": "promote",
        "archive_mode": "off",  # a restored copy must not archive into the source's repository
    }
    if to_time is not None:
        lines["recovery_target_time"] = to_time.isoformat(sep=" ")
    with (target_dir / "postgresql.auto.conf").open("a") as conf:
        conf.write("\n# safehold pitr restore\n")
        conf.writelines(f"{k} = {_conf(v)}\n" for k, v in lines.items())
    (target_dir / "recovery.signal").touch()
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        for folder, _dirs, files in os.walk(target_dir):
            os.chown(folder, entry.pw_uid, entry.pw_gid)
            for name in files:
                os.chown(os.path.join(folder, name), entry.pw_uid, entry.pw_gid)
    log = target_dir / "safehold-restore.log"
    options = f"-p {port} -k {target_dir} -c listen_addresses=127.0.0.1"
    _pg_ctl(bin_dir, run_as, target_dir, "-o", options, "-l", str(log), "-w", "-t", "600", "start")
    server = PgTarget(host=str(target_dir), port=port, dbname="postgres", user=user)
    try:
        lsn = _wait_promoted(server, log, began + timeout)
    except BaseException:
        _pg_ctl(bin_dir, run_as, target_dir, "-m", "fast", "-w", "stop", check=False)
        raise
    text = log.read_text(errors="replace") if log.exists() else ""
    reached = [ln for ln in text.splitlines() if "recovery stopping" in ln]
    reached += [ln for ln in text.splitlines() if "last completed transaction" in ln]
    if not keep_running:
        _pg_ctl(bin_dir, run_as, target_dir, "-m", "fast", "-w", "stop", check=False)
    summary = "; ".join(ln.split("LOG:", 1)[-1].strip() for ln in reached) or "end of archive"
    took = time.monotonic() - began
    sink(Event("pitr", f"recovered {base.name} to: {summary} (lsn {lsn}) in {took:.1f}s"))
    return RestoreResult(base.name, target_dir, port, took, summary, lsn, keep_running)


def _wait_promoted(server: PgTarget, log: Path, deadline: float) -> str:
    last = ""
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(
                host=server.host,
                port=server.port,
                user=server.user,
                dbname="postgres",
                connect_timeout=5,
                autocommit=True,
            ) as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_current_wal_lsn()::text "
                    "WHERE NOT pg_is_in_recovery()"
                ).fetchone()
                if row is not None:
                    return str(row[1])
        except psycopg.Error as exc:
            last = str(exc).strip()
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise RestoreError(f"recovery did not finish in time ({last}): {tail}")


def _pg_ctl(bin_dir: Path, run_as: str | None, data: Path, *args: str, check: bool = True) -> None:
    proc = subprocess.run(
        [str(bin_dir / "pg_ctl"), "-D", str(data), *args],
        env=_proc.child_env(),
        user=run_as,
        capture_output=True,
        check=False,
        cwd=data,
    )
    if check and proc.returncode != 0:
        log = data / "safehold-restore.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise DatabaseError(
            f"pg_ctl {args[-1]} on {data} failed: {proc.stderr.decode(errors='replace')}{tail}",
            hint="the server log is in the target folder (safehold-restore.log)",
        )


def default_server_user() -> str | None:
    """As root, the server must run as someone else: 'postgres' when it exists."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"
