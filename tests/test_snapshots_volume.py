"""Chunked Docker volumes through the commands, on the private Docker engine: ``backup --volume``
writes a snapshot of ``volume:NAME`` (no tar file), ``restore --volume NAME:latest`` exports it
once as the seed's encrypted archive and puts it back with the normal volume restore (safety
backup of what was there), the backup host's public key alone restores nothing, and
``backup.chunked_targets`` keeps some volumes chunked while the others stay tar files."""

from __future__ import annotations

import io
import json
import re
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.images import Image
from docker.models.volumes import Volume

from safehold.naming import manifest_key
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner, run_in, seed_env
from .test_snapshots_cli import _keys, _ok
from .tree_support import Tree, snapshot

# What a volume holds: nested folders, modes, an owner, a hardlink, symlinks (one up the tree,
# one dangling), an empty folder and a file of several chunks.
FILL = " && ".join(
    (
        "mkdir -p /data/docs/deep/deeper /data/empty",
        "printf 'alpha\\n' > /data/docs/a.txt",
        "printf 'keep me\\n' > /data/keep.txt",
        "printf 'remove me\\n' > /data/gone.txt",
        "head -c 3000000 /dev/urandom > /data/docs/deep/deeper/big.bin",
        "printf '#!/bin/sh\\necho hi\\n' > /data/tool && chmod 755 /data/tool",
        "printf 's3cret\\n' > /data/secret && chmod 600 /data/secret",
        "chown 1234:5678 /data/secret",
        "chmod 700 /data/empty && chmod 750 /data/docs && chmod 444 /data/keep.txt",
        "ln /data/docs/a.txt /data/hard-a",
        "ln -s docs/a.txt /data/link-file",
        "ln -s ../../keep.txt /data/docs/deep/link-up",
        "ln -s missing-but-inside /data/dangling",
    )
)
CHANGE = (
    "rm /data/gone.txt && printf 'added later\\n' > /data/added.txt"
    " && chmod 644 /data/keep.txt && printf 'changed\\n' >> /data/keep.txt"
    " && printf 'beta\\n' > /data/docs/a.txt"
)
# The same content seen from inside a container: every entry, its mode and owner, link targets
# and each file's checksum.
READ = (
    "cd /data && find . | sort | while read -r p; do"
    ' if [ -L "$p" ]; then echo "$p -> $(readlink "$p")";'
    ' elif [ -f "$p" ]; then echo "$p $(stat -c "%a %u:%g %h" "$p") $(md5sum < "$p")";'
    ' else echo "$p $(stat -c "%a %u:%g" "$p")/"; fi; done'
)


def _seen(client: docker.DockerClient, image: Image, name: str) -> tuple[Tree, bytes]:
    """The volume's tree read on its folder on the host (content, modes, owners, mtimes in
    seconds, link targets, hardlink groups), and as a container lists it (modes, owners, link
    counts, link targets, checksums)."""
    root = Path(str(client.volumes.get(name).attrs["Mountpoint"]))
    return snapshot(root), run_in(client, image, name, READ)


def _archives(repo: LocalStorage, prefix: str, name: str) -> list[str]:
    """The stamped archives (no links) named ``PREFIX_NAME_STAMP.tar.gz[.age]``."""
    pattern = re.compile(rf"^{prefix}_{re.escape(name)}_\d{{8}}_\d{{6}}\.tar\.gz(\.age)?$")
    return sorted(p.name for p in repo.root.iterdir() if pattern.match(p.name))


