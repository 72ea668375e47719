"""A point-in-time restore killed at each step, and two of them into one folder at once.

The real command (``safehold pitr restore --to-time T`` into a new folder, as root with the server
run as an unprivileged user) is stopped with SIGKILL or SIGTERM when its log shows a step: the
unpack begins ("restoring base backup"), every file is unpacked, checked against the manifest and
on disk ("starting the server"), the server is up and replaying, it promoted, the restore is
reported ("recovered"); and at random moments inside the unpack (once the folder holds a random
share of the base backup's files). Then the same command runs again into the same folder, and
what is there is checked by its content: nothing, a refusal naming the folder, or a cluster
holding exactly the rows the source had committed at T. No server ever runs on a folder whose
files were not all unpacked and checked, no journal entry or partial file is left in the
repository, and no server of the killed run is left running.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import psycopg
import pytest
import zstandard

from safehold import naming
from safehold._proc import pid_alive
from safehold.operations import journal
from safehold.operations.pitr import base as pitr
from safehold.operations.pitr import restore as pitr_restore
from safehold.sandbox.cluster import free_port
from safehold.sources.restored_server import LOG, pg_ctl
from safehold.storage import LocalStorage
from safehold.storage.local import PARTIAL_MARK

from .conftest import seed_env
from .crash_support import message, read_until
from .pitr_support import (
    RUN_AS,
    Archiving,
    archiving_cluster,
    batches,
    insert_batch,
    new_target_dir,
    quiet,
    server,
    server_command,
)

Rows = list[tuple[object, ...]]
ROWS = "SELECT batch, count(*) FROM items GROUP BY 1 ORDER BY 1"

RESTORING = "restoring base backup"  # the folder is made; the unpack begins
STARTING = "starting the server"  # every file unpacked, checked against the manifest, on disk
RECOVERED = "recovered base_"  # promoted at the target; the server is stopped again
PROMOTED = "selected new timeline ID"  # in the restored server's own log

SIGNALS = [pytest.param(signal.SIGKILL, id="SIGKILL"), pytest.param(signal.SIGTERM, id="SIGTERM")]


@dataclass(frozen=True)
class Archive:
    db: Archiving
    to_time: str  # between batch 2 and batch 3
    at_time: Rows  # what the source had committed at to_time
    at_end: Rows  # and at the end of the archive
    files: int  # regular files in the base backup's tar


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    with archiving_cluster() as db:
        db.sql("CREATE TABLE items (batch int, n int)")
        pitr.base_backup(db.target, db.repo, quiet)
        insert_batch(db, 1)
        insert_batch(db, 2)
        db.switch_and_wait()
        at_time = db.sql(ROWS)
        time.sleep(0.5)
        between = datetime.now(UTC)
        time.sleep(0.5)
        insert_batch(db, 3)
        db.switch_and_wait()
        yield Archive(db, between.isoformat(), at_time, db.sql(ROWS), base_files(db.repo))


def base_files(repo: LocalStorage) -> int:
    stored = repo.path(pitr.base_backups(repo)[-1].data_key)
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(stored.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return sum(1 for member in tar.getmembers() if member.isfile())


# ---- the command, and stopping it ----


def restore_cli(
    db: Archiving, target_dir: Path, port: int, *more: str, path: str | None = None
) -> subprocess.Popen[str]:
    """``safehold pitr restore MORE --target-dir TARGET_DIR --port PORT`` in a child process."""
    env = seed_env(db.target, db.repo.root)
    if path is not None:
        env["PATH"] = path
    argv = [sys.executable, "-m", "safehold", "pitr", "restore", *more]
    argv += ["--target-dir", str(target_dir), "--port", str(port)]
    argv += ["--command", server_command(), "--log-format", "json"]
    if RUN_AS is not None:
        argv += ["--server-user", RUN_AS]
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=target_dir.parent,
    )


def stop_at(
    proc: subprocess.Popen[str],
    sig: signal.Signals,
    step: str,
    ready: Callable[[], bool] | None = None,
) -> list[str]:
    """Send ``sig`` once the log shows ``step`` and ``ready()`` holds; every line the run wrote
    (it is waited for: a SIGTERMed run has cleaned up, a SIGKILLed one is reaped)."""
    lines, reached = read_until(proc, step)
    if not reached:
        proc.wait()
        raise AssertionError(f"the restore ended ({proc.returncode}) before {step!r}: {lines}")
    deadline = time.monotonic() + 60
    while ready is not None and not ready() and proc.poll() is None:
        assert time.monotonic() < deadline, f"never ready after {step!r}: {lines}"
        time.sleep(0.003)
    os.kill(proc.pid, sig)  # our own child, by its pid
    _out, err = proc.communicate(timeout=120)
    return lines + [message(line) for line in err.splitlines()]


def files_in(folder: Path) -> int:
    return sum(len(names) for _root, _dirs, names in os.walk(folder))


def holds_files(folder: Path, count: int) -> bool:
    return files_in(folder) >= count


def server_up(folder: Path) -> bool:
    return bool(servers_on(folder))


def logged(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


# ---- processes (read from /proc; only servers our own runs started are ever stopped) ----


def processes_on(folder: Path) -> dict[int, list[str]]:
    """Live processes with ``folder`` as one of their arguments (``postgres -D folder``, its
    ``pg_ctl``); a zombie has no arguments left."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if str(folder) in argv:
            found[int(entry.name)] = argv
    return found


