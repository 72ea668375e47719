"""A volume restore killed at any point leaves the volume old or new, never a mix (issue 12).

The real command (``safehold restore --volume NAME:FILE``) restores a volume of a few thousand
entries from an archive of different content and is SIGKILLed at each step it logs and at
random moments of the swap; the next command (``safehold list``) must say what it did, and
only then the volume holds exactly the old tree or exactly the new one, with no staging or
aside folder and no journal entry left. Two restores of one volume, or a backup during a
restore, wait for each other (or fail clearly naming the holder) instead of interleaving.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
from docker.models.volumes import Volume

from safehold.operations import journal
from safehold.operations.volumes.docker import backup_volume
from safehold.operations.volumes.folder import restore_tree
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.docker.engine import volume_mountpoint
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import seed_env

ENTRIES = 3000  # top-level entries: the swap renames each, so it lasts long enough to hit
SWAP_START = "swap: moving the current content"
Tree = dict[str, tuple[object, ...]]


def tree(root: Path) -> Tree:
    """Relative path -> (type, mode, owner, group, bytes or link target, mtime of non-folders);
    the root's own mode, owner, group and mtime."""
    found: Tree = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            st = path.lstat()
            kind = stat.S_IFMT(st.st_mode)
            body: object = None
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = path.read_bytes()
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            found[str(path.relative_to(root))] = (
                kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, body, mtime,
            )  # fmt: skip
    root_st = root.stat()
    found["."] = (
        stat.S_IMODE(root_st.st_mode), root_st.st_uid, root_st.st_gid, root_st.st_mtime_ns,
    )  # fmt: skip
    return found


