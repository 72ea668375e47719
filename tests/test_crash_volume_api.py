"""A volume restore through the Docker engine's API, killed at any instant, leaves the volume
exactly old or exactly new once the next command has run (the journal's ``api_volume_swap``).

The real command (``safehold restore --volume NAME:FILE`` with ``backup.volume_access = api``)
restores a volume of ~2000 entries from an archive of different content (other files, bytes,
modes, owners, a symlink, the root's own owner and mode) and is SIGKILLed at each step it logs
and at random moments of the upload and of the swap. Then the helper container itself is
killed in each phase of its swap (safehold alive, or killed too: an engine or power loss), once
the volume provably holds a mix. Each time the next command (``safehold list``) must say what it
did, and the volume, read as root at its mountpoint, must then be exactly what it said: no
``.safehold-*`` name in it, no helper container, no journal entry.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.errors import APIError, ImageNotFound
from docker.models.containers import Container
from docker.models.volumes import Volume

from safehold.operations import journal
from safehold.operations.volumes.api_swap import KIND, SWAP_LABEL
from safehold.operations.volumes.docker import backup_volume
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.docker.engine import volume_mountpoint
from safehold.sources.docker.helper_image import BUSYBOX_TAG, EMPTY_TAG, HELPER_LABEL
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import seed_env
from .test_crash_volume import kill, message, run_until

ENTRIES = 2000  # top-level entries: the helper renames each twice, so the swap lasts a while
UPLOAD = "unpacking the archive into volume"
SWAPPING = "swapping it in"
ABOUT = "the interrupted restore of"
Tree = dict[str, tuple[object, ...]]


def tree(root: Path) -> Tree:
    """Relative path -> (type, mode, owner, group, bytes or link target, mtime of non-folders);
    '.': the root's own mode, owner, group and mtime (whole seconds, as the helper sets it)."""
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
            kind, mode = stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)
            found[str(path.relative_to(root))] = (kind, mode, st.st_uid, st.st_gid, body, mtime)
    st = root.stat()
    found["."] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
    return found


def fill(root: Path, flavour: str) -> None:
    """Replace ``root``'s content: ENTRIES top-level entries, some names in both flavours with
    other bytes, modes or owners, folders, a symlink, and the root's own owner and mode."""
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    new = flavour == "new"
    for i in range(ENTRIES - 3):
        name = f"shared-{i}.txt" if i % 3 == 0 else f"{flavour}-{i}.txt"
        (root / name).write_text(f"{flavour} {i}\n" * (1 + i % 5))
        if i % 7 == 0:
            os.chown(root / name, 1000 + new, 2000 + i % 2)
            os.chmod(root / name, 0o600 if new else 0o640)
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "deep" / "note.md").write_text(f"{flavour} note\n")
    (root / "docs" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "docs" / "run.sh", 0o750 if new else 0o700)
    os.chown(root / "docs", 33 if new else 0, 33 if new else 0)
    (root / f"{flavour}-only").mkdir()
    (root / f"{flavour}-only" / "data.bin").write_bytes(random.Random(flavour).randbytes(4096))
    os.symlink("docs/deep/note.md" if new else "docs/run.sh", root / "link")
    # Whole seconds, the same every time: a refill is the same tree, and what tells a restored
    # entry from an old one is its content, never its age.
    for folder, _dirs, files in os.walk(root):
        for name in files:
            os.utime(Path(folder) / name, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    # The root's own meta differs too: a finished swap must set the archive's, an undone one
    # put the old mtime back (staging and renames change it).
    os.chown(root, 1000 if new else 0, 1000 if new else 0)
    os.chmod(root, 0o750 if new else 0o755)
    os.utime(root, (1_500_000_100, 1_500_000_100) if new else (1_500_000_000, 1_500_000_000))


def scratch(root: Path) -> list[str]:
    return sorted(name for name in os.listdir(root) if name.startswith(".safehold"))


def helpers(client: docker.DockerClient) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"{HELPER_LABEL}=true"})
    return [str(c.name) for c in found]