def servers_on(folder: Path) -> list[int]:
    return sorted(p for p, argv in processes_on(folder).items() if Path(argv[0]).name == "postgres")


def settled_servers(folder: Path) -> list[int]:
    """The servers on ``folder`` once no ``pg_ctl`` a killed run left behind is still starting
    or stopping one."""
    deadline = time.monotonic() + 90
    while any(Path(argv[0]).name == "pg_ctl" for argv in processes_on(folder).values()):
        assert time.monotonic() < deadline, processes_on(folder)
        time.sleep(0.1)
    return servers_on(folder)


def stop_servers(folder: Path) -> None:
    """Fast shutdown (SIGINT, by pid) of the servers our runs started on ``folder``."""
    for pid in settled_servers(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while servers_on(folder):
        assert time.monotonic() < deadline, f"a server on {folder} did not stop"
        time.sleep(0.1)


def promoted_rows(folder: Path, port: int) -> Rows | None:
    """The rows of the server running on ``folder`` once it promoted; None if it stopped
    before (an archive that ends before the target stops it, it never promotes early)."""
    deadline = time.monotonic() + 90
    while servers_on(folder):
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(
                host=str(folder), port=port, user="postgres", connect_timeout=5, autocommit=True
            ) as conn,
        ):
            if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                return list(conn.execute(ROWS).fetchall())
        assert time.monotonic() < deadline, f"the server on {folder} never promoted"
        time.sleep(0.2)
    return None


def rows_of_stopped(db: Archiving, folder: Path) -> Rows:
    """Start a cluster a run left stopped (a server of our own, on a free port), read its rows,
    stop it."""
    port = free_port()
    spec = server(db.cluster.bin_dir, port)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    pg_ctl(spec, folder, "-o", options, "-l", str(folder / "check.log"), "-w", "start")
    try:
        return batches(folder, port)
    finally:
        pitr_restore.stop(spec, folder)


# ---- what is left ----


def repository_clean(repo: LocalStorage) -> None:
    """No journal entry, nothing in the repository's temp folder, no partial file whose writer
    is gone (a live one is the source's wal-push at work)."""
    assert journal.entries(repo) == []
    scratch = repo.path(naming.TMP_DIR)
    assert not scratch.is_dir() or not any(scratch.iterdir())
    torn = []
    for path in repo.root.rglob(f"*{PARTIAL_MARK}*"):
        pid = path.name.rsplit(PARTIAL_MARK, 1)[1].split("-", 1)[0]
        if not pid.isdigit() or not pid_alive(int(pid)):
            torn.append(path)
    assert torn == []


@dataclass(frozen=True)
class Next:
    code: int
    said: str
    rows: Rows | None  # what the restored cluster holds, when the next run restored it


def run_again(archive: Archive, target_dir: Path) -> Next:
    """The same restore again, into the same folder (kept running to read its rows)."""
    port = free_port()
    proc = restore_cli(archive.db, target_dir, port, "--to-time", archive.to_time, "--keep-running")
    out, err = proc.communicate(timeout=300)
    said = "\n".join(message(line) for line in (out + err).splitlines())
    if proc.returncode != 0:
        return Next(proc.returncode, said, None)
    try:
        return Next(0, said, batches(target_dir, port))
    finally:
        pitr_restore.stop(server(archive.db.cluster.bin_dir, port), target_dir)


def check_next(again: Next, target_dir: Path, expected: Rows) -> str:
    """A restore with exactly the rows committed at the target, or a refusal that names the
    folder and blames neither the backup nor anything half-done."""
    if again.code == 0:
        assert again.rows == expected, again
        return "restored"
    assert again.code == 2, again.said  # a usage refusal before anything is touched
    assert str(target_dir) in again.said, again.said
    assert any(w in again.said for w in ("not empty", "interrupted", "incomplete")), again.said
    assert "damaged" not in again.said and "unexpected" not in again.said, again.said
    return "refused"


