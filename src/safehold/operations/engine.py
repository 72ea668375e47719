"""The Docker engine as volume operations need it: client, mountpoints, the containers that use
a volume, and stopping them for a consistent copy. Everything goes through the docker SDK
(``DOCKER_HOST``: local socket, tcp or ssh); nothing is ever pulled."""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import requests
from docker.models.containers import Container

from .. import _proc, naming
from ..errors import DockerUnavailable, HookFailed, SafeholdError, TargetInUse, UsageError
from ..model import Event, EventSink
from ..storage import LocalStorage
from . import journal

# Containers carrying this label (value "true") are stopped while a volume they use is copied.
STOP_LABEL = "safehold.stop-during-backup"
STOP_TIMEOUT_S = 30
KIND = "stopped_containers"  # their journal entries
# Commands (run with sh -c inside the container) around a backup of a volume it uses.
PRE_LABEL = "safehold.pre-backup"
POST_LABEL = "safehold.post-backup"
HOOK_OUTPUT_LINES = 20
# Docker's own rule for volume names; safehold uses it for folder targets too.
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def check_target_name(target_name: str) -> None:
    if not _VOLUME_NAME.match(target_name):
        raise UsageError(
            f"{target_name!r} is not a valid volume name",
            hint="use letters, digits, '_', '.' and '-', starting with a letter or digit, "
            "at least two characters (Docker's volume name rules)",
        )


def connect_docker() -> docker.DockerClient:
    """The engine named by DOCKER_HOST (local socket, tcp or ssh), or the default socket."""
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    return client


def volume_mountpoint(client: docker.DockerClient, name: str) -> Path:
    check_target_name(name)
    try:
        volume = client.volumes.get(name)
    except docker.errors.NotFound:
        raise UsageError(f"no Docker volume {name}", hint="'docker volume ls' lists them") from None
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    return Path(str(volume.attrs["Mountpoint"]))


def users_of(
    client: docker.DockerClient, volume: str, *, label: str | None = None
) -> list[Container]:
    """Running containers that mount ``volume`` (only those labelled ``label=true`` if given)."""
    filters: dict[str, str | list[str] | bool] = {"volume": volume}
    if label is not None:
        filters["label"] = f"{label}=true"
    try:
        return list(client.containers.list(filters=filters))
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc


@contextlib.contextmanager
def stopped(
    containers: list[Container], sink: EventSink, why: str, repo: LocalStorage | None = None
) -> Iterator[None]:
    """Stop ``containers`` for the block, then start them again in reverse order — also when
    the block fails. A container that will not start again is an error of its own. With
    ``repo``, they are journalled there first, so a run killed meanwhile is finished by the
    next one (see ``Downtime``)."""
    downtime = Downtime(sink, why, repo)
    try:
        downtime.stop(containers)
        yield
    finally:
        downtime.start()


class Downtime:
    """The containers one run stops, and starting them again however the run ends.

    With a repository, they are recorded there (``stopped_containers``, ids and names) before
    the first is stopped and crossed out once all run again: a run killed in between leaves the
    entry, and the next command starts them (``recovery_containers``). A stop or start is never
    cut in two by SIGTERM/SIGINT (``_proc.shielded``): the interruption is raised after it."""

    def __init__(self, sink: EventSink, why: str, repo: LocalStorage | None = None) -> None:
        self.sink = sink
        self.why = why
        self.repo = repo
        self.down: list[Container] = []
        self.entry: journal.Entry | None = None

    def stop(self, containers: list[Container]) -> None:
        if self.repo is not None and containers:
            recorded = [{"id": str(c.id), "name": str(c.name)} for c in containers]
            data = {"containers": recorded, "why": self.why}
            with _proc.shielded():
                self.entry = journal.record(self.repo, KIND, data, f"safehold {self.why}")
        for container in containers:
            with _proc.shielded():
                stop_all([container], self.sink, self.why, self.down)

    def start(self) -> None:
        with _proc.shielded():
            start_again(self.down, self.sink, self.why)  # raises if one did not start
            self.down.clear()
            if self.entry is not None and self.repo is not None:
                journal.done(self.repo, self.entry)
                self.entry = None


def stop_all(containers: list[Container], sink: EventSink, why: str, down: list[Container]) -> None:
    """Stop each container, adding it to ``down`` once stopped: a caller can then start exactly
    those again, also when a later one fails to stop."""
    for container in containers:
        sink(Event("containers", f"stopping {container.name} for the {why}"))
        container.stop(timeout=STOP_TIMEOUT_S)
        down.append(container)


