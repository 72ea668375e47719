"""Restores killed where the other crash tests do not reach (issue 12): the pre-restore safety
copy of a volume, and ``safehold restore --all``.

The real commands run in child processes and are killed (SIGKILL, or SIGTERM) when their log
shows a step, or at random moments. The next command (``safehold list`` or ``status``) must
say what it finished or rolled back; then every target holds exactly its old or its restored
content (the database by a fingerprint of its tables, each volume by its whole tree), the
database accepts connections, the containers the run stopped run again, and nothing is left:
no staging database, no staging or aside folder, no journal entry, no unfinished file in the
repository, nothing half-written listed. A later restore then brings back exactly the backup.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from docker.models.images import Image
from docker.models.volumes import Volume

from safehold import catalog, naming
from safehold.operations import journal
from safehold.operations.volumes.docker import backup_volume
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import CliRunner, Fingerprint, execute, fingerprint, seed_env
from .test_journal import as_written_by, dead_pid
from .test_system_restore import PROJECT_LABEL, free_port, status_of

SAFETY_STEP = "safety backup of the current content of volume"
# Incompressible, so writing the safety copy takes long enough to be hit in the middle.
BLOB_BYTES = 12 << 20


def message(line: str) -> str:
    try:
        return str(json.loads(line).get("message", line))
    except ValueError:
        return line


Tree = dict[str, tuple[object, ...]]


def tree(root: Path) -> Tree:
    """Relative path -> (type, mode, owner, group, bytes or link target, mtime of non-folders).
    The root's own mtime is left out: the swap renames entries in and out of it."""
    found: Tree = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            st = path.lstat()
            body: object = None
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = path.read_bytes()
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            found[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, body,
                mtime,
            )  # fmt: skip
    root_st = root.stat()
    found["."] = (stat.S_IMODE(root_st.st_mode), root_st.st_uid, root_st.st_gid)
    return found


def leftovers(root: Path) -> list[str]:
    """Staging or aside folders, inside the volume's folder or beside it."""
    return sorted(p.name for d in (root, root.parent) for p in d.iterdir() if "safehold-" in p.name)


def fill(root: Path, flavour: str, blobs: int = 0) -> None:
    """Replace ``root``'s content with a small tree of this flavour: files (some names shared
    by both flavours, with different content), a nested folder, a symlink, and ``blobs``
    random files of BLOB_BYTES."""
    for entry in list(root.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (root / "www").mkdir()
    (root / "www" / "health.txt").write_text(f"{flavour}\n")
    for i in range(40):
        name = f"shared-{i}.txt" if i % 2 else f"{flavour}-{i}.txt"
        (root / name).write_text(f"{flavour} {i}\n" * (1 + i % 7))
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "note.md").write_text(f"{flavour} note\n")
    os.symlink("deep/er/note.md", root / "link")
    rng = random.Random(flavour)
    for i in range(blobs):
        (root / f"blob-{i}.bin").write_bytes(rng.randbytes(BLOB_BYTES))
    for folder, _dirs, files in os.walk(root):  # fixed mtimes: a refill is the same tree
        for name in files:
            os.utime(Path(folder) / name, (1_600_000_000, 1_600_000_000), follow_symlinks=False)


def unfinished(repo: LocalStorage) -> list[str]:
    """Temp files of unfinished writes, anywhere in the repository."""
    return sorted(
        str(path.relative_to(repo.root))
        for path in repo.root.rglob("*")
        if ".partial-" in path.name
    )


def latest_links(repo: LocalStorage) -> dict[str, str]:
    return {p.name: os.readlink(p) for p in repo.root.iterdir() if p.is_symlink()}


def said_lines(stderr: str) -> list[str]:
    """What a command said about interrupted runs."""
    return [message(line) for line in stderr.splitlines() if "interrupted" in message(line)]