def is_stopped_cluster(folder: Path) -> bool:
    """A restored cluster shut down cleanly: it has promoted (no recovery.signal) and has no
    server (no postmaster.pid)."""
    return (
        (folder / "PG_VERSION").exists()
        and not (folder / "recovery.signal").exists()
        and not (folder / "postmaster.pid").exists()
    )


# ---- 1. killed before its server starts, or after it stopped ----


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_restore_killed_while_unpacking_or_when_done_leaves_nothing_started(
    archive: Archive, sig: signal.Signals
) -> None:
    """Killed as the unpack begins, at two random moments inside it, and once the restore was
    reported: no server was started on the half-unpacked folder; a SIGTERM undoes the restore
    at once, a SIGKILL leaves it journalled and the next run undoes it, then restores exactly
    the rows at the target; a finished one it refuses holds exactly those rows."""
    db = archive.db
    rng = random.Random(20261206 + int(sig))
    shares = [rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.6)]  # of the files, early and late
    kills = [(RESTORING, 0)] + [(RESTORING, max(1, int(s * archive.files))) for s in shares]
    kills += [(RECOVERED, 0)]
    folders: list[Path] = []
    try:
        for step, files in kills:
            target_dir = new_target_dir()
            folders.append(target_dir.parent)
            proc = restore_cli(db, target_dir, free_port(), "--to-time", archive.to_time)
            ready = partial(holds_files, target_dir, files) if files else None
            said = stop_at(proc, sig, step, ready)
            found = files_in(target_dir) if target_dir.exists() else 0
            pending = [e.kind for e in journal.entries(db.repo)]
            assert servers_on(target_dir) == []
            if sig == signal.SIGKILL:
                assert proc.returncode == -signal.SIGKILL, said
            if step == RESTORING:
                # Inside the unpack: no server has run on these files, none is marked complete
                assert not any(STARTING in s for s in said), said
                assert found < archive.files, found
                assert not (target_dir / LOG).exists()
                assert not (target_dir / "postmaster.pid").exists()
                assert not (target_dir / "recovery.signal").exists()
                if sig == signal.SIGTERM:  # undone by the run itself, as it says
                    assert proc.returncode == 128 + signal.SIGTERM, said
                    assert any("interrupted by SIGTERM" in s for s in said), said
                    assert any("undoing the unfinished restore" in s for s in said), said
                    assert not target_dir.exists() and pending == []
                else:  # journalled: the next command undoes it
                    assert pending == ["pitr_restore"], pending
            else:
                assert any(RECOVERED in s for s in said), said
                assert is_stopped_cluster(target_dir), sorted(os.listdir(target_dir))
                assert pending in ([], ["pitr_restore"]), pending  # killed before its last word
            again = run_again(archive, target_dir)
            outcome = check_next(again, target_dir, archive.at_time)
            assert servers_on(target_dir) == []
            repository_clean(db.repo)
            if pending:
                assert "undid an interrupted point-in-time restore" in again.said, again.said
            if step == RESTORING:
                assert outcome == "restored", again.said  # never a half-unpacked folder left
            elif outcome == "refused":
                # The finished restore it refused to overwrite: exactly the rows at the target
                assert rows_of_stopped(db, target_dir) == archive.at_time
    finally:
        for folder in folders:
            for data in folder.iterdir():
                stop_servers(data)
            shutil.rmtree(folder, ignore_errors=True)


# ---- 2. killed while its server runs ----


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_restore_killed_while_its_server_runs_leaves_no_server_running(
    archive: Archive, sig: signal.Signals
) -> None:
    """Killed when the log says the server starts, while it replays (its postmaster.pid is
    there) and once it promoted (its log says so): every file was unpacked and checked before
    any server ran; a server the killed run left holds exactly the rows at the target; the next
    run refuses the folder; and no server of the killed run may be left running."""
    db = archive.db
    left_running: list[str] = []
    folders: list[Path] = []
    try:
        for moment in ("the server starts", "replaying", "promoted"):
            target_dir = new_target_dir()
            folders.append(target_dir.parent)
            port = free_port()
            ready = {
                "the server starts": None,
                "replaying": partial(server_up, target_dir),
                "promoted": partial(logged, target_dir / LOG, PROMOTED),
            }[moment]
            proc = restore_cli(db, target_dir, port, "--to-time", archive.to_time)
            said = stop_at(proc, sig, STARTING, ready)
            assert any(STARTING in s and "checked against its manifest" in s for s in said)
            if sig == signal.SIGKILL:
                assert proc.returncode == -signal.SIGKILL, said
            else:
                assert proc.returncode in (0, 128 + signal.SIGTERM), said
            running = settled_servers(target_dir)
            if running:  # the killed run's server: a complete restore, recovered to the target
                assert promoted_rows(target_dir, port) in (None, archive.at_time)
            again = run_again(archive, target_dir)
            outcome = check_next(again, target_dir, archive.at_time)
            repository_clean(db.repo)
            still = servers_on(target_dir)
            if still:
                left_running.append(
                    f"{sig.name} when {moment}: server pid {still} still runs on {target_dir} "
                    f"(the run said {said[-1]!r}; the next run: {outcome})"
                )
            stop_servers(target_dir)
    finally:
        for folder in folders:
            for data in folder.iterdir():
                stop_servers(data)
            shutil.rmtree(folder, ignore_errors=True)
    assert left_running == [], left_running