class Vols:
    """One volume with an old content, a backup of a new content, and the CLI around them."""

    def __init__(
        self, client: docker.DockerClient, volume: Volume, repo: LocalStorage, env: dict[str, str]
    ) -> None:
        self.client, self.name, self.repo, self.env = client, str(volume.name), repo, env
        self.root = volume_mountpoint(client, self.name)
        fill(self.root, "new")
        self.new = tree(self.root)
        self.archive = backup_volume(client, self.name, repo, access="direct").artifact
        self.reset()
        self.old = tree(self.root)
        assert self.old != self.new

    def reset(self) -> None:
        fill(self.root, "old")

    def restore(self) -> subprocess.Popen[str]:
        return self.cli("restore", "--volume", f"{self.name}:{self.archive}", "--no-safety-backup")

    def cli(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "safehold", *args, "--log-format", "json"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def settle(self) -> tuple[str, str]:
        """Run ``safehold list``; check what it said against what the volume then holds.
        Returns (outcome, the line it said)."""
        pending = {e.kind for e in journal.entries(self.repo)}
        listing = self.cli("list")
        _out, err = listing.communicate(timeout=300)
        assert listing.returncode == 0, err
        said = [message(line) for line in err.splitlines() if "interrupted" in line]
        now = tree(self.root)
        assert now in (self.old, self.new), "the volume holds a mix of the old and new content"
        assert scratch(self.root) == []
        assert helpers(self.client) == []
        assert journal.entries(self.repo) == []
        if KIND not in pending:
            assert said == []
            return ("untouched" if now == self.old else "restored"), ""
        (line,) = [s for s in said if f"volume {self.name}: {ABOUT} {self.archive}" in s]
        expected: dict[str, tuple[str, Tree | None]] = {
            "was rolled back (": ("rolled back", self.old),
            "entries still to move were moved in)": ("finished", self.new),
            "removed the staging folder": ("staging removed", self.old),
            "was finished by its helper container": ("helper finished", self.new),
            "was undone by its helper container": ("helper undone", self.old),
            "had not begun its swap": ("not begun", self.old),
            "was already settled": ("settled", None),
        }
        for phrase, (outcome, tree_then) in expected.items():
            if phrase in line:
                assert tree_then is None or now == tree_then, line
                return outcome, line
        raise AssertionError(f"unexpected recovery message: {line}")


@pytest.fixture(scope="module", autouse=True)
def drop_helper_images(client: docker.DockerClient) -> Iterator[None]:
    """The shared engine's other tests expect only the sandbox's own image."""
    yield
    for tag in (EMPTY_TAG, BUSYBOX_TAG):
        with contextlib.suppress(ImageNotFound, APIError):
            client.images.remove(tag)


@pytest.fixture
def vols(
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    volume: Volume,
) -> Vols:
    env = {
        **seed_env(db, repo.root),
        "DOCKER_HOST": engine.base_url,
        "SAFEHOLD_BACKUP_VOLUME_ACCESS": "api",
    }
    return Vols(client, volume, repo, env)


def test_a_restore_killed_anywhere_leaves_old_or_new_after_the_next_command(vols: Vols) -> None:
    # One run to completion: the steps it logs, how long its upload and its swap take.
    proc = vols.restore()
    steps = run_until(proc, UPLOAD)
    began = time.monotonic()
    steps += run_until(proc, SWAPPING)
    upload_s = time.monotonic() - began
    began = time.monotonic()
    _out, rest = proc.communicate()
    swap_s = time.monotonic() - began
    assert proc.returncode == 0, rest
    assert tree(vols.root) == vols.new and scratch(vols.root) == []
    assert "engine API" in " ".join(steps)  # it did take the API path
    upload_at, swap_at = steps.index(next(s for s in steps if UPLOAD in s)) + 1, len(steps)
    steps += [message(line) for line in rest.splitlines()]

    outcomes: dict[str, list[str]] = {}
    rng = random.Random(7)
    points: list[tuple[int, float]] = [(n, 0.0) for n in range(1, len(steps) + 1)]
    points += [(upload_at, rng.uniform(0.0, upload_s)) for _ in range(6)]
    points += [(swap_at, rng.uniform(0.0, swap_s)) for _ in range(6)]
    for number, delay in points:
        vols.reset()
        proc = vols.restore()
        assert len(run_until(proc, number)) == number, "the restore ended early"
        if delay:
            time.sleep(delay)
        kill(proc)
        outcome, _line = vols.settle()
        outcomes.setdefault(outcome, []).append(f"step {number} +{delay:.3f}s")

    print(f"steps: {steps}\nupload {upload_s:.2f}s swap {swap_s:.2f}s\noutcomes: {outcomes}")
    # Killed in the upload, the staging folder went; killed in the swap, its helper (still
    # running) finished it. Without both, the kills proved nothing.
    assert {"staging removed", "helper finished"} <= set(outcomes), outcomes


def swap_helper(client: docker.DockerClient, deadline: float) -> Container:
    while time.monotonic() < deadline:
        found = client.containers.list(filters={"label": SWAP_LABEL})
        if found:
            return found[0]
        time.sleep(0.005)
    raise AssertionError("no swap helper ran")


def visible(root: Path) -> Tree:
    """The volume's tree as a container using it would see it, the swap's folders left out."""
    return {k: v for k, v in tree(root).items() if not k.startswith(".safehold")}


def count(folder: Path) -> int:
    try:
        return len(os.listdir(folder))
    except FileNotFoundError:
        return 0


def caught_in(vols: Vols, phase: str, tries: int = 4) -> tuple[subprocess.Popen[str], Container]:
    """A restore whose helper is frozen (cgroup freezer) half-way through the ``phase`` of its
    swap: "aside" (some old entries moved aside, no commit mark) or "forward" (the mark made,
    some new entries moved in). Tried again when the swap ran past the moment."""
    for _ in range(tries):
        vols.reset()
        proc = vols.restore()
        run_until(proc, SWAPPING)
        helper = swap_helper(vols.client, time.monotonic() + 30)
        token = str(helper.labels[SWAP_LABEL])
        old, stage, mark = (vols.root / f".safehold-{what}-{token}" for what in
                            ("old", "stage", "forward"))  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if phase == "aside" and not mark.exists() and count(old) > ENTRIES // 4:
                break
            if phase == "forward" and mark.exists() and 0 < count(stage) < ENTRIES * 3 // 4:
                break
        try:
            helper.pause()
        except docker.errors.APIError:
            proc.communicate(timeout=120)  # the swap ended first
            vols.settle()
            continue
        aside, staged = count(old), count(stage)
        if (phase == "forward") == mark.exists() and aside and staged and proc.poll() is None:
            print(f"{phase}: frozen with {aside} entries aside, {staged} still staged")
            return proc, helper
        helper.unpause()
        proc.communicate(timeout=120)
        vols.settle()
    raise AssertionError(f"the swap never was frozen in its {phase} phase")


@pytest.mark.parametrize("phase", ["aside", "forward"])
@pytest.mark.parametrize("who", ["helper", "helper and safehold"])
def test_a_helper_killed_mid_swap_is_rolled_back_or_finished(
    vols: Vols, phase: str, who: str
) -> None:
    proc, helper = caught_in(vols, phase)
    assert visible(vols.root) not in (vols.old, vols.new)  # a mix, until the next command
    if who != "helper":
        kill(proc)  # first safehold, then its helper: as when the engine or the host dies
    helper.kill()
    if who == "helper":
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert "stopped half-way" in err and "the swap is journalled" in err, err
    assert [e.kind for e in journal.entries(vols.repo)] == [KIND]
    assert visible(vols.root) not in (vols.old, vols.new)
    assert len(scratch(vols.root)) == (3 if phase == "forward" else 2)

    outcome, line = vols.settle()
    assert outcome == ("finished" if phase == "forward" else "rolled back"), line
    moved = int(line.split("(")[-1].split()[0])
    assert 0 < moved < ENTRIES, line


def test_recovery_run_twice_says_settled_the_second_time(vols: Vols) -> None:
    proc, helper = caught_in(vols, "forward")
    kill(proc)
    helper.kill()
    (entry,) = journal.entries(vols.repo)
    written = vols.repo.read_bytes(entry.key)
    assert vols.settle()[0] == "finished"
    vols.repo.put_bytes(entry.key, written)  # as if the first recovery died before done()
    outcome, line = vols.settle()
    assert outcome == "settled", line
    assert tree(vols.root) == vols.new


def test_a_volume_removed_meanwhile_is_said_and_settled(
    vols: Vols, client: docker.DockerClient
) -> None:
    proc, helper = caught_in(vols, "aside")
    kill(proc)
    helper.remove(force=True)
    client.volumes.get(vols.name).remove()
    try:
        listing = vols.cli("list")
        _out, err = listing.communicate(timeout=300)
        assert listing.returncode == 0, err
        said = [message(line) for line in err.splitlines() if ABOUT in line]
        assert len(said) == 1 and "the volume no longer exists" in said[0], err
        assert journal.entries(vols.repo) == []
        assert helpers(client) == []
        assert vols.name not in [str(v.name) for v in client.volumes.list()]  # not re-created
    finally:
        client.volumes.create(name=vols.name)  # for the fixture, which removes it
