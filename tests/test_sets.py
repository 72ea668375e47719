"""Full-system backup sets (backup --all) on a private Docker engine and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
from docker.models.images import Image

from safehold import catalog
from safehold.compress import open_decompressor
from safehold.errors import SafeholdError, UsageError
from safehold.operations.database.backup import BackupOptions
from safehold.operations.system.backup import SetOptions, backup_set
from safehold.operations.volumes.extract import extract_tree
from safehold.operations.volumes.options import VolumeOptions
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.docker.engine import select_volumes
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner

MakeVolume = Callable[..., Path]


@pytest.fixture
def make_volume(client: docker.DockerClient) -> Iterator[MakeVolume]:
    """Creates volumes (removed afterwards) and fills them straight through their mountpoint:
    the engine is local, and filling 100 volumes by container would take minutes on vfs."""
    made: list[str] = []

    def make(name: str, files: dict[str, bytes], labels: dict[str, str] | None = None) -> Path:
        volume = client.volumes.create(name=name, labels=labels or {})
        made.append(name)
        root = Path(volume.attrs["Mountpoint"])
        for rel, data in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return root

    yield make
    for name in made:
        for container in client.containers.list(all=True, filters={"volume": name}):
            container.remove(force=True)
        client.volumes.get(name).remove(force=True)


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every entry below root: mode, mtime (whole seconds) and content or link target."""
    found: dict[str, tuple[int, int, bytes | str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                body: bytes | str = os.readlink(path)
            elif path.is_file():
                body = path.read_bytes()
            else:
                body = "dir"
            found[rel] = (st.st_mode, int(st.st_mtime), body)
    return found


def test_backup_all_makes_one_set_of_database_and_selected_volumes(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    make_volume: MakeVolume,
) -> None:
    tag = secrets.token_hex(3)
    make_volume(f"app-{tag}", {"config.json": b'{"a": 1}'})
    make_volume(f"user-1-{tag}", {"notes/one.txt": b"one"})
    make_volume(f"user-2-{tag}", {"notes/two.txt": b"two"}, {"tier": "gold"})
    make_volume(f"other-{tag}", {"x": b"not selected"})
    env = {
        "DOCKER_HOST": engine.base_url,
        "SAFEHOLD_VOLUMES_INCLUDE": f"app-{tag},user-*-{tag}",
        "SAFEHOLD_VOLUMES_EXCLUDE": "user-9-*",
    }

    result = run_cli("backup", "--all", "--json", env=env)

    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    set_id = made["id"]
    assert made["database"] == db.dbname
    assert made["volumes"] == [f"app-{tag}", f"user-1-{tag}", f"user-2-{tag}"]
    assert len(made["members"]) == 5 and made["members"][0].startswith("db_backup_")
    assert made["members"][1].startswith("db_globals_")  # the roles the dump needs
    # Every member carries the set's stamp and id; the set record is in the repository.
    assert all(set_id in member for member in made["members"])
    assert {m["set_id"] for m in made["manifests"]} == {set_id}
    assert repo.exists(f".safehold/sets/{set_id}.json")
    listed = json.loads(run_cli("list", "--json", env=env).stdout)
    assert {r["name"] for r in listed if r["set_id"] == set_id} == set(made["members"])
    sets = json.loads(run_cli("list", "--sets", "--json", env=env).stdout)
    assert [(s["id"], s["status"]) for s in sets] == [(set_id, "ok")]
    table = run_cli("list", env=env).stdout
    assert table.count(set_id) >= 4 + 4  # in each member's name and in its SET column
    # The latest links point at the set's members.
    assert repo.path(f"volume_user-1-{tag}_latest.tar.gz").resolve().name in made["members"]


def test_set_members_round_trip_with_modes_and_mtimes(
    repo: LocalStorage, client: docker.DockerClient, make_volume: MakeVolume, tmp_path: Path
) -> None:
    name = f"user-rt-{secrets.token_hex(3)}"
    root = make_volume(name, {"a/b.txt": b"b" * 5000, "c.bin": os.urandom(70000)})
    (root / "a" / "b.txt").chmod(0o640)
    os.utime(root / "c.bin", (1_600_000_000, 1_600_000_000))
    (root / "link").symlink_to("a/b.txt")
    (root / "empty").mkdir()
    before = snapshot(root)

    made = backup_set(
        repo,
        database=None,
        client=client,
        volumes=[name],
        options=SetOptions(BackupOptions(), VolumeOptions(compression="zstd")),
    )

    (member,) = made.members
    assert member.endswith(".tar.zst")
    out = tmp_path / "out"
    out.mkdir()
    with repo.open_reader(member) as raw:
        extract_tree(open_decompressor("zstd", raw), out)
    assert snapshot(out) == before


def test_a_failed_member_leaves_no_set_record_and_keeps_the_others(
    db: PgTarget, repo: LocalStorage, client: docker.DockerClient, make_volume: MakeVolume
) -> None:
    name = f"user-ok-{secrets.token_hex(3)}"
    make_volume(name, {"f.txt": b"kept"})
    missing_db = db.with_db("safehold_no_such_database")

    with pytest.raises(SafeholdError) as failed:
        backup_set(
            repo,
            database=missing_db,
            client=client,
            volumes=[name],
            options=SetOptions(BackupOptions()),
        )

    assert "1 of 2 members failed" in failed.value.message
    assert "database" in failed.value.message
    assert catalog.read_sets(repo) == []
    (record,) = catalog.scan(repo)
    assert record.status == "ok" and record.manifest is not None
    assert record.manifest.target == name and record.manifest.set_id is not None
    assert not list(repo.root.glob(".*partial*")) and not list(repo.root.glob("db_backup_*"))


def test_selection_by_name_pattern_label_and_exclude(
    client: docker.DockerClient, make_volume: MakeVolume
) -> None:
    tag = secrets.token_hex(3)
    for name, labels in (
        (f"app-{tag}", {}),
        (f"user-1-{tag}", {}),
        (f"user-2-{tag}", {}),
        (f"cache-{tag}", {f"backup-{tag}": "yes"}),
    ):
        make_volume(name, {}, labels)

    assert select_volumes(client, (f"user-*-{tag}",)) == [f"user-1-{tag}", f"user-2-{tag}"]
    assert select_volumes(client, (f"app-{tag}",), (f"backup-{tag}=yes",)) == [
        f"app-{tag}",
        f"cache-{tag}",
    ]
    assert select_volumes(client, (f"*-{tag}",), exclude=("user-2-*", "cache-*")) == [
        f"app-{tag}",
        f"user-1-{tag}",
    ]
    assert select_volumes(client, (f"nobody-*-{tag}",)) == []
    with pytest.raises(UsageError, match="no Docker volume"):
        select_volumes(client, (f"absent-{tag}",))


def test_a_container_using_two_volumes_is_stopped_once_and_started_again(
    run_cli: CliRunner,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    image: Image,
    make_volume: MakeVolume,
) -> None:
    tag = secrets.token_hex(3)
    for name in (f"v1-{tag}", f"v2-{tag}"):
        make_volume(name, {"data.txt": name.encode()})
    app = client.containers.run(
        image,
        # As PID 1, sleep would ignore SIGTERM and every stop would wait out the timeout.
        ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"],
        name=f"app-{tag}",
        labels={"safehold.stop-during-backup": "true"},
        volumes={f"v1-{tag}": {"bind": "/a"}, f"v2-{tag}": {"bind": "/b"}},
        network_mode="none",
        detach=True,
    )
    started = app.attrs["State"]["StartedAt"]

    result = run_cli(
        "backup",
        "--all",
        "--no-database",
        "--volume",
        f"v*-{tag}",
        env={"DOCKER_HOST": engine.base_url},
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"stopping app-{tag}") == 1
    app.reload()
    assert app.status == "running" and app.attrs["State"]["StartedAt"] != started


def test_all_over_100_small_volumes_is_well_under_a_minute(
    run_cli: CliRunner,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    make_volume: MakeVolume,
) -> None:
    tag = secrets.token_hex(3)
    for number in range(100):
        files = {f"u/{i}.json": os.urandom(512).hex().encode() * 10 for i in range(100)}
        make_volume(f"user-{number:03d}-{tag}", files)

    began = time.monotonic()
    result = run_cli(
        "backup",
        "--all",
        "--no-database",
        "--volume",
        f"user-*-{tag}",
        "--json",
        env={"DOCKER_HOST": engine.base_url},
    )
    took = time.monotonic() - began

    assert result.returncode == 0, result.stderr
    made = json.loads(result.stdout)
    assert len(made["members"]) == 100
    assert all(m["facts"]["files"] == 100 for m in made["manifests"])
    assert took < 30, f"100 volumes took {took:.1f}s"
    print(f"backup --all over 100 volumes of ~1 MB: {took:.2f}s")
