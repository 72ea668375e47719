"""The Docker side of a full-system drill: copies of the application's containers on restored
data, cut off from everything the production system uses.

Every object a rehearsal creates carries the label ``org.safehold.drill=<drill id>`` and a
name starting ``safehold-drill-<drill id>-``: one labelled query finds all of them, so the
teardown (and the next command, after a kill) removes exactly the rehearsal and nothing else.

Isolation, and why each piece is there:

- one network per drill, ``internal`` (no route out of it) and without an IPv4 address on the
  host side of its bridge (``inhibit_ipv4``): the copies reach each other, under their compose
  service names and their originals' names, and nothing else: not the host (where a production
  database may listen), not the networks the originals use;
- no published ports: a copy cannot take a production port or receive production traffic;
- the originals' volumes are replaced by scratch volumes: a set's volume by its restored copy,
  any other volume by an empty one; a bind mount of a folder the set restored is replaced by
  its restored copy, any other bind mount is mounted read-only (configuration files the
  application needs; the rehearsal never writes into the host);
- compose and safehold labels are not copied: ``docker compose`` must not count a copy as part
  of the project, and backups must not stop or hook it. ``privileged``, capabilities, devices,
  restart policies and the host's PID/IPC namespaces are not copied either.

The health check runs inside the rehearsal: the container's own HEALTHCHECK (from its image or
its run options, carried into the copy and run by the engine in the copy). A copy without one
must be running, not restarting or exited, ``RUN_GRACE_S`` after it started.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import Mount

from ...errors import RestoreError, SafeholdError
from ...model import Event, EventSink
from ...sources.docker.engine import unavailable

DRILL_LABEL = "org.safehold.drill"  # value: the drill id
COPY_OF_LABEL = "org.safehold.drill-of"  # value: the original container's or volume's name
COMPOSE_SERVICE = "com.docker.compose.service"
_NOT_COPIED = ("com.docker.compose.", "safehold.", "org.safehold.")
RUN_GRACE_S = 3.0  # a copy without a HEALTHCHECK that crashes on its data exits within this
_POLL_S = 0.25
_LOG_LINES = 5


def object_name(drill_id: str, name: str) -> str:
    return f"safehold-drill-{drill_id}-{name}"


def labels(drill_id: str, original: str) -> dict[str, str]:
    return {DRILL_LABEL: drill_id, COPY_OF_LABEL: original}


def create_network(client: docker.DockerClient, drill_id: str) -> str:
    name = object_name(drill_id, "net")
    try:
        client.networks.create(
            name,
            driver="bridge",
            internal=True,
            labels={DRILL_LABEL: drill_id},
            options={"com.docker.network.bridge.inhibit_ipv4": "true"},
        )
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    return name


def create_volume(client: docker.DockerClient, drill_id: str, original: str) -> str:
    name = object_name(drill_id, original)
    try:
        client.volumes.create(name=name, labels=labels(drill_id, original))
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    return name


@dataclass(frozen=True)
class Scratch:
    """Where the rehearsal's data is: original volume -> scratch volume, folder -> folder."""

    drill_id: str
    network: str
    volumes: dict[str, str]
    folders: dict[str, str]


def create_copies(
    client: docker.DockerClient, originals: list[Container], scratch: Scratch, sink: EventSink
) -> list[Container]:
    """Create (not start) one copy per original, in the drill's network."""
    copies = []
    try:
        for original in originals:
            spec = _copy_spec(client, original, scratch)
            sink(Event("drill", f"creating {spec['name']}, a copy of {original.name}"))
            copies.append(client.containers.create(**spec))
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    return copies


def start_copies(copies: list[Container]) -> None:
    try:
        for copy in copies:
            copy.start()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise RestoreError(
            f"a copy of the application did not start in the rehearsal: {exc}",
            hint="the restored data or the image may be at fault; see the error above",
        ) from exc


def _copy_spec(
    client: docker.DockerClient, original: Container, scratch: Scratch
) -> dict[str, Any]:
    attrs = original.attrs
    config: dict[str, Any] = attrs.get("Config") or {}
    name = str(original.name)
    kept = {k: v for k, v in (config.get("Labels") or {}).items() if not k.startswith(_NOT_COPIED)}
    aliases = [name]
    service = (config.get("Labels") or {}).get(COMPOSE_SERVICE)
    if service:
        aliases.insert(0, str(service))
    spec: dict[str, Any] = {
        "image": attrs["Image"],  # the exact image the original runs, by id
        "command": config.get("Cmd"),
        "entrypoint": config.get("Entrypoint"),
        "environment": [*(config.get("Env") or []), f"SAFEHOLD_DRILL={scratch.drill_id}"],
        "working_dir": config.get("WorkingDir") or None,
        "user": config.get("User") or None,
        "labels": kept | labels(scratch.drill_id, name),
        "name": object_name(scratch.drill_id, name),
        "mounts": [_mount(client, m, scratch) for m in attrs.get("Mounts") or []],
        "network": scratch.network,
        "networking_config": {scratch.network: client.api.create_endpoint_config(aliases=aliases)},
        "stop_signal": config.get("StopSignal") or None,
        "tty": bool(config.get("Tty")),
    }
    if config.get("Healthcheck"):
        spec["healthcheck"] = config["Healthcheck"]
    return spec


