"""The WAL archive: ``wal-push`` (PostgreSQL's archive_command) and ``wal-fetch``
(restore_command), and the continuity check of the archived chain.

Layout in the repository: ``wal/<name>.zst`` (the file, zstd) and ``wal/<name>.sha256`` (the
sha256 and size of the *uncompressed* file). The sidecar is written last: it is the commit
point, so a segment without one was never acknowledged to the server (which pushes it again).
No repository lock is taken: every write is atomic, and archiving must never wait for a backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard
from psycopg import sql

from ..compress.zstd import ZstdError, zstd_reader
from ..errors import IntegrityError, SafeholdError, StorageError, UsageError
from ..sources.postgres import PgTarget, connect
from ..storage import LocalStorage
from ..storage.local import fsync_dir

PREFIX = "wal"
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
NAME_RE = re.compile(
    r"^(?:[0-9A-F]{24}(?:\.partial)?|[0-9A-F]{8}\.history|[0-9A-F]{24}\.[0-9A-F]{8}\.backup)$"
)
SEGMENT_SIZE = 16 * 1024 * 1024  # the default wal_segment_size; the chain check assumes it
ZSTD_LEVEL = 3


class WalMissing(SafeholdError):
    """The archive has no such file: for restore_command, the normal end of recovery."""

    exit_code = 1


@dataclass(frozen=True)
class PushResult:
    name: str
    size: int
    stored: int  # compressed bytes written; 0 when the archive already had it
    already: bool


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"{name!r} is not a WAL segment, .history or .backup file name",
            hint="PostgreSQL passes %p (push) and %f (fetch); check archive/restore_command",
        )
    return name


def data_key(name: str) -> str:
    return f"{PREFIX}/{name}.zst"


def sum_key(name: str) -> str:
    return f"{PREFIX}/{name}.sha256"


def _read_sum(storage: LocalStorage, name: str) -> tuple[str, int] | None:
    try:
        text = storage.read_bytes(sum_key(name)).decode("ascii").split()
    except FileNotFoundError:
        return None
    if len(text) != 2 or not text[1].isdigit():
        raise IntegrityError(f"archived WAL {name}: its checksum file is damaged")
    return text[0], int(text[1])


def push(storage: LocalStorage, path: Path, *, level: int = ZSTD_LEVEL) -> PushResult:
    """Archive one file; returns only once it is durable (data, then sidecar, both fsynced)."""
    name = check_name(Path(path).name)
    try:
        data = Path(path).read_bytes()  # a segment is 16 MiB: one read, one hash, one frame
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    digest = hashlib.sha256(data).hexdigest()
    known = _read_sum(storage, name)
    if known is not None and storage.exists(data_key(name)):
        if known == (digest, len(data)):
            return PushResult(name, len(data), 0, already=True)
        raise IntegrityError(
            f"archived WAL {name} already exists with different content "
            f"(sha256 {known[0][:12]}… in the archive, {digest[:12]}… pushed)",
            hint="two servers may be archiving into one repository, or the archive belongs to "
            "an older cluster: give each cluster its own BACKUP_DIR",
        )
    storage.ensure()
    compressed = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)
    storage.put_bytes(data_key(name), compressed)
    storage.put_bytes(sum_key(name), f"{digest} {len(data)}\n".encode())
    return PushResult(name, len(data), len(compressed), already=False)


def fetch(storage: LocalStorage, name: str, dest: Path) -> int:
    """Decompress ``name`` into ``dest`` (atomically), verified against its sha256; returns the
    size. A file the archive does not have raises ``WalMissing``."""
    check_name(name)
    known = _read_sum(storage, name)
    if known is None:
        raise WalMissing(f"{name} is not in the WAL archive")
    expected, expected_size = known
    dest = Path(dest)
    temp = dest.with_name(f".{dest.name}.safehold-{secrets.token_hex(4)}")
    digest = hashlib.sha256()
    size = 0
    try:
        with storage.open_reader(data_key(name)) as raw, temp.open("xb") as out:
            reader = zstd_reader(raw)
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if (digest.hexdigest(), size) != (expected, expected_size):
            raise IntegrityError(
                f"archived WAL {name} is damaged: sha256/size do not match its checksum file",
                hint="recovery cannot continue past this segment; restore to an earlier time",
            )
        os.replace(temp, dest)
        fsync_dir(dest.parent)
    except FileNotFoundError as exc:
        if not exc.filename or Path(exc.filename).name.endswith(".zst"):
            raise IntegrityError(
                f"archived WAL {name} has a checksum file but its data is gone",
                hint="recovery cannot continue past this segment; restore to an earlier time",
            ) from exc
        raise
    except ZstdError as exc:
        raise IntegrityError(
            f"archived WAL {name} is damaged: {exc}",
            hint="recovery cannot continue past this segment; restore to an earlier time",
        ) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return size


def archived(storage: LocalStorage) -> list[str]:
    """Names of committed files (those with a sidecar), sorted."""
    suffix = ".sha256"
    return sorted(
        key.rsplit("/", 1)[1][: -len(suffix)]
        for key in storage.list(PREFIX)
        if key.endswith(suffix)
    )


def segment_of(lsn: str, timeline: int, segment_size: int = SEGMENT_SIZE) -> str:
    """The segment file that holds ``lsn`` ('0/2000028') on ``timeline``."""
    high, low = (int(part, 16) for part in lsn.split("/"))
    number = ((high << 32) | low) // segment_size
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def next_segment(name: str, segment_size: int = SEGMENT_SIZE) -> str:
    per_log = 0x100000000 // segment_size
    timeline, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    seg += 1
    if seg >= per_log:
        log, seg = log + 1, 0
    return f"{timeline:08X}{log:08X}{seg:08X}"


@dataclass(frozen=True)
class ChainReport:
    start: str
    newest: str | None
    segments: int  # present in the range
    missing: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.newest is not None and not self.missing


def check_chain(storage: LocalStorage, start: str, *, limit: int = 1000) -> ChainReport:
    """Every segment from ``start`` to the newest archived one on its timeline is there."""
    timeline = start[:8]
    present = {n for n in archived(storage) if SEGMENT_RE.match(n) and n[:8] == timeline}
    later = sorted(n for n in present if n >= start)
    if not later:
        return ChainReport(start, None, 0, (start,))
    newest = later[-1]
    missing: list[str] = []
    current, found = start, 0
    while current <= newest:
        if current in present:
            found += 1
        elif len(missing) < limit:
            missing.append(current)
        current = next_segment(current)
    return ChainReport(start, newest, found, tuple(missing))


# ---- the server side: what archive_command / restore_command call ----


def server_settings(command: str, backup_dir: Path) -> dict[str, str]:
    """What the server needs for continuous archiving into ``backup_dir``."""
    push = f"{command} wal-push --backup-dir {shell_word(str(backup_dir.absolute()))} %p"
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": push,
        "archive_timeout": "60",
    }


def shell_word(text: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./=:@+-]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def apply_settings(target: PgTarget, settings: dict[str, str]) -> list[str]:
    """``ALTER SYSTEM`` + reload; returns the settings that wait for a restart."""
    with connect(target, target.maintenance_db, autocommit=True) as conn:
        for name, value in settings.items():
            statement = sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(name), sql.Literal(value)
            )
            conn.execute(statement)
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)  # the postmaster re-reads its files asynchronously
        rows = conn.execute(
            "SELECT name FROM pg_settings WHERE pending_restart AND name = ANY(%s)",
            (list(settings),),
        ).fetchall()
    return sorted(str(r[0]) for r in rows)


def which_safehold() -> str:
    """How the server should call this safehold: the installed script next to the running
    interpreter, else ``python -m safehold``."""
    script = Path(sys.executable).parent / "safehold"
    if script.is_file():
        return shell_word(str(script))
    found = shutil.which("safehold")
    return shell_word(found) if found else f"{shell_word(sys.executable)} -m safehold"