# ---- 3. two restores into one folder at once ----

SLOW_START = """#!/bin/sh
case "$*" in *"/base/base_"*) sleep 1.5 ;; esac
exec {zstd} "$@"
"""


def test_two_restores_into_one_folder_at_once(archive: Archive, tmp_path: Path) -> None:
    """Two runs started together into one new folder: one restores, the other is refused with
    a message naming the folder (or waits, then is refused), never blaming the backup; the
    folder holds one cluster with exactly the rows at the end of the archive. The base
    backup's stream starts 1.5 s late in both (a zstd on PATH that waits before it
    decompresses a base backup, as a cold disk or a copy location would), so both runs are
    past their look at the folder before either writes into it."""
    db = archive.db
    zstd = shutil.which("zstd")
    assert zstd is not None
    wrapper = tmp_path / "bin" / "zstd"
    wrapper.parent.mkdir()
    wrapper.write_text(SLOW_START.format(zstd=zstd))
    wrapper.chmod(stat.S_IRWXU)
    path = f"{wrapper.parent}:{os.environ['PATH']}"
    target_dir = new_target_dir()
    ports = [free_port()]
    while len(ports) < 2:
        ports += [p for p in [free_port()] if p not in ports]
    try:
        procs = [
            restore_cli(db, target_dir, port, "--to-end", "--keep-running", path=path)
            for port in ports
        ]
        said = ["\n".join(message(ln) for ln in "".join(p.communicate(timeout=300)).splitlines())
                for p in procs]  # fmt: skip
        codes = [p.returncode for p in procs]
        winners = [i for i, code in enumerate(codes) if code == 0]
        restored: Rows | str = "no run restored"
        if len(winners) == 1:
            try:
                restored = batches(target_dir, ports[winners[0]])
            except psycopg.Error as exc:
                restored = f"{files_in(target_dir)} files in {target_dir}, no server: {exc}"
        assert len(winners) == 1, (codes, said)
        (winner,) = winners
        # The run that said it restored left exactly the rows at the end of the archive.
        assert restored == archive.at_end, (restored, said)
        assert servers_on(target_dir) != []
        loser = said[1 - winner]
        assert str(target_dir) in loser, loser
        assert "damaged" not in loser and "no good copy" not in loser, loser
        assert "manifest" not in loser and "twice" not in loser, loser
        repository_clean(db.repo)
    finally:
        stop_servers(target_dir)
        shutil.rmtree(target_dir.parent, ignore_errors=True)


# ---- 4. last (it archives into the module's repository): --force after a killed restore ----


def test_the_run_after_a_killed_side_restore_undoes_it_and_restores_without_archiving(
    archive: Archive,
) -> None:
    """SIGKILL inside the unpack of a restore into a new folder, then the same restore again:
    it first undoes the killed one (journalled: no --force needed, nothing moved aside), then
    restores the right rows, and the side copy does not archive into the repository the source
    archives into (a later ``--latest`` would follow the copy's timeline)."""
    db = archive.db
    target_dir = new_target_dir()
    try:
        proc = restore_cli(db, target_dir, free_port(), "--to-time", archive.to_time)
        stop_at(proc, signal.SIGKILL, RESTORING, partial(holds_files, target_dir, 50))
        port = free_port()
        again = restore_cli(db, target_dir, port, "--to-time", archive.to_time, "--keep-running")
        out, err = again.communicate(timeout=300)
        said = "\n".join(message(line) for line in (out + err).splitlines())
        assert again.returncode == 0, said
        assert "undid an interrupted point-in-time restore" in said, said
        assert batches(target_dir, port) == archive.at_time
        with psycopg.connect(host=str(target_dir), port=port, user="postgres") as conn:
            assert conn.execute("SHOW archive_mode").fetchone() == ("off",)
        assert not [p for p in target_dir.parent.iterdir() if "safehold-before" in p.name]
        repository_clean(db.repo)
    finally:
        stop_servers(target_dir)
        shutil.rmtree(target_dir.parent, ignore_errors=True)
