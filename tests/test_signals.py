"""SIGTERM and SIGINT end every command cleanly (containers started again, lock released, no
partial file, no staging database, no child left running); after a SIGKILL the next command
starts the containers the killed run had stopped, and says so."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from docker.models.images import Image

from safehold import catalog
from safehold.operations import journal
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.docker.engine import STOP_LABEL
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import CliRunner, databases, execute, fingerprint, seed_env

# Takes a second to stop (the trap), so a stop is a real window; exits cleanly on SIGTERM.
APP = "trap 'sleep 1; exit 0' TERM; while true; do date >> /data/log; sleep 0.1; done"
BIG_FILES = 16  # x 8 MiB of random bytes: the copy takes a while after the stop


@dataclass
class App:
    container: Container
    volume: str
    env: dict[str, str]


@dataclass
class Run:
    """A safehold command in a child process whose JSON log lines are watched as they come."""

    proc: subprocess.Popen[str]
    lines: list[dict[str, object]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    seen: threading.Condition = field(default_factory=threading.Condition)
    watcher: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.watcher = threading.Thread(target=self.watch, daemon=True)
        self.watcher.start()

    def watch(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.seen:
                self.raw.append(line)
                if line.startswith("{"):
                    self.lines.append(json.loads(line))
                self.seen.notify_all()

    def wait_for(self, event: str, text: str, timeout: float = 120) -> None:
        def found() -> bool:
            return any(
                e.get("event") == event and text in str(e.get("message")) for e in self.lines
            )

        with self.seen:
            assert self.seen.wait_for(lambda: found() or self.proc.poll() is not None, timeout), (
                "".join(self.raw)
            )
            assert found(), f"{event} {text!r} never came:\n{''.join(self.raw)}"

    def messages(self) -> list[str]:
        """The log messages so far, up to " for the ..." / " ... to /path" cut off where
        they name a set id or a path: enough to find an event and its order."""
        with self.seen:
            lines = list(self.lines)
        out = []
        for line in lines:
            text = str(line.get("message"))
            if text.startswith("backing up "):
                text = "backing up " + text[text.index("(volume") :].split(")")[0] + ")"
            elif " for the full-system backup" in text:
                text = text.split(" 20")[0]
            out.append(text)
        return out

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()  # (stderr is the watcher's: not read here)
        self.proc.wait(timeout=timeout)
        self.watcher.join(timeout=timeout)
        return self.proc.returncode, stdout, "".join(self.raw)


def start_run(env: dict[str, str], *args: str) -> Run:
    proc = subprocess.Popen(
        [sys.executable, "-m", "safehold", *args, "--log-format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Run(proc)


@pytest.fixture
def app(
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
) -> Iterator[App]:
    name = f"sig-{secrets.token_hex(3)}"
    volume = client.volumes.create(name=f"{name}_data")
    root = Path(volume.attrs["Mountpoint"])
    for number in range(BIG_FILES):
        (root / f"blob-{number}.bin").write_bytes(os.urandom(8 << 20))
    container = client.containers.run(
        image,
        ["sh", "-c", APP],
        name=f"{name}-web",
        labels={STOP_LABEL: "true"},
        volumes={volume.name: {"bind": "/data"}},
        network_mode="none",
        detach=True,
    )
    env = {**seed_env(db, repo.root), "DOCKER_HOST": engine.base_url}
    try:
        yield App(container, str(volume.name), env)
    finally:
        container.remove(force=True)
        volume.remove(force=True)


def state(container: Container) -> tuple[str, str]:
    container.reload()
    return str(container.status), str(container.attrs["State"]["StartedAt"])


def kill_while_stopped(app: App, signum: int) -> Run:
    """Run backup --all and send ``signum`` while the labelled container is stopped: the copy
    starts once the stop is done (the log says so in that order)."""
    run = start_run(app.env, "backup", "--all", "--volume", app.volume, "--json")
    run.wait_for("backup", f"(volume {app.volume})")
    run.proc.send_signal(signum)
    messages = run.messages()
    stopping = messages.index(f"stopping {app.container.name} for the full-system backup")
    assert stopping < messages.index(f"backing up (volume {app.volume})")
    return run


def leftovers(repo: LocalStorage) -> list[str]:
    """Files in the repository that are not committed backups (partial files, orphans)."""
    known = {r.name for r in catalog.scan(repo) if r.status == "ok"}
    return sorted(
        p.name
        for p in repo.root.iterdir()
        if p.is_file() and not p.is_symlink() and p.name not in known
    )


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_containers_are_stopped_ends_the_backup_cleanly(
    app: App, repo: LocalStorage, run_cli: CliRunner, signum: int, code: int
) -> None:
    _, started_before = state(app.container)

    run = kill_while_stopped(app, signum)
    returncode, stdout, stderr = run.finish()

    assert returncode == code, stderr
    name = signal.Signals(signum).name
    last = stderr.strip().splitlines()[-1]
    assert f"interrupted by {name}" in last and "stopped cleanly" in last, stderr
    assert "Traceback" not in stderr
    assert json.loads(stdout)["type"] == "Interrupted"
    status, started_after = state(app.container)
    assert status == "running" and started_after != started_before  # stopped, then started
    # A copy is kept only when it was done before the container was started again.
    messages = run.messages()
    restarted = messages.index(f"started {app.container.name} again")
    for record in catalog.scan(repo):
        if record.kind == "volume":
            done = [i for i, m in enumerate(messages) if m.startswith(f"backup {record.name} done")]
            assert done and done[0] < restarted, stderr
    assert journal.entries(repo) == []  # crossed out: nothing for the next run to do
    assert leftovers(repo) == []
    # The lock is free: a backup that may not wait for it succeeds at once.
    no_wait = {**app.env, "SAFEHOLD_LOCK_TIMEOUT": "0"}
    again = run_cli("backup", "--all", "--volume", app.volume, env=no_wait)
    assert again.returncode == 0, again.stderr
    assert "started again containers" not in again.stderr
    assert state(app.container)[0] == "running"


def test_after_a_sigkill_the_next_command_starts_the_containers_and_says_so(
    app: App, repo: LocalStorage, run_cli: CliRunner
) -> None:
    returncode, _, stderr = kill_while_stopped(app, signal.SIGKILL).finish()

    assert returncode == -signal.SIGKILL, stderr
    time.sleep(1.0)
    assert state(app.container)[0] == "exited"  # nothing started it: the run was killed
    (entry,) = journal.entries(repo)
    assert entry.kind == "stopped_containers"
    assert [c["name"] for c in entry.data["containers"]] == [app.container.name]

    listed = run_cli("list", env=app.env)

    assert listed.returncode == 0, listed.stderr
    said = f"started again containers {app.container.name} that it had stopped"
    assert said in listed.stderr and f"pid {entry.pid}" in listed.stderr
    assert state(app.container)[0] == "running"
    assert journal.entries(repo) == []
    assert said not in run_cli("list", env=app.env).stderr  # said once, not every time


SLOW_INDEX = """
CREATE TABLE app.slow_index (id int);
INSERT INTO app.slow_index VALUES (1);
CREATE FUNCTION app.slow_key(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    -- Slow only where a restore builds it: pg_restore is then busy for a minute.
    IF pg_catalog.current_database() LIKE '%safehold_staging%' THEN
        PERFORM pg_catalog.pg_sleep(60);
    END IF;
    RETURN v;
END $$;
CREATE INDEX slow_index_key ON app.slow_index (app.slow_key(id));
"""


def children_named(pid: int, name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if comm == name and parent == pid:
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_sigterm_during_pg_restore_leaves_the_live_database_and_no_staging(
    db: PgTarget, repo: LocalStorage, run_cli: CliRunner
) -> None:
    execute(db, SLOW_INDEX)
    made = run_cli("backup")
    assert made.returncode == 0, made.stderr
    before = fingerprint(db)
    run = start_run(seed_env(db, repo.root), "restore", "--database", "latest")
    run.wait_for("restore", "pg_restore")
    restorers: set[int] = set()  # (a pg_restore --list may come first)

    def sleeping_in_staging() -> bool:
        restorers.update(children_named(run.proc.pid, "pg_restore"))
        with connect(db, "postgres", autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname LIKE '%safehold_staging%' AND wait_event = 'PgSleep'"
            ).fetchone()
        return bool(row and row[0])

    wait_until(sleeping_in_staging, "pg_restore never reached the slow index")
    assert any(running(pid) for pid in restorers)
    run.proc.send_signal(signal.SIGTERM)
    returncode, _, stderr = run.finish()

    assert returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr and "pg_restore stopped" in stderr, stderr
    assert "Traceback" not in stderr
    assert not any(running(pid) for pid in restorers)
    assert not [n for n in databases(db) if "safehold_staging" in n]
    assert fingerprint(db) == before
    assert journal.entries(repo) == []


def test_signals_during_a_stop_let_it_finish_and_start_the_container_again(
    app: App, repo: LocalStorage
) -> None:
    _, started_before = state(app.container)
    run = start_run(app.env, "backup", "--all", "--volume", app.volume)
    run.wait_for("containers", f"stopping {app.container.name}")  # the stop takes a second

    run.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    run.proc.send_signal(signal.SIGTERM)  # a second one: noted, the clean-up goes on
    returncode, _, stderr = run.finish()

    assert returncode == 143, stderr
    assert "SIGTERM again: still cleaning up" in stderr
    assert f"started {app.container.name} again" in stderr
    status, started_after = state(app.container)
    assert status == "running" and started_after != started_before
    assert journal.entries(repo) == [] and leftovers(repo) == []
