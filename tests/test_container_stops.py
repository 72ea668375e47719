"""Consistent copies: labelled containers are stopped for a volume backup and always restarted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from docker.models.images import Image
from docker.models.volumes import Volume

from safehold import catalog
from safehold.errors import HookFailed, StorageError
from safehold.model import Event
from safehold.operations.docker_volume import backup_volume, restore_volume
from safehold.operations.engine import POST_LABEL, PRE_LABEL, STOP_LABEL
from safehold.storage import LocalStorage

from .conftest import run_in

# Exits promptly on SIGTERM even as PID 1, so a stop takes a moment, not the stop timeout.
WRITER = "trap 'exit 0' TERM; while true; do date >> /data/log; sleep 0.1; done"


def start(
    client: docker.DockerClient, image: Image, volume: Volume, name: str, *, labelled: bool
) -> Container:
    return client.containers.run(
        image,
        ["sh", "-c", WRITER],
        name=name,
        volumes={volume.name: {"bind": "/data", "mode": "rw"}},
        labels={STOP_LABEL: "true"} if labelled else {},
        network_mode="none",
        detach=True,
    )


def started_at(container: Container) -> str:
    container.reload()
    assert container.status == "running"
    return str(container.attrs["State"]["StartedAt"])


def test_labelled_containers_stop_for_the_copy_and_restart_in_reverse_order(
    repo: LocalStorage, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    first = start(client, image, volume, f"{volume.name}-a", labelled=True)
    second = start(client, image, volume, f"{volume.name}-b", labelled=True)
    bystander = start(client, image, volume, f"{volume.name}-c", labelled=False)
    before = {c.name: started_at(c) for c in (first, second, bystander)}
    events: list[Event] = []

    manifest = backup_volume(client, volume.name, repo, sink=events.append)

    after = {c.name: started_at(c) for c in (first, second, bystander)}
    assert after[first.name] != before[first.name] and after[second.name] != before[second.name]
    assert after[bystander.name] == before[bystander.name]  # not labelled: left alone
    moves = [e.message.split(" for ")[0] for e in events if e.kind == "containers"]
    stops = [m for m in moves if m.startswith("stopping")]
    starts = [m for m in moves if m.startswith("started")]
    assert len(stops) == 2 and len(starts) == 2
    order = [m.split()[1] for m in stops]
    assert [m.split()[1] for m in starts] == list(reversed(order))
    assert manifest.facts["files"] >= 1


def test_containers_restart_when_the_copy_fails(
    tmp_path: Path, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    run_in(client, image, volume.name, "head -c 4194304 /dev/urandom > /data/big")
    writer = start(client, image, volume, f"{volume.name}-w", labelled=True)
    before = started_at(writer)
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
    try:
        with pytest.raises(StorageError):  # the disk fills during the copy
            backup_volume(client, volume.name, LocalStorage(full / "repo"))
    finally:
        subprocess.run(["umount", str(full)], check=False)

    assert started_at(writer) != before  # it was stopped, and it runs again


def test_a_broken_repository_is_found_before_any_container_stops(
    tmp_path: Path, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    writer = start(client, image, volume, f"{volume.name}-w", labelled=True)
    before = started_at(writer)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")

    with pytest.raises(StorageError):
        backup_volume(client, volume.name, LocalStorage(blocker / "repo"))

    assert started_at(writer) == before  # never stopped for a copy that could not be written


def test_restore_with_stop_containers(
    repo: LocalStorage, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    run_in(client, image, volume.name, "echo v1 > /data/state")
    backup_volume(client, volume.name, repo)
    run_in(client, image, volume.name, "echo v2 > /data/state")
    app = start(client, image, volume, f"{volume.name}-app", labelled=False)
    before = started_at(app)

    result = restore_volume(client, volume.name, repo, "latest", stop_containers=True)

    assert started_at(app) != before
    assert run_in(client, image, volume.name, "cat /data/state") == b"v1\n"
    assert result.safety_backup is not None


def hooked(
    client: docker.DockerClient, image: Image, volume: Volume, name: str, labels: dict[str, str]
) -> Container:
    return client.containers.run(
        image,
        ["sh", "-c", WRITER],
        name=name,
        volumes={volume.name: {"bind": "/data", "mode": "rw"}},
        labels=labels,
        network_mode="none",
        detach=True,
    )


def members(repo: LocalStorage, artifact: str) -> set[str]:
    listing = subprocess.run(
        ["tar", "-tzf", str(repo.path(artifact))], capture_output=True, text=True, check=True
    )
    return set(listing.stdout.split())


def test_pre_and_post_backup_commands_run_inside_the_container(
    repo: LocalStorage, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    hooked(
        client,
        image,
        volume,
        f"{volume.name}-h",
        {
            PRE_LABEL: "echo flushed > /data/flush-marker && echo pre-ran",
            POST_LABEL: "touch /data/post-marker",
            STOP_LABEL: "true",
        },
    )
    events: list[Event] = []

    manifest = backup_volume(client, volume.name, repo, sink=events.append)

    assert "./flush-marker" in members(repo, manifest.artifact)  # pre ran before the copy
    assert "./post-marker" not in members(repo, manifest.artifact)  # post ran after it
    assert run_in(client, image, volume.name, "ls /data/post-marker") == b"/data/post-marker\n"
    assert any(e.kind == "hook" and e.message.endswith("pre-ran") for e in events)


def test_a_failing_pre_command_stops_the_backup(
    repo: LocalStorage, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    app = hooked(
        client,
        image,
        volume,
        f"{volume.name}-f",
        {
            PRE_LABEL: "echo cannot flush >&2; exit 3",
            STOP_LABEL: "true",
        },
    )
    before = started_at(app)

    with pytest.raises(HookFailed) as caught:
        backup_volume(client, volume.name, repo)

    assert "exit 3" in caught.value.message and str(app.name) in caught.value.message
    assert "cannot flush" in caught.value.message
    assert not repo.root.exists() or not list(repo.root.glob("volume_*"))
    assert started_at(app) == before  # never stopped: the backup did not start


def test_a_failing_post_command_is_reported_but_the_backup_stands(
    repo: LocalStorage, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    hooked(client, image, volume, f"{volume.name}-p", {POST_LABEL: "exit 5"})
    with pytest.raises(HookFailed, match="was written and is good"):
        backup_volume(client, volume.name, repo)
    (record,) = [r for r in catalog.scan(repo) if r.kind == "volume"]
    assert record.status == "ok"