def _plain_tar(db: PgTarget, repo: LocalStorage, env: dict[str, str], artifact: str) -> bytes:
    """``safehold cat ARTIFACT``: the backup's plain tar (decrypted, checked)."""
    done = subprocess.run(
        [sys.executable, "-m", "safehold", "cat", artifact],
        env={**seed_env(db, repo.root), **env},
        cwd=repo.root.parent,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _facts(repo: LocalStorage, artifact: str) -> dict[str, Any]:
    facts: dict[str, Any] = json.loads(repo.path(manifest_key(artifact)).read_text())["facts"]
    return facts


@pytest.fixture
def second_volume(client: docker.DockerClient) -> Iterator[Volume]:
    created = client.volumes.create(name=f"safehold-other-{secrets.token_hex(4)}")
    try:
        yield created
    finally:
        for container in client.containers.list(all=True, filters={"volume": created.name}):
            container.remove(force=True)
        created.remove(force=True)


def test_chunked_volume_backup_and_restore_from_latest(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    volume: Volume,
    tmp_path: Path,
) -> None:
    writer, reader = _keys(run_cli, tmp_path)
    docker_env = {"DOCKER_HOST": engine.base_url}
    name = str(volume.name)
    run_in(client, image, name, FILL)
    taken = _seen(client, image, name)
    assert taken[0]["./hard-a"][-1] == ("./docs/a.txt", "./hard-a")  # a hardlink group
    assert taken[0]["./docs/deep/link-up"][0] == ("link", "../../keep.txt")

    made = run_cli("backup", "--volume", name, "--json", env={**writer, **docker_env})
    (snap,) = json.loads(_ok(made).stdout)
    assert snap["target"] == f"volume:{name}" and snap["snapshot"]
    assert snap["stats"]["files"] >= 5
    assert not list(repo.root.glob("volume_*"))
    listed = json.loads(_ok(run_cli("snapshots", "list", "--json", env=writer)).stdout)
    assert [s["snapshot"] for s in listed] == [snap["snapshot"]]

    run_in(client, image, name, CHANGE)
    changed = _seen(client, image, name)
    assert changed != taken and "./gone.txt" not in changed[0] and "./added.txt" in changed[0]

    restored = run_cli("restore", "--volume", f"{name}:latest", env={**reader, **docker_env})
    _ok(restored)
    assert _seen(client, image, name) == taken
    exported = _archives(repo, "volume", name)
    assert len(exported) == 1 and exported[0].endswith(".tar.gz.age"), exported
    assert _facts(repo, exported[0])["snapshot"] == snap["snapshot"]
    (safety,) = _archives(repo, "safety_volume", name)
    assert safety in restored.stdout and safety.endswith(".age")
    # The safety backup holds the content the restore replaced.
    with tarfile.open(fileobj=io.BytesIO(_plain_tar(db, repo, reader, safety))) as kept:
        names = {m.name.removeprefix("./") for m in kept.getmembers()}
        assert "added.txt" in names and "gone.txt" not in names and "hard-a" in names
        keep = kept.extractfile("./keep.txt")
        assert keep is not None and keep.read() == b"keep me\nchanged\n"

    # A second restore of the same snapshot reuses the exported file.
    run_in(client, image, name, "printf 'again\\n' > /data/docs/a.txt")
    again = run_cli("restore", "--volume", f"{name}:latest", env={**reader, **docker_env})
    _ok(again)
    assert _seen(client, image, name) == taken
    assert _archives(repo, "volume", name) == exported
    safeties = _archives(repo, "safety_volume", name)
    assert len(safeties) == 2 and safety in safeties
    # 'list' shows the snapshot, the file exported from it and the safety copies, all good.
    rows = json.loads(_ok(run_cli("list", "--json", env=reader)).stdout)
    seen = {r["name"]: (r["kind"], r["compression"], r["status"]) for r in rows}
    assert seen[snap["snapshot"]] == ("volume", "chunked", "ok"), rows
    assert seen[exported[0]] == ("volume", "gzip", "ok"), rows
    assert [seen[s] for s in safeties] == [("safety", "gzip", "ok")] * 2, rows


def test_chunked_volume_restore_needs_the_identity(
    run_cli: CliRunner,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    volume: Volume,
    tmp_path: Path,
) -> None:
    writer, _ = _keys(run_cli, tmp_path)
    env = {**writer, "DOCKER_HOST": engine.base_url}
    name = str(volume.name)
    run_in(client, image, name, FILL)
    (snap,) = json.loads(_ok(run_cli("backup", "--volume", name, "--json", env=env)).stdout)
    run_in(client, image, name, CHANGE)
    changed = _seen(client, image, name)

    for ref in ("latest", snap["snapshot"]):
        refused = run_cli("restore", "--volume", f"{name}:{ref}", env=env)
        assert refused.returncode != 0, refused.stdout
        assert "identity" in refused.stderr, refused.stderr
    assert _seen(client, image, name) == changed
    assert not list(repo.root.glob("volume_*")) and not list(repo.root.glob("safety_*"))


def test_chunked_targets_keep_one_volume_chunked_and_another_a_tar_file(
    run_cli: CliRunner,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    volume: Volume,
    second_volume: Volume,
    tmp_path: Path,
) -> None:
    writer, reader = _keys(run_cli, tmp_path)
    chunked, plain = str(volume.name), str(second_volume.name)
    # The environment's list: comma-separated, blanks around items ignored; a pattern that
    # matches nothing here beside the exact name.
    targets = {"SAFEHOLD_BACKUP_CHUNKED_TARGETS": f" nothing-*, {chunked} ,"}
    writer = {k: v for k, v in writer.items() if k != "SAFEHOLD_FORMAT"} | targets
    reader = {k: v for k, v in reader.items() if k != "SAFEHOLD_FORMAT"} | targets
    docker_env = {"DOCKER_HOST": engine.base_url}
    for name in (chunked, plain):
        run_in(client, image, name, FILL + f" && printf '{name}\\n' > /data/whose")
    taken = {name: _seen(client, image, name) for name in (chunked, plain)}

    made = run_cli(
        "backup", "--volume", chunked, "--volume", plain, "--json", env={**writer, **docker_env}
    )
    printed = json.loads(_ok(made).stdout)
    snaps = [p for p in printed if "snapshot" in p]
    files = [p for p in printed if "artifact" in p]
    assert [s["target"] for s in snaps] == [f"volume:{chunked}"]
    assert [(m["kind"], m["target"]) for m in files] == [("volume", plain)]
    assert not list(repo.root.glob(f"volume_{chunked}_*"))
    (tar_file,) = _archives(repo, "volume", plain)
    assert tar_file == files[0]["artifact"] and tar_file.endswith(".tar.gz.age")

    # 'latest' of each: the snapshot for the chunked one, the tar file for the other.
    for name in (chunked, plain):
        run_in(client, image, name, CHANGE)
    both = ("--volume", f"{chunked}:latest", "--volume", f"{plain}:latest")
    _ok(run_cli("restore", *both, env={**reader, **docker_env}))
    assert {name: _seen(client, image, name) for name in (chunked, plain)} == taken
    (exported,) = _archives(repo, "volume", chunked)
    assert _archives(repo, "volume", plain) == [tar_file]
    assert _facts(repo, exported)["snapshot"] == snaps[0]["snapshot"]
    assert "snapshot" not in _facts(repo, tar_file)


def test_a_dry_run_restore_of_a_snapshot_writes_nothing(
    run_cli: CliRunner,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    volume: Volume,
    tmp_path: Path,
) -> None:
    writer, reader = _keys(run_cli, tmp_path)
    name = str(volume.name)
    run_in(client, image, name, FILL)
    _ok(run_cli("backup", "--volume", name, env={**writer, "DOCKER_HOST": engine.base_url}))
    run_in(client, image, name, CHANGE)
    changed = _seen(client, image, name)
    before = sorted(p.name for p in repo.root.iterdir())

    plan = run_cli(
        "restore",
        "--volume",
        f"{name}:latest",
        "--dry-run",
        env={**reader, "DOCKER_HOST": engine.base_url},
    )

    assert plan.returncode == 0, plan.stderr
    assert "plan (dry run, nothing changed)" in plan.stdout and "export snapshot" in plan.stdout
    assert _seen(client, image, name) == changed
    assert sorted(p.name for p in repo.root.iterdir()) == before, "the dry run wrote files"
