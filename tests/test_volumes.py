"""Volume backups end to end: folders and real Docker volumes on a private engine (run as root).

Nothing is mocked: a private dockerd is started here, containers from the locally built busybox
image write and read the volumes, and trees are compared entry by entry.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from pathlib import Path

import docker
import pytest
from docker.models.images import Image
from docker.models.volumes import Volume

from safehold import catalog
from safehold.errors import DockerUnavailable, IntegrityError, TargetInUse, ToolError, UsageError
from safehold.model import Event
from safehold.operations.volumes.docker import backup_volume, restore_volume
from safehold.operations.volumes.folder import backup_tree, restore_tree
from safehold.sources.docker.engine import volume_mountpoint
from safehold.storage import LocalStorage

from .conftest import run_in

Snapshot = dict[str, tuple[object, ...]]


def snapshot(root: Path) -> Snapshot:
    """Relative path -> (type, mode, uid, gid, bytes or link target), root included as '.'."""
    entries: Snapshot = {}
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files] if Path(folder) == root else [*dirs, *files]:
            path = Path(folder) / name if name != "." else root
            st = path.lstat()
            rel = str(path.relative_to(root)) if name != "." else "."
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = path.read_bytes()
            else:
                body = None
            entries[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                            st.st_gid, body)  # fmt: skip
    return entries


def make_tree(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (root / "sub" / "deep" / "empty").write_bytes(b"")
    (root / "exec.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "exec.sh", 0o700)
    os.chmod(root / "sub" / "deep", 0o700)
    os.chmod(root / "a.txt", 0o600)
    os.symlink("sub/b.bin", root / "link")
    os.chown(root / "a.txt", 1234, 5678)
    os.lchown(root / "link", 4321, 8765)


@pytest.mark.parametrize(("compression", "suffix"), [("gzip", ".tar.gz"), ("zstd", ".tar.zst")])
def test_tree_round_trip(tmp_path: Path, repo: LocalStorage, compression: str, suffix: str) -> None:
    source = tmp_path / "source"
    source.mkdir()
    make_tree(source)
    manifest = backup_tree(source, "appdata", repo, compression=compression)

    assert manifest.artifact.startswith("volume_appdata_") and manifest.artifact.endswith(suffix)
    assert (manifest.kind, manifest.target, manifest.compression) == (
        "volume",
        "appdata",
        compression,
    )
    assert manifest.facts["source"] == str(source)
    assert manifest.facts["files"] == 4
    assert manifest.facts["symlinks"] == 1
    assert manifest.facts["dirs"] == 3
    assert manifest.facts["bytes"] == sum(
        p.stat().st_size for p in source.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert manifest.size == repo.size(manifest.artifact)
    link = repo.path(f"volume_appdata_latest{suffix}")
    assert link.is_symlink() and link.resolve() == repo.path(manifest.artifact).resolve()
    assert catalog.latest(catalog.scan(repo), "volume", "appdata") is not None

    target = tmp_path / "restored"
    facts = restore_tree(repo, "latest", target, target_name="appdata")
    assert snapshot(target) == snapshot(source)
    assert (facts.files, facts.bytes) == (manifest.facts["files"], manifest.facts["bytes"])


def test_gnu_tar_lists_the_archive_with_dot_names(tmp_path: Path, repo: LocalStorage) -> None:
    source = tmp_path / "source"
    source.mkdir()
    make_tree(source)
    manifest = backup_tree(source, "appdata", repo)
    listed = subprocess.run(
        ["tar", "-tzf", str(repo.path(manifest.artifact))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(name.startswith("./") for name in listed)
    assert "./a.txt" in listed and "./sub/deep/empty" in listed


def test_restore_leaves_exactly_the_archive_content(tmp_path: Path, repo: LocalStorage) -> None:
    source = tmp_path / "source"
    source.mkdir()
    make_tree(source)
    manifest = backup_tree(source, "appdata", repo)
    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    (target / "extra.txt").write_text("not in the backup")
    (target / "sub" / "b.bin").write_text("old")
    (target / "sub" / "stray").write_text("stray")
    restore_tree(repo, manifest.artifact, target)
    assert snapshot(target) == snapshot(source)


def test_a_flipped_byte_is_refused_and_nothing_changes(tmp_path: Path, repo: LocalStorage) -> None:
    source = tmp_path / "source"
    source.mkdir()
    make_tree(source)
    for compression in ("gzip", "zstd"):
        manifest = backup_tree(source, "appdata", repo, compression=compression)
        path = repo.path(manifest.artifact)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        target = tmp_path / f"target-{compression}"
        target.mkdir()
        (target / "keep.txt").write_text("current content")
        before = snapshot(target)
        with pytest.raises(IntegrityError):
            restore_tree(repo, manifest.artifact, target)
        assert snapshot(target) == before


def test_a_file_without_manifest_restores_with_a_warning(
    tmp_path: Path, repo: LocalStorage
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    make_tree(source)
    manifest = backup_tree(source, "appdata", repo)
    foreign = tmp_path / "handed-over.tar.gz"
    foreign.write_bytes(repo.path(manifest.artifact).read_bytes())
    events: list[Event] = []
    target = tmp_path / "target"
    restore_tree(repo, str(foreign), target, sink=events.append)
    assert snapshot(target) == snapshot(source)
    assert any(e.level == "warning" and "no manifest" in e.message for e in events)


def test_bad_names_are_usage_errors(tmp_path: Path, repo: LocalStorage) -> None:
    for bad in ("../x", "a/b", "-x", "x", "name with space"):
        with pytest.raises(UsageError) as caught:
            backup_tree(tmp_path, bad, repo)
        assert caught.value.hint


# ---- Docker volumes on a private engine -----------------------------------------------------


READ_BACK = "cd /data && find . | sort && cat a.txt sub/b.txt && ls -ln a.txt"


def test_volume_backup_change_restore(
    tmp_path: Path, repo: LocalStorage, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    name = str(volume.name)
    run_in(client, image, name,
           "echo original > /data/a.txt && mkdir /data/sub && echo deep > /data/sub/b.txt"
           " && chown 1000:1000 /data/a.txt")  # fmt: skip
    original = run_in(client, image, name, READ_BACK)
    backup = backup_volume(client, name, repo)
    assert backup.target == name and backup.facts["files"] == 2

    run_in(client, image, name, "echo changed > /data/a.txt && rm -r /data/sub && touch /data/new")
    changed = run_in(client, image, name, "cd /data && find . | sort && cat a.txt")
    assert changed != original

    events: list[Event] = []
    result = restore_volume(client, name, repo, backup.artifact, sink=events.append)
    assert run_in(client, image, name, READ_BACK) == original
    assert result.source == backup.artifact
    assert result.safety_backup is not None
    assert result.safety_backup.kind == "safety"  # never the volume's latest backup
    assert any("a safety copy" in e.message for e in events)

    safety = tmp_path / "safety"
    restore_tree(repo, result.safety_backup.artifact, safety)
    assert (safety / "a.txt").read_text() == "changed\n"
    assert (safety / "new").exists() and not (safety / "sub").exists()


def test_restore_latest_means_the_backup_not_the_safety_copy(
    repo: LocalStorage, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    name = str(volume.name)
    run_in(client, image, name, "echo first > /data/a.txt")
    backup_volume(client, name, repo, compression="zstd")
    run_in(client, image, name, "echo second > /data/a.txt")
    restore_volume(client, name, repo, "latest", compression="zstd")
    assert run_in(client, image, name, "cat /data/a.txt") == b"first\n"


def test_restore_is_refused_while_a_container_runs(
    repo: LocalStorage, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    name = str(volume.name)
    run_in(client, image, name, "echo original > /data/a.txt")
    backup = backup_volume(client, name, repo)
    run_in(client, image, name, "echo changed > /data/a.txt")
    running = client.containers.run(
        image,
        ["sleep", "300"],
        volumes={name: {"bind": "/data", "mode": "rw"}},
        network_mode="none",
        detach=True,
    )
    try:
        artifacts_before = sorted(repo.list())
        with pytest.raises(TargetInUse) as caught:
            restore_volume(client, name, repo, backup.artifact)
        assert caught.value.exit_code == 7
        assert str(running.name) in caught.value.message
        assert (volume_mountpoint(client, name) / "a.txt").read_text() == "changed\n"
        assert sorted(repo.list()) == artifacts_before  # not even a safety backup
    finally:
        running.remove(force=True)


def test_restore_creates_a_missing_volume(
    repo: LocalStorage, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    name = str(volume.name)
    run_in(client, image, name, "echo kept > /data/a.txt")
    backup = backup_volume(client, name, repo)
    fresh = f"{name}-copy"
    try:
        result = restore_volume(client, fresh, repo, backup.artifact)
        assert result.safety_backup is None
        assert run_in(client, image, fresh, "cat /data/a.txt") == b"kept\n"
    finally:
        client.volumes.get(fresh).remove(force=True)


def test_a_missing_volume_is_a_usage_error(repo: LocalStorage, client: docker.DockerClient) -> None:
    with pytest.raises(UsageError, match="no Docker volume") as caught:
        backup_volume(client, "safehold-no-such-volume", repo)
    assert caught.value.hint is not None and "docker volume ls" in caught.value.hint
    assert not any(key.startswith("volume_") for key in repo.list())


def test_an_unreachable_engine_names_docker_host(tmp_path: Path, repo: LocalStorage) -> None:
    # A fixed API version: the default asks the engine for its version already in the constructor.
    socket = f"unix://{tmp_path / 'no-engine.sock'}"
    nowhere = docker.DockerClient(base_url=socket, version="1.41", timeout=5)
    with contextlib.closing(nowhere), pytest.raises(DockerUnavailable) as caught:
        volume_mountpoint(nowhere, "anything")
    assert caught.value.hint is not None and "DOCKER_HOST" in caught.value.hint
    assert caught.value.exit_code == ToolError.exit_code
