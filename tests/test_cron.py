"""The seed's crontab line and ``schedule install``'s lines, run by a real ``cron`` daemon.

cron reads only /etc/crontab, /etc/cron.d and /var/spool/cron and cannot be pointed elsewhere,
so the daemon runs in a private mount namespace (``unshare --mount``) where those are empty
mounts of its own (and /run, for its pid file): the machine's crontabs are neither read nor
changed, and it all vanishes with the daemon, the one process this test starts and stops.
``crontab`` and ``safehold schedule install`` run in the same namespace (``nsenter``), so they
edit root's crontab there. Jobs run as cron runs them: in $HOME, with cron's few variables.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from safehold.sources.postgres import PgTarget

from .test_scripts import artifacts, make_app

PRIVATE_CRON = """\
set -e
mount -t tmpfs -o mode=0755 safehold-test /var/spool/cron
mkdir -m 1730 /var/spool/cron/crontabs
chgrp crontab /var/spool/cron/crontabs
mount --bind "$1" /etc/cron.d
mount --bind "$2" /etc/crontab
mount -t tmpfs -o mode=0755 safehold-test /run
exec cron -f -L 15
"""
# A job starts at the next minute; a backup then takes seconds.
JOB_WAIT_S = 150.0

InNamespace = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def private_cron(tmp_path: Path) -> Iterator[InNamespace]:
    """A cron daemon with its own empty crontabs; runs commands in its mount namespace."""
    missing = [tool for tool in ("cron", "crontab", "unshare", "nsenter") if not shutil.which(tool)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run scripts/install-deps.sh")
    if os.geteuid() != 0:
        pytest.fail("a private cron daemon needs root (a mount namespace of its own)")
    empty = tmp_path / "cron-private"
    (empty / "cron.d").mkdir(parents=True)
    (empty / "crontab").write_text("")
    output = empty / "cron.out"
    with output.open("w") as out:
        unshare = ("unshare", "--mount", "--propagation", "private", "--")
        mounts = (str(empty / "cron.d"), str(empty / "crontab"))
        daemon = subprocess.Popen(
            [*unshare, "sh", "-c", PRIVATE_CRON, "sh", *mounts],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def run(
        *argv: str, stdin: str | None = None, wd: Path = tmp_path, **env: str
    ) -> subprocess.CompletedProcess[str]:
        # Entering a mount namespace resets the working folder to /: --wd gives it back.
        return subprocess.run(
            ["nsenter", "-t", str(daemon.pid), "-m", f"--wd={wd}", "--", *argv],
            input=stdin,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    try:
        deadline = time.monotonic() + 10
        while _comm(daemon.pid) != "cron":  # sh has done the mounts and exec'd cron
            assert daemon.poll() is None, f"cron did not start: {output.read_text()}"
            assert time.monotonic() < deadline, "cron did not start in 10 s"
            time.sleep(0.05)
        # cron rereads the crontabs when their folder's mtime, in whole seconds, differs from
        # what it read at start: a crontab installed within that same second is never read.
        time.sleep(1.5)
        yield run
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=10)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def wait_for(what: str, check: Callable[[], bool], log: Path) -> None:
    deadline = time.monotonic() + JOB_WAIT_S
    while not check():
        if time.monotonic() > deadline:
            text = log.read_text() if log.exists() else "(no log)"
            raise AssertionError(f"cron did not {what} in {JOB_WAIT_S:.0f} s; the log:\n{text}")
        time.sleep(1)


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    return done


@pytest.mark.slow
def test_seed_line_then_installed_schedule_under_a_real_cron_daemon(
    db: PgTarget, tmp_path: Path, private_cron: InNamespace
) -> None:
    log = tmp_path / "log" / "backup.log"
    log.parent.mkdir(mode=0o700)
    app = make_app(
        tmp_path,
        db,
        f'log_file = "{log}"\n[schedule]\ndatabase = "* * * * *"\nfull = "off"\ndrill = "off"\n',
    )
    backups = app / "backups"
    seed = f"* * * * * {app}/scripts/backup.sh >> {log} 2>&1"  # the seed's line, every minute

    # 1. The seed's line, exactly as the seed writes it (log_file the redirect's file).
    ok(private_cron("crontab", "-", stdin=seed + "\n"))
    wait_for("run the seed's line", lambda: len(artifacts(backups)) == 1 and _printed(log) > 0, log)
    (first,) = artifacts(backups)

    # 2. schedule install finds that line: says so, then replaces it when asked.
    safehold = str(app / ".venv" / "bin" / "safehold")
    conf = str(app / "safehold.toml")
    install = (safehold, "schedule", "install", "--config", conf)  # as run in the app folder
    dry = ok(private_cron(*install, "--dry-run", wd=app))
    assert "left as it is: " + seed in dry.stderr, dry.stderr
    done = ok(private_cron(*install, "--replace-seed", wd=app, PGPASSWORD="x"))
    assert "commented out the crontab's own backup line" in done.stderr, done.stderr
    assert "WARNING" not in done.stderr  # the password is in a file: cron needs no PGPASSWORD
    crontab = ok(private_cron("crontab", "-l")).stdout
    assert crontab.splitlines()[0] == "#safehold-off: " + seed
    assert crontab.splitlines()[1].endswith("# safehold:database")

    # 3. The installed job runs in cron: backup, then prune, into the same log file.
    wait_for("run the installed job", lambda: " prune: " in log.read_text(), log)
    (second,) = artifacts(backups)  # the day's newer backup: prune removed the first one
    assert second > first
    text = log.read_text()
    # Each run writes each line once, although log_file is its stderr's target too. (The dry
    # run and the install write the same notes, at times in the same second: two commands.)
    seed_run = text.split("warning: the crontab already runs", 1)[0].splitlines()
    job_run = text.split("schedule: installed", 1)[1].splitlines()[1:]
    for lines in (seed_run, job_run):
        assert lines and len(lines) == len(set(lines)), f"a line written twice:\n{text}"
    assert _printed(log) == 1, f"the seed's line ran again after it was replaced:\n{text}"
    named = re.findall(r"(\S*)backups/db_backup_\d", text)
    assert named and set(named) == {f"{app}/"}, f"a relative path in the log:\n{text}"
    print(f"--- crontab (root, private cron) ---\n{crontab}--- {log} ---\n{text}")


def _printed(log: Path) -> int:
    """How many runs of the seed's line finished: its stdout, the backup's path, is in the log."""
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if re.fullmatch(r"/\S+\.sql", line))
