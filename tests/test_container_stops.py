"""Consistent copies: labelled containers are stopped for a volume backup and always restarted;
stops run in parallel in compose's depends_on order, each with its own timeout."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from docker.models.images import Image
from docker.models.volumes import Volume

from safehold import catalog, config
from safehold.errors import HookFailed, StorageError, UsageError
from safehold.model import Event
from safehold.operations import journal
from safehold.operations.volumes.docker import backup_volume, restore_volume
from safehold.operations.volumes.downtime import Downtime
from safehold.sources.docker.engine import POST_LABEL, PRE_LABEL, STOP_LABEL
from safehold.sources.docker.stops import (
    COMPOSE_DEPENDS_ON,
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    TIMEOUT_LABEL,
)
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


def test_labelled_containers_stop_for_the_copy_and_start_again(
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
    # Independent containers (no depends_on) stop and start together, in no fixed order.
    assert {m.split()[1] for m in starts} == {m.split()[1] for m in stops}
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


# ---- parallel stops in compose's depends_on order (issue 14) ----

# Ignores SIGTERM (PID 1 without a handler does anyway): each stop costs its full timeout.
STUBBORN = "trap '' TERM; while :; do sleep 1; done"


@pytest.fixture
def project(client: docker.DockerClient) -> Iterator[str]:
    name = f"stops-{secrets.token_hex(3)}"
    try:
        yield name
    finally:
        for container in client.containers.list(all=True, filters={"name": name}):
            container.remove(force=True)


def service(
    client: docker.DockerClient,
    image: Image,
    project: str,
    name: str,
    depends: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
) -> Container:
    """A container as docker compose v2 labels it (``depends_on`` = svc:condition:restart)."""
    compose = {
        COMPOSE_PROJECT: project,
        COMPOSE_SERVICE: name,
        COMPOSE_DEPENDS_ON: ",".join(f"{d}:service_started:false" for d in depends),
    }
    return client.containers.run(
        image,
        ["sh", "-c", STUBBORN],
        name=f"{project}-{name}-1",
        labels=compose | (labels or {}),
        network_mode="none",
        detach=True,
    )


def engine_times(client: docker.DockerClient, since: float, action: str) -> dict[str, float]:
    """The engine's time (seconds) of each container's first ``action`` event since ``since``."""
    found: dict[str, float] = {}
    for event in client.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        filters={"type": "container", "event": action},
        decode=True,
    ):
        at = int(event["timeNano"]) / 1e9
        if at >= since:  # (whole seconds asked for: the ones before are not this test's)
            found.setdefault(str(event["Actor"]["Attributes"]["name"]), at)
    return found


def test_containers_that_ignore_sigterm_stop_in_about_one_timeout_not_n(
    client: docker.DockerClient, image: Image, project: str
) -> None:
    containers = [service(client, image, project, f"s{n}") for n in range(5)]
    downtime = Downtime(lambda _event: None, "test", stop_timeout=2)

    began = time.monotonic()
    downtime.stop(containers)
    stopping_s = time.monotonic() - began
    began = time.monotonic()
    downtime.start()
    starting_s = time.monotonic() - began

    # One after the other: 5 x 2 s. Together: one timeout, plus the engine's own work.
    assert 1.9 <= stopping_s < 5.0, stopping_s
    assert starting_s < 5.0, starting_s
    for container in containers:
        container.reload()
        assert container.status == "running"


def test_dependents_stop_first_and_start_last_independent_ones_together(
    repo: LocalStorage, client: docker.DockerClient, image: Image, project: str
) -> None:
    # web -> api -> db, worker -> db, cache -> (nothing); one second to stop each.
    quick = {TIMEOUT_LABEL: "1"}
    graph = {"db": (), "cache": (), "api": ("db", "cache"), "web": ("api",), "worker": ("db",)}
    made = {n: service(client, image, project, n, d, quick) for n, d in graph.items()}
    names = {n: str(c.name) for n, c in made.items()}
    events: list[Event] = []
    downtime = Downtime(events.append, "test", repo, stop_timeout=30)
    since = time.time()

    downtime.stop(list(reversed(made.values())))  # any order in: the labels decide
    (entry,) = journal.entries(repo)
    downtime.start()

    signalled = engine_times(client, since, "kill")  # the stop signal: the stop begins
    died = engine_times(client, since, "die")
    started = engine_times(client, since, "start")
    for name, needs in graph.items():
        for dependency in needs:
            assert died[names[name]] <= signalled[names[dependency]], (name, dependency)
            assert started[names[dependency]] <= started[names[name]], (name, dependency)
    # Leaves stop at once; three levels (web, api, db) take about three timeouts of 1 s.
    first = [signalled[names[n]] for n in ("web", "worker")]
    assert max(first) - min(first) < 0.5, signalled
    assert signalled[names["db"]] - signalled[names["web"]] < 2 + 1.5, signalled
    # The journal holds a stopping order (its reverse is how the next run starts them) and
    # each container's timeout: the label's, not the default.
    recorded = [c["name"] for c in entry.data["containers"]]
    for name, needs in graph.items():
        for dependency in needs:
            assert recorded.index(names[name]) < recorded.index(names[dependency])
    assert {c["timeout"] for c in entry.data["containers"]} == {1}
    assert journal.entries(repo) == []
    stops = [e.message.split()[1] for e in events if e.message.startswith("stopping")]
    assert sorted(stops) == sorted(names.values())


def test_the_label_overrides_the_stop_timeout_and_a_bad_one_stops_nothing(
    repo: LocalStorage, client: docker.DockerClient, image: Image, project: str
) -> None:
    quick = service(client, image, project, "quick", labels={TIMEOUT_LABEL: "1"})
    downtime = Downtime(lambda _event: None, "test", stop_timeout=30)
    began = time.monotonic()
    downtime.stop([quick])
    assert time.monotonic() - began < 5.0  # its label's 1 s, not the 30 s default
    downtime.start()

    bad = service(client, image, project, "bad", labels={TIMEOUT_LABEL: "soon"})
    before = started_at(quick), started_at(bad)
    with pytest.raises(UsageError, match=TIMEOUT_LABEL):
        Downtime(lambda _event: None, "test", repo).stop([quick, bad])
    assert (started_at(quick), started_at(bad)) == before  # checked before anything stopped
    assert journal.entries(repo) == []


def test_the_configured_stop_timeout_reaches_a_volume_restore(
    repo: LocalStorage, client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    run_in(client, image, volume.name, "echo v1 > /data/state")
    backup_volume(client, volume.name, repo)
    stubborn = client.containers.run(
        image,
        ["sh", "-c", STUBBORN],
        name=f"{volume.name}-stubborn",
        volumes={volume.name: {"bind": "/data", "mode": "rw"}},
        network_mode="none",
        detach=True,
    )
    timeout = config.load(env={"SAFEHOLD_DOCKER_STOP_TIMEOUT": "2"}).docker.stop_timeout

    began = time.monotonic()
    restore_volume(client, volume.name, repo, "latest", stop_containers=True, stop_timeout=timeout)
    took = time.monotonic() - began

    # The container ignores SIGTERM: the stop costs the whole timeout, 2 s and not the 10 s default.
    assert timeout == 2 and 1.9 <= took < 9.0, took
    stubborn.reload()
    assert stubborn.status == "running"
    stubborn.remove(force=True)
