"""Containers an interrupted run had stopped are started again by the next command.

``engine.Downtime`` records the containers (ids and names, in stopping order) in a
``stopped_containers`` journal entry before the first is stopped and crosses it out once all
run again. A run killed in between (SIGKILL, power loss, a crash) leaves the entry; this
resolver starts, in reverse order, the recorded containers that still exist and are stopped,
and leaves alone the ones running again (started by hand, or never stopped) and the ones
removed since. A container that will not start keeps the entry for the next command.
"""

from __future__ import annotations

from typing import Any

import docker
import docker.errors
import requests

from ..errors import SafeholdError
from . import journal
from .engine import KIND, unavailable

# Docker states a container can be started from; "running", "restarting" and "paused" count
# as up, "removing" and "dead" as gone.
_STARTABLE = frozenset({"created", "exited"})


@journal.resolver(KIND)
def start_stopped(entry: journal.Entry, context: journal.Context) -> str:
    client: docker.DockerClient = context.get("docker")
    recorded: list[dict[str, Any]] = list(entry.data.get("containers", []))
    started: list[str] = []
    up: list[str] = []
    gone: list[str] = []
    failed: list[str] = []
    for item in reversed(recorded):
        name = str(item.get("name") or item.get("id"))
        try:
            container = client.containers.get(str(item["id"]))
            if container.status not in _STARTABLE:
                (up if container.status in ("running", "restarting", "paused") else gone).append(
                    name
                )
                continue
            container.start()
            started.append(name)
        except docker.errors.NotFound:
            gone.append(name)
        except docker.errors.APIError as exc:
            failed.append(f"{name}: {exc.explanation or exc}")
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise unavailable(exc) from exc
    if failed:
        done = f" (started {', '.join(started)})" if started else ""
        raise SafeholdError(
            f"could not start again containers it had stopped: {'; '.join(failed)}{done}"
        )
    said = (
        f"started again containers {', '.join(started)} that it had stopped"
        if started
        else "the containers it had stopped run again; nothing to do"
    )
    if started and up:
        said += f" ({', '.join(up)} already running)"
    if gone:
        said += f"; {', '.join(gone)} no longer exist"
    return said