def start_again(down: list[Container], sink: EventSink, why: str) -> None:
    """Start ``down`` in reverse order; every one is tried, failures are one error at the end."""
    failed = []
    for container in reversed(down):
        try:
            container.start()
            sink(Event("containers", f"started {container.name} again"))
        except (docker.errors.DockerException, requests.RequestException) as exc:
            failed.append(f"{container.name}: {exc}")
            sink(Event("containers", f"could not start {container.name}: {exc}", "error"))
    if failed:
        raise SafeholdError(
            f"containers stopped for the {why} did not start again: {'; '.join(failed)}",
            hint="start them by hand (docker start NAME) and check their logs; the next "
            "safehold command tries again",
        )


@contextlib.contextmanager
def quiesced(
    client: docker.DockerClient | None,
    volumes: list[str],
    sink: EventSink,
    why: str,
    repo: LocalStorage | None = None,
) -> Iterator[None]:
    """Around a copy of ``volumes``: the pre-backup commands of the running containers using
    them (a failure stops here), the labelled ones stopped for the block and started again
    (also when it fails), then the post-backup commands. A container using several volumes is
    handled once. ``repo``: where the stopped ones are journalled (see ``Downtime``)."""
    users: dict[str, Container] = {}
    for volume in volumes:
        assert client is not None, "volumes need the engine"
        for container in users_of(client, volume):
            users.setdefault(str(container.id), container)
    running = list(users.values())
    run_hooks(running, PRE_LABEL, sink)
    to_stop = [c for c in running if (c.labels or {}).get(STOP_LABEL) == "true"]
    with stopped(to_stop, sink, why, repo):
        yield
    run_hooks(running, POST_LABEL, sink)


def select_volumes(
    client: docker.DockerClient,
    include: tuple[str, ...],
    labels: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Volume names chosen by name, pattern (``user-*``) or label (``key`` or ``key=value``),
    minus ``exclude``; sorted. A plain name that does not exist is an error, a pattern that
    matches nothing is not (no users yet is a normal state)."""
    try:
        present = sorted(str(v.name) for v in client.volumes.list())
        labelled = {
            str(v.name) for label in labels for v in client.volumes.list(filters={"label": label})
        }
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    chosen = set(labelled)
    for pattern in include:
        if naming.is_pattern(pattern):
            chosen.update(fnmatch.filter(present, pattern))
            continue
        check_target_name(pattern)
        if pattern not in present:
            raise UsageError(
                f"no Docker volume {pattern}",
                hint="'docker volume ls' lists them; fix [volumes] include or --volume",
            )
        chosen.add(pattern)
    return sorted(n for n in chosen if not any(fnmatch.fnmatchcase(n, x) for x in exclude))


def refuse_if_in_use(client: docker.DockerClient, name: str) -> None:
    try:
        running = client.containers.list(filters={"volume": name})
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    if running:
        names = ", ".join(sorted(str(c.name) for c in running))
        raise TargetInUse(
            f"volume {name} is used by running containers: {names}; nothing was changed",
            hint=f"stop them first (docker stop {names}), then restore again",
        )


def unavailable(exc: BaseException) -> DockerUnavailable:
    return DockerUnavailable(
        f"cannot reach the Docker engine: {exc}",
        hint="start Docker, or point DOCKER_HOST at the engine's socket "
        "(e.g. unix:///var/run/docker.sock) and check you may use it",
    )


def run_hooks(containers: list[Container], label: str, sink: EventSink) -> None:
    """Run each container's ``label`` command inside it; its output is logged, and a failure
    is an error naming the container, the exit code and the output's tail."""
    for container in containers:
        command = (container.labels or {}).get(label)
        if not command:
            continue
        sink(Event("hook", f"{label} in {container.name}: {command}"))
        try:
            result = container.exec_run(["sh", "-c", command])
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise unavailable(exc) from exc
        output = result.output if isinstance(result.output, bytes) else b"".join(result.output)
        lines = output.decode("utf-8", "replace").splitlines()
        for line in lines[-HOOK_OUTPUT_LINES:]:
            sink(Event("hook", f"{container.name}: {line}"))
        if result.exit_code != 0:
            tail = " | ".join(lines[-3:]) or "no output"
            raise HookFailed(
                f"{label} command in container {container.name} failed "
                f"(exit {result.exit_code}): {tail}",
                hint=f"fix the command in the container's '{label}' label, or remove the label",
            )
