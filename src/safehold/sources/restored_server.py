"""Running a restored cluster: start it, wait until recovery promoted it, read where it
stopped from its log, and stop it; as root the server runs as another OS user."""

from __future__ import annotations

import contextlib
import importlib
import os
import pwd
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import _proc
from ..errors import DatabaseError, RestoreError

NOT_REACHED = "recovery ended before configured recovery target was reached"
STOP_LINES = ("recovery stopping", "last completed transaction", "selected new timeline ID")
LOG = "safehold-restore.log"


class TargetNotReached(RestoreError):
    """The archive ends before the recovery target."""


@dataclass(frozen=True)
class Server:
    """How the restored server runs, and how it calls safehold back (restore_command)."""

    command: str  # e.g. "/opt/safehold/bin/safehold"
    bin_dir: Path
    run_as: str | None
    port: int
    user: str
    config: Path | None = None  # passed on to wal-fetch when the operator uses a config file


def recover(target_dir: Path, server: Server, deadline: float) -> tuple[str, int]:
    """Start the server and wait until it has promoted; (current LSN, timeline)."""
    import psycopg  # warmed up by preload() while the base backup was extracted

    log = target_dir / LOG
    options = f"-p {server.port} -k {target_dir} -c listen_addresses=127.0.0.1"
    try:  # pg_ctl waits until the server accepts (read-only) connections, or has stopped
        pg_ctl(server, target_dir, "-o", options, "-l", str(log), "start")
    except DatabaseError:
        if NOT_REACHED not in (log.read_text(errors="replace") if log.exists() else ""):
            raise
    last = ""
    while time.monotonic() < deadline:
        # Before reading the log (no race with it); postmaster.pid, not a pg_ctl process per poll
        stopped = not pid_alive(target_dir)
        text = log.read_text(errors="replace") if log.exists() else ""
        if NOT_REACHED in text:
            pg_ctl(server, target_dir, "-m", "immediate", "-w", "stop", check=False)
            raise TargetNotReached(
                "the archive ends before the recovery target: " + reached(log),
                hint="check the target (time zone? a later restore point?) and 'safehold pitr "
                "check' for a gap in the WAL chain",
            )
        if stopped:
            raise RestoreError(f"the restored server stopped: {text[-1500:]}")
        try:
            with psycopg.connect(
                host=str(target_dir),
                port=server.port,
                user=server.user,
                dbname="postgres",
                connect_timeout=5,
                autocommit=True,
            ) as conn:
                row = conn.execute(
                    "SELECT pg_current_wal_lsn()::text, "
                    "pg_walfile_name(pg_current_wal_lsn()) WHERE NOT pg_is_in_recovery()"
                ).fetchone()
                if row is not None:
                    return str(row[0]), int(str(row[1])[:8], 16)
        except psycopg.Error as exc:
            last = str(exc).strip()
        time.sleep(0.1)
    pg_ctl(server, target_dir, "-m", "fast", "-w", "stop", check=False)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    raise RestoreError(f"recovery did not finish in time ({last}): {tail}")


def preload() -> threading.Thread:
    """Import the database driver (~0.1 s) on a thread while the caller extracts the base
    backup, so waiting for the server does not start with it."""
    thread = threading.Thread(
        target=importlib.import_module, args=("psycopg",), name="safehold-preload", daemon=True
    )
    thread.start()
    return thread


def reached(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [ln for ln in text.splitlines() if any(key in ln for key in STOP_LINES)]
    said = [re.sub(r"^.*?(LOG|FATAL):\s+", "", ln).strip() for ln in lines]
    return "; ".join(dict.fromkeys(said)) or "the end of the archive"


def own(target_dir: Path, run_as: str | None) -> None:
    if run_as is None:
        return
    entry = pwd.getpwnam(run_as)
    for folder, _dirs, files in os.walk(target_dir):
        for path in [folder, *(os.path.join(folder, name) for name in files)]:
            info = os.lstat(path)
            # Only what is not theirs yet: a chown dirties the inode, and the server's fsync
            # of every file at start-up would then write each one again
            if (info.st_uid, info.st_gid) != (entry.pw_uid, entry.pw_gid):
                os.lchown(path, entry.pw_uid, entry.pw_gid)


def running(server: Server, data: Path) -> bool:
    status = subprocess.run(
        [str(server.bin_dir / "pg_ctl"), "status", "-D", str(data)],
        capture_output=True,
        check=False,
        user=server.run_as,
    )
    return status.returncode == 0


def pid_alive(data: Path) -> bool:
    """postmaster.pid names a live process (pg_ctl's own check refuses to run as root)."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return _proc.pid_alive(pid)


def stop_abandoned(data: Path, timeout: float = 30.0) -> int | None:
    """Stop, at once (SIGQUIT: immediate shutdown, for data about to be discarded), the server
    ``data``'s postmaster.pid names, if that process really serves ``data`` (its command line
    says so); wait for it to exit. The pid stopped, or None when none ran; RestoreError when
    it would not stop."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    if pid <= 0 or str(data).encode() not in _cmdline(pid):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + timeout
    while _cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _cmdline(pid):
        raise RestoreError(f"the server on {data} (pid {pid}) did not stop")
    return pid


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pg_ctl(server: Server, data: Path, *args: str, check: bool = True) -> None:
    proc = subprocess.run(
        [str(server.bin_dir / "pg_ctl"), "-D", str(data), *args],
        env=_proc.child_env(),
        user=server.run_as,
        capture_output=True,
        check=False,
        cwd=data,
    )
    if check and proc.returncode != 0:
        log = data / LOG
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise DatabaseError(
            f"pg_ctl {args[-1]} on {data} failed: {proc.stderr.decode(errors='replace')}{tail}",
            hint=f"the server log is in the target folder ({LOG})",
        )


def stop(server: Server, data: Path) -> None:
    """Stop a restored server left running (``keep_running``)."""
    pg_ctl(server, data, "-m", "fast", "-w", "stop", check=False)


def default_server_user() -> str | None:
    """As root, the server must run as someone else: 'postgres' when it exists."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"