def _mount(client: docker.DockerClient, mount: dict[str, Any], scratch: Scratch) -> Mount:
    target = str(mount["Destination"])
    read_only = not mount.get("RW", True)
    if mount.get("Type") == "volume":
        original = str(mount.get("Name") or "")
        source = scratch.volumes.get(original)
        if source is None:  # not in the set: an empty stand-in, never the production volume
            source = create_volume(client, scratch.drill_id, original[:40] or "anonymous")
            scratch.volumes[original] = source
        return Mount(target, source, type="volume", read_only=read_only)
    if mount.get("Type") == "bind":
        folder = str(mount.get("Source") or "")
        if folder in scratch.folders:
            return Mount(target, scratch.folders[folder], type="bind", read_only=read_only)
        return Mount(target, folder, type="bind", read_only=True)
    return Mount(target, None, type="tmpfs")


def wait_healthy(copies: list[Container], timeout: float, sink: EventSink) -> list[str]:
    """Until every copy with a HEALTHCHECK is healthy and every other one has kept running for
    ``RUN_GRACE_S``; returns what was checked, per copy. An exited or unhealthy copy fails at
    once, with its health output or its log's tail."""
    began = time.monotonic()
    deadline = began + timeout
    pending = list(copies)
    checked: dict[str, str] = {}
    while True:
        for copy in list(pending):
            said = _health(copy, time.monotonic() - began)
            if said is not None:
                checked[str(copy.name)] = said
                sink(Event("drill", f"{copy.name}: {said}"))
                pending.remove(copy)
        if not pending:
            return [f"{name}: {said}" for name, said in sorted(checked.items())]
        if time.monotonic() >= deadline:
            names = ", ".join(str(c.name) for c in pending)
            raise RestoreError(
                f"the rehearsal's copies {names} were not healthy within {timeout:.0f}s",
                hint="see their health checks and logs while it runs (docker inspect, docker "
                "logs), or raise restore.health_timeout",
            )
        time.sleep(_POLL_S)


def _health(copy: Container, waited: float) -> str | None:
    """What the copy proved, None while undecided; raises when it failed."""
    try:
        copy.reload()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    state: dict[str, Any] = copy.attrs.get("State") or {}
    health = state.get("Health")
    if not state.get("Running") or state.get("Restarting"):
        raise RestoreError(
            f"the copy {copy.name} stopped in the rehearsal (exit {state.get('ExitCode')}): "
            f"{_logs(copy)}",
            hint="the application does not start on the restored data",
        )
    if health:
        status = health.get("Status")
        if status == "healthy":
            return "its HEALTHCHECK passed"
        if status == "unhealthy":
            last = (health.get("Log") or [{}])[-1]
            output = " ".join(str(last.get("Output", "")).split())[-300:] or "no output"
            raise RestoreError(
                f"the copy {copy.name} is unhealthy in the rehearsal (exit "
                f"{last.get('ExitCode')}): {output}",
                hint="the application does not come up healthy on the restored data",
            )
        return None
    if waited >= RUN_GRACE_S:
        return f"no HEALTHCHECK; still running after {waited:.1f}s"
    return None


def _logs(copy: Container) -> str:
    try:
        text = bytes(copy.logs(tail=_LOG_LINES)).decode("utf-8", "replace")
    except (docker.errors.DockerException, requests.RequestException):
        return "no logs"
    return " | ".join(text.splitlines()) or "no output"


def remove_rehearsal(client: docker.DockerClient, drill_id: str) -> list[str]:
    """Every container, network and volume labelled with ``drill_id``, removed; their names.
    Idempotent: what is already gone is not an error."""
    removed: list[str] = []
    label: dict[str, str | list[str] | bool] = {"label": f"{DRILL_LABEL}={drill_id}"}
    try:
        for container in client.containers.list(all=True, filters=label):
            _gone(lambda c=container: c.remove(force=True, v=True))
            removed.append(f"container {container.name}")
        for network in client.networks.list(filters=label):
            _gone(network.remove)
            removed.append(f"network {network.name}")
        for volume in client.volumes.list(filters=label):
            _gone(lambda v=volume: v.remove(force=True))
            removed.append(f"volume {volume.name}")
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise SafeholdError(
            f"removing the rehearsal of drill {drill_id} failed: {exc}",
            hint=f"the next safehold command tries again; or remove what carries the label "
            f"{DRILL_LABEL}={drill_id} by hand",
        ) from exc
    return removed


def _gone(remove: Any) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        remove()
