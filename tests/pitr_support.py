"""What the PITR tests share: a real cluster archiving into a repository through the CLI,
restores into folders the server user owns, and row checks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import zstandard

from safehold.model import Event
from safehold.operations.pitr import base as pitr
from safehold.operations.pitr import restore as pitr_restore
from safehold.operations.pitr import setup as pitr_setup
from safehold.sandbox import SandboxCluster
from safehold.sandbox.cluster import UNPRIVILEGED_USER, free_port
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import ROOT

AS_ROOT = os.geteuid() == 0
RUN_AS = UNPRIVILEGED_USER if AS_ROOT else None
Member = tuple[tarfile.TarInfo, bytes]


def server_command() -> str:
    """How the server (user nobody when we are root) runs safehold: the venv's interpreter may
    sit under a folder that user cannot enter, so as root use the system Python 3.11 with the
    project and the venv's packages on PYTHONPATH."""
    python = shutil.which("python3.11", path="/usr/bin") if AS_ROOT else None
    paths = f"{ROOT / 'src'}:{sysconfig.get_paths()['purelib']}"
    return f"env PYTHONPATH={paths} {python or sys.executable} -m safehold"


def shared_folder(prefix: str) -> Path:
    """A folder in /tmp the server user owns (it writes the archive / runs the restore)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(folder, 0o700)
    give_to_server(folder)
    return folder


def give_to_server(path: Path) -> None:
    if RUN_AS is not None:
        entry = pwd.getpwnam(RUN_AS)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def quiet(_event: Event) -> None:
    return None


def sql(target: PgTarget, statement: str) -> list[tuple[object, ...]]:
    with connect(target, "postgres", autocommit=True) as conn:
        cur = conn.execute(statement)
        return list(cur.fetchall()) if cur.description else []


def switch_and_wait(target: PgTarget, log: Path, timeout: float = 60) -> str:
    """Close the current WAL segment and wait until the server archived it."""
    segment = str(sql(target, "SELECT pg_walfile_name(pg_switch_wal())")[0][0])
    deadline = time.monotonic() + timeout
    failed: object = None
    while time.monotonic() < deadline:
        done, failed = sql(target, "SELECT last_archived_wal, failed_count FROM pg_stat_archiver")[
            0
        ]
        if done is not None and str(done)[8:] >= segment[8:] and str(done)[:8] == segment[:8]:
            return segment
        time.sleep(0.2)
    text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise AssertionError(f"{segment} not archived (failed {failed}): {text}")


class Archiving:
    def __init__(self, cluster: SandboxCluster, repo: LocalStorage) -> None:
        self.cluster = cluster
        self.repo = repo

    @property
    def target(self) -> PgTarget:
        return self.cluster.target

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        return sql(self.target, statement)

    def switch_and_wait(self, timeout: float = 60) -> str:
        return switch_and_wait(self.target, self.cluster.root / "server.log", timeout)


@contextmanager
def archiving_cluster(config: Path | None = None) -> Iterator[Archiving]:
    """A fresh cluster with archive_command = safehold wal-push into a new repository."""
    repo_dir = shared_folder("safehold-wal-")
    cluster = SandboxCluster()
    cluster.start()
    try:
        settings = pitr_setup.server_settings(server_command(), repo_dir, config)
        pending = pitr_setup.apply_settings(cluster.target, settings)
        assert "archive_mode" in pending
        log = str(cluster.root / "server.log")
        cluster._run("pg_ctl", "-D", str(cluster.data), "-l", log, "-m", "fast", "-w", "restart")
        yield Archiving(cluster, LocalStorage(repo_dir))
    finally:
        cluster.remove()
        shutil.rmtree(repo_dir, ignore_errors=True)


def insert_batch(db: Archiving | PgTarget, batch: int) -> datetime:
    target = db.target if isinstance(db, Archiving) else db
    sql(target, f"INSERT INTO items SELECT {batch}, g FROM generate_series(1, 1000) g")
    return datetime.now(UTC)


def server(bin_dir: Path, port: int | None = None) -> pitr_restore.Server:
    return pitr_restore.Server(
        command=server_command(),
        bin_dir=bin_dir,
        run_as=RUN_AS,
        port=port or free_port(),
        user="postgres",
    )


def batches(data_dir: Path, port: int) -> list[tuple[object, ...]]:
    """(batch, rows) in a restored server reached through its socket folder."""
    with psycopg.connect(host=str(data_dir), port=port, user="postgres") as conn:
        rows = conn.execute("SELECT batch, count(*) FROM items GROUP BY 1 ORDER BY 1")
        return list(rows.fetchall())


def new_target_dir() -> Path:
    return shared_folder("safehold-pitr-") / "data"


def repacked_base(repo: LocalStorage, into: Path, change: Callable[[list[Member]], None]) -> Path:
    """A copy of ``repo`` whose newest base backup holds a changed tar (``change`` edits the
    members in place) under a record with the new sha256 and size: only the manifest inside
    can tell. Returns the copy's root."""
    shutil.copytree(repo.root, into)
    copy = LocalStorage(into)
    base = pitr.base_backups(copy)[-1]
    stored = copy.path(base.data_key)
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(stored.read_bytes())
    members: list[Member] = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read() if info.isfile() else b""  # type: ignore[union-attr]
            members.append((info, data))
    change(members)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    packed = zstandard.ZstdCompressor(level=1).compress(out.getvalue())
    stored.write_bytes(packed)
    record = json.loads(copy.read_bytes(base.record_key))
    record.update(sha256=hashlib.sha256(packed).hexdigest(), size=len(packed))
    copy.put_bytes(base.record_key, json.dumps(record).encode())
    return into


def unpack_base(repo: LocalStorage, folder: Path) -> None:
    """The newest base backup's tar, unpacked by tar itself (for pg_verifybackup's verdict)."""
    stored = repo.path(pitr.base_backups(repo)[-1].data_key)
    folder.mkdir(mode=0o700, parents=True)
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(stored.read_bytes())
    subprocess.run(["tar", "-x", "-C", str(folder)], input=raw, check=True)