@dataclass
class Run:
    """A safehold command whose JSON log is read line by line as it comes."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    def until(self, wanted: str) -> bool:
        """Read the log up to the first line containing ``wanted``; whether it came."""
        assert self.proc.stderr is not None
        while line := self.proc.stderr.readline():
            self.lines.append(message(line))
            if wanted in self.lines[-1]:
                return True
        return False

    def signal(self, signum: int, delay: float = 0.0) -> None:
        if delay:
            time.sleep(delay)
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        assert self.proc.stderr is not None and self.proc.stdout is not None
        # Through the same reader as ``until``: it may hold lines read ahead from the pipe.
        self.lines += [message(line) for line in self.proc.stderr]
        out = self.proc.stdout.read()
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, out, "\n".join(self.lines)


def start(env: dict[str, str], *args: str) -> Run:
    proc = subprocess.Popen(
        [sys.executable, "-m", "safehold", *args, "--log-format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Run(proc)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args, "--log-format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


# ---- 1. the safety copy of a volume ----


def test_a_restore_killed_while_writing_the_safety_copy_leaves_the_volume_and_no_partial(
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    volume: Volume,
) -> None:
    env = {**seed_env(db, repo.root), "DOCKER_HOST": engine.base_url}
    name = str(volume.name)
    root = Path(volume.attrs["Mountpoint"])
    fill(root, "new")
    new, new_archive = tree(root), backup_volume(client, name, repo).artifact
    fill(root, "old", blobs=2)
    old = tree(root)
    links = latest_links(repo)
    restore = ("restore", "--volume", f"{name}:{new_archive}")

    # One run to completion: how long writing the safety copy takes.
    first = start(env, *restore)
    assert first.until("backing up ")
    began = time.monotonic()
    assert first.until("backup safety_volume_")
    write_s = time.monotonic() - began
    code, _out, log = first.finish()
    assert code == 0, log
    assert tree(root) == new
    fill(root, "old", blobs=2)
    assert tree(root) == old
    safety_before = {r.name for r in catalog.scan(repo) if r.kind == "safety"}

    rng = random.Random(7)
    points = [(signal.SIGKILL, SAFETY_STEP, 0.0), (signal.SIGKILL, "backing up ", 0.0)]
    points += [(signal.SIGKILL, "backing up ", rng.uniform(0, write_s)) for _ in range(6)]
    points += [(signal.SIGTERM, "backing up ", rng.uniform(0, write_s)) for _ in range(2)]
    seen: list[str] = []
    for signum, step, delay in points:
        proc = start(env, *restore)
        assert proc.until(step), proc.lines
        proc.signal(signum, delay)
        code, _out, log = proc.finish()
        left = unfinished(repo)
        pending = {e.kind for e in journal.entries(repo)}
        if signum == signal.SIGTERM:
            assert code == 143, log
            assert "interrupted by SIGTERM" in log and "Traceback" not in log, log
            assert left == [] and pending == set(), (left, pending)  # cleaned by the run itself
        else:
            assert code == -signal.SIGKILL, log

        # The next command: `list` or `list --json`, in turns.
        as_json = len(seen) % 2 == 1
        listed = run(env, "list", *(["--json"] if as_json else []))

        assert listed.returncode == 0, listed.stderr
        said = said_lines(listed.stderr)
        assert tree(root) == old, "the safety copy's kill changed the volume"
        assert unfinished(repo) == [], (left, said)
        assert journal.entries(repo) == [], said
        assert leftovers(root) == []
        records = catalog.scan(repo)
        assert all(r.status == "ok" for r in records), records  # nothing half-written listed
        names = {r.name for r in records}
        assert all(p.name in names or p.name.startswith(".")
                   for p in repo.root.iterdir() if p.is_file() and not p.is_symlink()
                   ), "a file in the repository that is no backup"  # fmt: skip
        if as_json:
            assert {r["name"] for r in json.loads(listed.stdout)} == names
        assert not any(part.split("/")[-1] in listed.stdout for part in left)
        assert latest_links(repo) == links
        safety_now = {r.name for r in records if r.kind == "safety"}
        # A kill can land while a journal entry or the run's record is being written: those
        # temp files go too (a torn entry is said; a torn record only at debug level).
        torn = [part for part in left if part.startswith((".safehold/journal/", ".safehold/runs/"))]
        copy_parts = [part for part in left if part not in torn]
        if any(part.startswith(".safehold/journal/") for part in torn):
            assert "a journal entry a killed run was writing" in listed.stderr, listed.stderr
        if copy_parts:
            assert any("removed the unfinished safety copy" in s for s in said), (left, said)
            assert all(part.split("/")[-1] in " ".join(said) for part in copy_parts), (left, said)
        outcome = (
            "partial removed"
            if copy_parts
            else "copy kept"
            if safety_now - safety_before
            else "nothing written"
        )
        safety_before = safety_now
        seen.append(f"{signal.Signals(signum).name} at {step!r}+{delay:.3f}s: {outcome}; "
                    f"said: {' | '.join(s.split('): ', 1)[-1] for s in said) or '-'}")  # fmt: skip
    print("\n".join(seen))  # shown with -s
    assert any("partial removed" in s and "SIGKILL" in s for s in seen), seen

    # A later restore works, and no safety copy became what "latest" means.
    assert catalog.resolve(repo, "latest", "volume", name).name == new_archive
    done = run(env, "restore", "--volume", f"{name}:latest")
    assert done.returncode == 0, done.stderr
    assert tree(root) == new
    assert latest_links(repo) == links
    assert unfinished(repo) == [] and journal.entries(repo) == []


# ---- 2. restore --all: the sample application ----


@dataclass
class App:
    """A database, two volumes and two containers using them (one per volume), of one
    compose project; the web one answers 200 while its volume holds www/health.txt."""

    db: PgTarget
    repo: LocalStorage
    client: docker.DockerClient
    env: dict[str, str]
    project: str
    volumes: list[str]
    roots: list[Path]
    containers: list[Container]
    url: str
    set_id: str = ""
    new_db: Fingerprint | None = None
    new_trees: list[Tree] = field(default_factory=list)
    old_trees: list[Tree] = field(default_factory=list)

    def restore_args(self) -> tuple[str, ...]:
        return (
            "restore", "--all", "--set", self.set_id, "--project", self.project,
            "--post-restore-cmd", "sleep 0.2", "--health-url", self.url,
            "--health-timeout", "30",
        )  # fmt: skip

    def reset(self, run_no: int) -> Fingerprint:
        """The content before a restore: a row the backup does not have, old trees."""
        execute(self.db, f"INSERT INTO public.audit_log (action) VALUES ('before run {run_no}')")
        for root in self.roots:
            fill(root, "old")
        return fingerprint(self.db)

    def states(self) -> dict[str, str]:
        found = {}
        for container in self.containers:
            container.reload()
            found[str(container.name)] = str(container.status)
        return found


@pytest.fixture
def app(
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
) -> Iterator[App]:
    project = f"crash-{secrets.token_hex(3)}"
    volumes = [
        client.volumes.create(name=f"{project}_{part}", labels={PROJECT_LABEL: project})
        for part in ("data", "files")
    ]
    roots = [Path(v.attrs["Mountpoint"]) for v in volumes]
    for root in roots:
        fill(root, "new")
    port = free_port()
    # The worker takes a second to stop: a stop is a window in which the run can be killed.
    commands = [
        f"trap 'kill $!; exit 0' TERM; httpd -f -p 127.0.0.1:{port} -h /data/www & wait",
        "trap 'sleep 1; exit 0' TERM; while true; do sleep 0.2; done",
    ]
    containers = [
        client.containers.run(
            image,
            ["sh", "-c", command],
            name=f"{project}-{role}",
            labels={PROJECT_LABEL: project},
            volumes={str(volume.name): {"bind": "/data"}},
            network_mode="host" if role == "web" else "none",
            detach=True,
        )
        for role, command, volume in zip(("web", "worker"), commands, volumes, strict=True)
    ]
    env = {**seed_env(db, repo.root), "DOCKER_HOST": engine.base_url}
    url = f"http://127.0.0.1:{port}/health.txt"
    made = App(db, repo, client, env, project, [str(v.name) for v in volumes], roots,
               containers, url)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while status_of(url) != 200:
            assert time.monotonic() < deadline, containers[0].logs()
            time.sleep(0.2)
        backup = run(env, "backup", "--all", *[a for v in made.volumes for a in ("--volume", v)],
                     "--json")  # fmt: skip
        assert backup.returncode == 0, backup.stderr
        made.set_id = json.loads(backup.stdout)["id"]
        made.new_db = fingerprint(db)
        made.new_trees = [tree(root) for root in roots]
        for root in roots:
            fill(root, "old")
        made.old_trees = [tree(root) for root in roots]
        yield made
    finally:
        for container in containers:
            container.remove(force=True)
        for volume in volumes:
            volume.remove(force=True)


def database_state(db: PgTarget) -> dict[str, bool]:
    """Every database named after ``db``: whether it accepts connections."""
    with connect(db, "postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname, datallowconn FROM pg_database WHERE datname LIKE %s",
            (db.dbname + "%",),
        ).fetchall()
    return {str(name): bool(allowed) for name, allowed in rows}


@dataclass
class Outcome:
    point: str
    signal: str
    db: str
    volumes: list[str]
    containers: str
    said: list[str]


def settle(
    app: App, old_db: Fingerprint, point: str, signum: int, code: int, lines: list[str]
) -> Outcome:
    """After a kill: the next command, then what every target holds."""
    pending = journal.entries(app.repo)
    stopped = {n for n, s in app.states().items() if s != "running"}
    recorded = {c["name"] for e in pending if e.kind == "stopped_containers"
                for c in e.data["containers"]}  # fmt: skip
    begun = [m[1] for line in lines if (m := re.match(r"(step \d+/\d+): ", line))]
    at = begun[-1] if begun else None  # "step N/10", the last one started
    if signum == signal.SIGTERM:
        assert code == 143, point
        assert pending == [] and stopped == set(), (pending, stopped)  # the run cleaned up
        assert at is None or any(f"whole-system restore stopped at {at} (" in x for x in lines)
    else:
        assert code == -signal.SIGKILL, point
        assert stopped <= recorded, f"{stopped} were stopped but nobody will start them"
    command = "status" if len(point) % 2 else "list"  # either one recovers first
    after = run(app.env, command)
    assert after.returncode in (0, 1, 2) and "Traceback" not in after.stderr, after.stderr
    said = said_lines(after.stderr)

    # Containers: running again, and the ones the run had stopped were named as started.
    # (Checked again after a stop's worth of time: a stop sent before the kill completes in
    # the engine after the run is gone.)
    time.sleep(1.3 if at == "step 2/10" else 0.0)
    started = [s for s in said if "started again containers" in s or "stopped run again" in s]
    # Started last: only once the database and volumes they use are settled.
    assert not started or said.index(started[0]) == len(said) - 1, (point, said)
    states = app.states()
    assert set(states.values()) == {"running"}, (point, states, said)
    if recorded:
        assert len(started) == 1 and all(n in started[0] for n in stopped), (stopped, said)
        assert "started again" in started[0] or not stopped, said
    else:
        assert started == [], said
    if signum == signal.SIGTERM:
        containers = "started by the run itself"
    elif recorded:
        containers = f"{len(stopped)} stopped at the kill, started by the next command"
        exited = sorted(n for n, s in states.items() if s != "running")
        containers += f" ({', '.join(exited)} had exited)" if exited else ""
    else:
        containers = "never stopped"

    # The database: open, no staging, exactly old or new.
    state = database_state(app.db)
    assert all(state.values()), state
    assert not [n for n in state if "_safehold_staging_" in n], state
    now = fingerprint(app.db)
    assert now in (old_db, app.new_db), "the database holds neither its old nor the new content"
    # Each volume: exactly old or new, nothing left beside it.
    volumes = []
    for root, old, new in zip(app.roots, app.old_trees, app.new_trees, strict=True):
        held = tree(root)
        assert held in (old, new), f"{root} holds a mix of the old and the new content"
        assert leftovers(root) == []
        volumes.append("new" if held == new else "old")
    assert journal.entries(app.repo) == []
    assert unfinished(app.repo) == [], said
    if not pending:
        assert said == [], said
    elif signum == signal.SIGKILL and at is not None:
        # The journal names the step to continue from: the last one the log showed, or the next
        # one when the kill landed between journalling it and announcing it.
        number, total = (int(n) for n in at.removeprefix("step ").split("/"))
        wheres = [f"the whole-system restore of set {app.set_id} stopped at step {n}/{total} ("
                  for n in (number, number + 1)]  # fmt: skip
        (line,) = [s for s in said if any(where in s for where in wheres)]
        resumed = re.search(rf"--from-step ({number}|{number + 1})\b", line)
        assert resumed or "nothing to restore again" in line, line
    short = [s.split("): ", 1)[-1][:100] for s in said]
    return Outcome(point, signal.Signals(signum).name, "new" if now == app.new_db else "old",
                   volumes, containers, short)  # fmt: skip


# Where in a run to kill, besides each "step N/M:" line: inside the steps.
INNER = (
    "stopping {web}",
    "stopping {worker}",
    "create staging database",
    "pg_restore --jobs",
    "swapping",
    "renamed",
    SAFETY_STEP + " {data}",
    "swap: moving the current content",
    "swap: moving the restored content",
    SAFETY_STEP + " {files}",
    "started {worker} again",
)


def test_restore_all_killed_anywhere_leaves_every_target_old_or_new(app: App) -> None:
    # One run to completion: the steps it logs, and how long it takes.
    app.reset(0)
    reference = start(app.env, *app.restore_args())
    code, _out, log = reference.finish()
    assert code == 0, log
    total_s = time.monotonic() - reference.began
    steps = [line.split(":")[0] + ":" for line in reference.lines if line.startswith("step ")
             and ":" in line and " done in " not in line]  # fmt: skip
    assert len(steps) == 10, steps  # verify stop roles database volume volume post start ...
    names = {"web": str(app.containers[0].name), "worker": str(app.containers[1].name),
             "data": app.volumes[0], "files": app.volumes[1]}  # fmt: skip
    inner = [text.format(**names) for text in INNER]
    for text in inner:
        assert any(text in line for line in reference.lines), (text, reference.lines)

    rng = random.Random(12)
    points: list[tuple[int, str, float]] = [(signal.SIGKILL, s, 0.0) for s in steps + inner]
    points += [(signal.SIGKILL, "whole-system restore of", rng.uniform(0.3, total_s))
               for _ in range(5)]  # fmt: skip
    points += [
        (signal.SIGTERM, "stopping " + names["worker"], 0.0),
        (signal.SIGTERM, "pg_restore --jobs", 0.0),
        (signal.SIGTERM, SAFETY_STEP + " " + names["files"], 0.0),
        (signal.SIGTERM, "whole-system restore of", rng.uniform(0.3, total_s)),
    ]
    outcomes: list[Outcome] = []
    for number, (signum, step, delay) in enumerate(points, 1):
        old_db = app.reset(number)
        proc = start(app.env, *app.restore_args())
        reached = proc.until(step)
        assert reached, (step, proc.lines)
        proc.signal(signum, delay)
        code, _out, log = proc.finish()
        if code == 0:  # a random delay past the end: nothing to check but the end state
            assert fingerprint(app.db) == app.new_db
            continue
        point = f"{step!r}" + (f" +{delay:.2f}s" if delay else "")
        outcomes.append(settle(app, old_db, point, signum, code, proc.lines))

    table = [f"{o.point[:60]:<62} {o.signal:<8} db={o.db:<4} vols={'/'.join(o.volumes):<8} "
             f"{o.containers}; said: {' | '.join(o.said) or '-'}" for o in outcomes]  # fmt: skip
    print("\n" + "\n".join(table))  # shown with -s
    # The kills landed all over the run: before anything changed, between the steps, after.
    assert {o.db for o in outcomes} == {"old", "new"}
    assert {"/".join(o.volumes) for o in outcomes} >= {"old/old", "new/old", "new/new"}

    # A second restore --all completes, and the whole system is the backup.
    again = run(app.env, *app.restore_args())
    assert again.returncode == 0, again.stderr
    assert fingerprint(app.db) == app.new_db
    assert [tree(root) for root in app.roots] == app.new_trees
    assert set(app.states().values()) == {"running"}
    assert status_of(app.url) == 200
    assert journal.entries(app.repo) == [] and unfinished(app.repo) == []


# ---- 3. two restore --all at once ----


def test_two_restores_all_at_once_take_turns(app: App) -> None:
    old_db = app.reset(1)
    first = start(app.env, *app.restore_args())
    assert first.until("step 2/")  # planned, and stopping the containers
    os.kill(first.proc.pid, signal.SIGSTOP)
    try:
        refused = run(app.env, *app.restore_args(), "--lock-timeout", "1")
        assert refused.returncode == 8, refused.stderr  # LockBusy
        assert f"pid {first.proc.pid}" in refused.stderr, refused.stderr
        assert "whole-system restore" in refused.stderr, refused.stderr
        assert fingerprint(app.db) == old_db  # the refused one changed nothing
        waiting = start(app.env, *app.restore_args())
        time.sleep(2.0)
        assert waiting.proc.poll() is None
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    waited: list[str] = []
    reader = threading.Thread(target=lambda: waited.append(waiting.finish()[2]))
    reader.start()
    code, _out, log = first.finish()
    assert code == 0, log
    reader.join(timeout=180)
    assert waiting.proc.returncode == 0, waited
    # It said whom it waited for, and planned only after the first run ended: it stopped and
    # started the containers too.
    assert (
        f"waiting up to 300s: another whole-system restore from {app.repo.root} is "
        f"running: pid {first.proc.pid} (safehold restore --all)" in waited[0]
    ), waited
    assert all(f"stopping {c.name}" in waited[0] for c in app.containers), waited

    assert fingerprint(app.db) == app.new_db
    assert [tree(root) for root in app.roots] == app.new_trees
    assert set(app.states().values()) == {"running"}
    assert status_of(app.url) == 200
    state = database_state(app.db)
    assert all(state.values()) and not [n for n in state if "_safehold_staging_" in n]
    assert journal.entries(app.repo) == [] and unfinished(app.repo) == []
    for root in app.roots:
        assert leftovers(root) == []


def test_the_next_command_removes_a_safety_copy_that_was_never_committed(
    run_cli: CliRunner, repo: LocalStorage
) -> None:
    """The moments a random kill rarely hits: the artifact renamed into place but its manifest
    (the commit point) not written yet, the manifest's own temp file, a latest link's."""
    pid, started = dead_pid()
    artifact = "safety_volume_shop_data_20250102_030405.tar.gz"
    data = {"artifact": artifact, "what": "safety copy of volume shop_data"}
    entry = journal.record(repo, "unfinished_artifact", data, "safehold restore")
    as_written_by(repo, entry, pid=pid, started=started)
    made = [
        repo.path(artifact),
        repo.path(naming.manifest_key(artifact)).with_name(
            f".{Path(naming.manifest_key(artifact)).name}.partial-{pid}-0a1b2c3d"
        ),
        repo.path(f".volume_shop_data_latest.tar.gz.partial-{pid}"),
    ]
    for path in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x1f\x8b not a whole archive")

    listed = run_cli("list", "--json")

    assert listed.returncode == 0, listed.stderr
    assert "removed the unfinished safety copy of volume shop_data" in listed.stderr
    assert all(path.name in listed.stderr for path in made), listed.stderr
    assert not any(path.exists() for path in made)
    assert json.loads(listed.stdout) == [] and journal.entries(repo) == []
    again = run_cli("list")
    assert "interrupted" not in again.stderr  # said once


def test_the_next_command_starts_the_containers_once_the_data_is_settled(app: App) -> None:
    app.reset(1)
    proc = start(app.env, *app.restore_args())
    assert proc.until("create staging database")  # (the staging entry lives ~0.3s)
    proc.signal(signal.SIGKILL)
    proc.finish()
    assert {e.kind for e in journal.entries(app.repo)} >= {"stopped_containers",
                                                            "staging_database"}  # fmt: skip

    said = said_lines(run(app.env, "list").stderr)

    assert len(said) >= 2 and "started again containers" in said[-1], said


def test_the_next_command_removes_a_torn_journal_entry(
    run_cli: CliRunner, repo: LocalStorage
) -> None:
    pid, _started = dead_pid()
    torn = repo.path(journal.JOURNAL_DIR) / f".stopped_containers-0a1b2c.json.partial-{pid}-0a1b"
    torn.parent.mkdir(parents=True)
    torn.write_text('{"kind": "stopped_con')

    listed = run_cli("list")

    assert listed.returncode == 0, listed.stderr
    assert not torn.exists()
    assert f"removed {journal.JOURNAL_DIR}/{torn.name}: a journal entry a killed run" in (
        listed.stderr
    ), listed.stderr
