"""Resource faults of the repository (a BACKUP_DIR that is a file or a dangling link, a read-only
or full disk) are one-line storage errors naming the path, with a hint, and leave nothing
half-written. The disks are real: tmpfs mounts (we run as root), unmounted afterwards."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from safehold.errors import StorageError
from safehold.storage import LocalStorage

from .conftest import CliRunner
from .mounts import tmpfs

STORAGE_EXIT = StorageError.exit_code


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def _tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (hidden ones too) with its content."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _fails_clearly(result: subprocess.CompletedProcess[str], path: Path, *words: str) -> None:
    assert result.returncode == STORAGE_EXIT, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(path) in errors[0], result.stderr
    assert all(word in errors[0] for word in words), errors
    assert "hint:" in result.stderr and "Traceback" not in result.stderr


def _folder(tmp_path: Path, mib: int = 0) -> Path:
    folder = tmp_path / "appdata"
    folder.mkdir(exist_ok=True)
    (folder / "note.txt").write_text("hello")
    if mib:
        (folder / "big.bin").write_bytes(os.urandom(mib << 20))  # random: gzip cannot shrink it
    return folder


@pytest.mark.parametrize("shape", ["regular file", "dangling symlink"])
def test_backup_dir_of_the_wrong_type(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path, shape: str
) -> None:
    repo.root.parent.mkdir(parents=True, exist_ok=True)
    if shape == "regular file":
        repo.root.write_text("not a folder\n")
        words = ["is a regular file"]
    else:
        repo.root.symlink_to(tmp_path / "gone")
        words = ["is a symbolic link to", "which does not exist"]
    folder = _folder(tmp_path)
    for args in (["backup"], ["backup", "--path", str(folder)], ["list"], ["verify"]):
        _fails_clearly(run_cli(*args), repo.root, *words)
    # Nothing was written through or beside it.
    if shape == "regular file":
        assert repo.root.read_text() == "not a folder\n"
    else:
        assert not (tmp_path / "gone").exists() and repo.root.is_symlink()
    assert sorted(p.name for p in repo.root.parent.iterdir()) == sorted(["appdata", repo.root.name])


def test_read_only_repository(run_cli: CliRunner, repo: LocalStorage, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    with tmpfs(repo.root):
        made = run_cli("backup", "--path", str(folder))
        assert made.returncode == 0, made.stderr
        before = _tree(repo.root)
        _remount(repo.root, "ro")
        for args in (["backup"], ["backup", "--path", str(folder)]):
            _fails_clearly(run_cli(*args), repo.root, "read-only file system")
        assert _tree(repo.root) == before
        # Reading a read-only repository still works: the backup is listed and verifies.
        listed = run_cli("list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert '"status": "ok"' in listed.stdout
        _remount(repo.root, "rw")


def test_full_repository(run_cli: CliRunner, repo: LocalStorage, tmp_path: Path) -> None:
    folder = _folder(tmp_path, mib=3)
    with tmpfs(repo.root):
        made = run_cli("backup", "--path", str(folder))  # 3 MiB of random data into 2 MiB
        _fails_clearly(made, repo.root, "no space left")
        names = [p.name for p in repo.root.rglob("*") if p.is_file()]
        assert not [n for n in names if n.startswith(("volume_", ".volume_"))], names
        assert not [n for n in names if "partial" in n], names
        assert not list((repo.root / ".safehold/manifests").glob("*.json"))

        # Filled to the last block: a database backup fails the same way, leaving no dump.
        filler = repo.root / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * 4096):
                    pass
        finally:
            os.close(fd)
        os.truncate(filler, filler.stat().st_size - 24 * 1024)  # room for the lock, not a dump
        made = run_cli("backup")
        _fails_clearly(made, repo.root, "no space left")
        names = [p.name for p in repo.root.rglob("*") if p.is_file()]
        assert not [n for n in names if n.startswith(("db_", ".db_")) or "partial" in n], names

        filler.unlink()
        listed = run_cli("list", "--json")
        assert listed.returncode == 0 and listed.stdout.strip() in ("[]", ""), listed.stdout
