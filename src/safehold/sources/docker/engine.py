"""The Docker engine as volume operations need it: client, mountpoints, the containers that use
a volume, their hooks, and stopping and starting them in parallel (``stops`` orders them; the
journalled downtime around a copy is ``operations.volumes.downtime``). Everything goes through
the docker SDK (``DOCKER_HOST``: local socket, tcp or ssh); nothing is ever pulled."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import docker
import docker.errors
import requests
from docker.models.containers import Container

from ... import naming
from ...errors import DockerUnavailable, HookFailed, SafeholdError, TargetInUse, UsageError
from ...model import Event, EventSink
from .stops import (
    DEFAULT_TIMEOUT_S,
    PARALLEL,
    Stop,
    dependents,
    depends_on,
    run_ordered,
)

# Containers carrying this label (value "true") are stopped while a volume they use is copied.
STOP_LABEL = "safehold.stop-during-backup"
# The [docker] stop_timeout default; a container's label or its own stop timeout wins.
STOP_TIMEOUT_S = DEFAULT_TIMEOUT_S
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
        # A connection per stop or start in flight (container_stops.PARALLEL at once).
        client = docker.from_env(max_pool_size=PARALLEL)
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


def stop_all(planned: list[Stop], sink: EventSink, why: str, down: list[Container]) -> None:
    """Stop the containers in parallel, each once its dependents are down, adding each to
    ``down`` once stopped: a caller can then start exactly those again. After a failure no
    new stop begins; the ones in flight finish, then the first error is raised."""
    errors: list[BaseException] = []

    def begin(stop: Stop) -> None:
        sink(Event("containers", f"stopping {stop.container.name} for the {why}"))

    def end(stop: Stop, error: BaseException | None) -> None:
        if error is None:
            down.append(stop.container)
        else:
            errors.append(error)

    run_ordered(
        planned,
        dependents(depends_on([s.container for s in planned])),
        lambda stop: stop.container.stop(timeout=stop.timeout),
        before=begin,
        after=end,
        halt_on_error=True,
    )
    if errors:
        raise errors[0]


def start_again(down: list[Container], sink: EventSink, why: str) -> None:
    """Start ``down`` in parallel, each once the ones it depends on run (the reverse of the
    stopping order); every one is tried, failures are one error at the end."""
    failed = []

    def end(container: Container, error: BaseException | None) -> None:
        if error is None:
            sink(Event("containers", f"started {container.name} again"))
            return
        if not isinstance(error, (docker.errors.DockerException, requests.RequestException)):
            raise error
        failed.append(f"{container.name}: {error}")
        sink(Event("containers", f"could not start {container.name}: {error}", "error"))

    run_ordered(
        down,
        depends_on(down),
        lambda container: container.start(),
        before=lambda _container: None,
        after=end,
        halt_on_error=False,
    )
    if failed:
        raise SafeholdError(
            f"containers stopped for the {why} did not start again: {'; '.join(failed)}",
            hint="start them by hand (docker start NAME) and check their logs; the next "
            "safehold command tries again",
        )


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