def fill(root: Path, flavour: str) -> None:
    """Replace ``root``'s content: ENTRIES top-level entries, some names shared by both
    flavours with different content, folders with files, a symlink."""
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    for i in range(ENTRIES - 3):
        name = f"shared-{i}.txt" if i % 3 == 0 else f"{flavour}-{i}.txt"
        (root / name).write_text(f"{flavour} {i}\n" * (1 + i % 5))
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "deep" / "note.md").write_text(f"{flavour} note\n")
    (root / "docs" / "mode.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "docs" / "mode.sh", 0o750 if flavour == "new" else 0o700)
    (root / f"{flavour}-only").mkdir()
    (root / f"{flavour}-only" / "data.bin").write_bytes(random.Random(flavour).randbytes(2048))
    os.symlink("docs/deep/note.md", root / "link")
    # The same mtimes every time (whole seconds, which any tar format keeps): a refill is the
    # same tree, and a restored file is told from an old one by its content, not its age.
    for folder, _dirs, files in os.walk(root):
        for name in files:
            os.utime(Path(folder) / name, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    # The folder's own meta differs by flavour: a finished swap must set the archive's, a
    # rolled-back one put the old back (the renames change its mtime).
    os.chmod(root, 0o750 if flavour == "new" else 0o755)
    stamp = {"old": 1_500_000_000, "new": 1_500_000_100}.get(flavour, 1_500_000_200)
    os.utime(root, (stamp, stamp))


def leftovers(root: Path) -> list[str]:
    """Staging or aside folders, inside the volume's folder or beside it."""
    return sorted(p.name for d in (root, root.parent) for p in d.iterdir() if "safehold-" in p.name)


class Volumes:
    """One volume with an old content, and backups of a new (and a third) content."""

    def __init__(
        self, client: docker.DockerClient, volume: Volume, repo: LocalStorage, env: dict[str, str]
    ) -> None:
        self.name = volume.name
        self.root = volume_mountpoint(client, volume.name)
        self.repo = repo
        self.env = env
        fill(self.root, "new")
        self.new = tree(self.root)
        self.new_archive = backup_volume(client, self.name, repo).artifact
        fill(self.root, "third")
        self.third = tree(self.root)
        self.third_archive = backup_volume(client, self.name, repo).artifact
        self.reset()
        self.old = tree(self.root)

    def reset(self) -> None:
        fill(self.root, "old")

    def restore(self, archive: str, *more: str) -> subprocess.Popen[str]:
        return self.cli("restore", "--volume", f"{self.name}:{archive}", "--no-safety-backup",
                        *more)  # fmt: skip

    def cli(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "safehold", *args, "--log-format", "json"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def vols(
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    volume: Volume,
) -> Volumes:
    return Volumes(
        client, volume, repo, {**seed_env(db, repo.root), "DOCKER_HOST": engine.base_url}
    )


def message(line: str) -> str:
    try:
        return str(json.loads(line).get("message", line))
    except ValueError:
        return line


def run_until(proc: subprocess.Popen[str], wanted: str | int) -> list[str]:
    """Read the log until the line ``wanted`` (its text, or its number); the lines read."""
    assert proc.stderr is not None
    lines: list[str] = []
    while line := proc.stderr.readline():
        lines.append(message(line))
        if (isinstance(wanted, int) and len(lines) == wanted) or (
            isinstance(wanted, str) and wanted in lines[-1]
        ):
            break
    return lines


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


def next_command_settles(vols: Volumes) -> str:
    """Run ``safehold list``; check what it said against what the volume then holds."""
    pending = {e.kind for e in journal.entries(vols.repo)}
    listing = vols.cli("list")
    _out, err = listing.communicate(timeout=120)
    assert listing.returncode == 0, err
    said = [message(line) for line in err.splitlines() if "interrupted" in line]
    now = tree(vols.root)
    assert now in (vols.old, vols.new), "the volume holds a mix of the old and the new content"
    assert leftovers(vols.root) == []
    assert journal.entries(vols.repo) == []
    if "volume_swap" in pending:
        (line,) = [s for s in said if f"volume {vols.name}: the interrupted restore of" in s]
        outcome = "finished" if "was finished" in line else "rolled back"
        assert "was finished" in line or "was rolled back" in line, line
        assert now == (vols.new if outcome == "finished" else vols.old), line
        return outcome
    if "staging_folder" in pending:
        assert any("removed the staging folder" in s for s in said), said
        assert now == vols.old
        return "staging removed"
    assert said == []
    return "new" if now == vols.new else "old"


def test_a_restore_killed_anywhere_leaves_old_or_new_after_the_next_command(
    vols: Volumes,
) -> None:
    # One run to completion: the steps it logs, and how long its swap takes.
    proc = vols.restore(vols.new_archive)
    steps = run_until(proc, "restoring")
    began = time.monotonic()
    steps += run_until(proc, SWAP_START)
    unpack_s = time.monotonic() - began  # the archive unpacked into the staging folder
    began = time.monotonic()
    _out, rest = proc.communicate()
    swap_s = time.monotonic() - began  # the swap, the cleanup and the exit
    assert proc.returncode == 0, rest
    assert tree(vols.root) == vols.new
    swap_at = len(steps)
    steps += [message(line) for line in rest.splitlines()]

    outcomes: dict[str, list[str]] = {}
    rng = random.Random(12)
    # Each logged step (killed as soon as it is read), then random moments after the swap began.
    points: list[tuple[int, float]] = [(n, 0.0) for n in range(1, len(steps) + 1)]
    # (The first run unpacks slower than the later ones: aim at the start of the unpacking.)
    points += [(swap_at - 1, rng.uniform(0.0, min(unpack_s, 0.4))) for _ in range(5)]
    points += [(swap_at, rng.uniform(0.0, swap_s)) for _ in range(12)]
    for number, delay in points:
        vols.reset()
        proc = vols.restore(vols.new_archive)
        run_until(proc, number)
        if delay:
            time.sleep(delay)
        kill(proc)
        outcome = next_command_settles(vols)
        outcomes.setdefault(outcome, []).append(f"step {number} +{delay:.3f}s")

    print(f"{len(steps)} logged steps: {steps}\noutcomes: {outcomes}")  # shown with -s
    # The kills must have landed in the unpacking and on both sides of the swap's mark, or
    # this proved nothing.
    assert {"staging removed", "rolled back", "finished"} <= set(outcomes), outcomes


def test_two_restores_of_one_volume_take_turns(vols: Volumes) -> None:
    first = vols.restore(vols.new_archive)
    run_until(first, "restoring")  # it holds the volume's lock from here to its end
    os.kill(first.pid, signal.SIGSTOP)
    try:
        refused = vols.restore(vols.third_archive, "--lock-timeout", "0.5")
        _out, err = refused.communicate(timeout=120)
        assert refused.returncode == 8, err  # LockBusy
        assert f"volume {vols.name} is locked by pid {first.pid}" in err
        assert "safehold restore of volume" in err
        assert tree(vols.root) == vols.old  # the refused one touched nothing

        waiting = vols.restore(vols.third_archive)
        time.sleep(1.5)
        assert waiting.poll() is None  # waiting for the lock, not restoring over the first
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.communicate(timeout=120)
    assert first.returncode == 0
    _out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert tree(vols.root) == vols.third  # exactly the later archive, nothing of the first


def test_a_backup_during_a_restore_waits_for_it(vols: Volumes, tmp_path: Path) -> None:
    restore = vols.restore(vols.new_archive)
    run_until(restore, "restoring")
    os.kill(restore.pid, signal.SIGSTOP)
    try:
        refused = vols.cli("backup", "--volume", vols.name, "--lock-timeout", "0.5")
        _out, err = refused.communicate(timeout=120)
        assert refused.returncode == 8, err
        assert f"is locked by pid {restore.pid}" in err

        backup = vols.cli("backup", "--volume", vols.name, "--json")
        time.sleep(1.5)
        assert backup.poll() is None
    finally:
        os.kill(restore.pid, signal.SIGCONT)
    restore.communicate(timeout=120)
    assert restore.returncode == 0
    out, err = backup.communicate(timeout=120)
    assert backup.returncode == 0, err
    (manifest,) = json.loads(out)
    copy = tmp_path / "copy"
    restore_tree(vols.repo, manifest["artifact"], copy, target_name=vols.name)
    assert tree(copy) == vols.new  # the backup read the restored content, not a half-swap


@pytest.mark.parametrize(("nth", "outcome"), [(1, "rolled back"), (2, "finished")])
def test_a_killed_folder_restore_is_settled_by_the_library_too(
    vols: Volumes, tmp_path: Path, nth: int, outcome: str
) -> None:
    """restore_tree journals too, and the journal's resolvers settle its swap. Killed when
    1000 entries have moved (a debug event): the first time it is 1000 old ones aside (undone),
    the second 1000 new ones in, after the mark (finished)."""
    target = tmp_path / "folder"
    target.mkdir()
    fill(target, "old")
    old = tree(target)
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom safehold.storage import LocalStorage\n"
        "from safehold.operations.volumes.folder import restore_tree\n"
        "seen = []\n"
        "def sink(e):\n"
        "    print(e.message, flush=True)\n"
        "    seen.extend(['x'] if 'swap: moved 1000 of' in e.message else [])\n"
        "    if len(seen) == int(sys.argv[5]):\n"
        "        time.sleep(60)  # killed here\n"
        "restore_tree(LocalStorage(Path(sys.argv[1])), sys.argv[2], Path(sys.argv[3]),"
        " target_name=sys.argv[4], sink=sink)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(vols.repo.root), vols.new_archive, str(target),
         vols.name, str(nth)], env=vols.env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = 0
    while seen < nth:
        line = proc.stdout.readline()
        assert line, "the restore ended before the swap"
        seen += "swap: moved 1000 of" in line
    kill(proc)
    assert {e.kind for e in journal.entries(vols.repo)} == {"volume_swap"}
    assert tree(target) not in (old, vols.new)  # killed half-way: a mix, until recovered
    from safehold.operations.volumes import recovery  # noqa: F401  (registers the resolvers)

    said: list[str] = []
    assert journal.recover(journal.Context(vols.repo), lambda e: said.append(e.message)) == 1
    assert (
        f"folder {target}: the interrupted restore of {vols.new_archive} was {outcome}" in (said[0])
    )
    assert tree(target) == (vols.new if outcome == "finished" else old)
    assert leftovers(target) == [] and journal.entries(vols.repo) == []
