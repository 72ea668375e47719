"""What a killed run leaves besides data: containers it had stopped, a backup file it was
writing, a whole-system restore it had not finished. The next command starts the first again,
removes the second and says where the third stopped. (One module, because every recovering
command loads it.)

``stopped_containers``: ``engine.Downtime`` records the containers (ids, names and stop
timeouts, in a valid stopping order: dependents first) before the first is stopped and crosses
the entry out once all run again. A run killed in between (SIGKILL, power loss, a crash) leaves
the entry; this resolver starts, one by one in reverse order (dependencies first), the recorded
containers that still exist and are stopped, and leaves alone the ones
running again (started by hand, or never stopped) and the ones removed since. A container that
will not start keeps the entry for the next command. The engine finishes a stop whose client
died: a container the killed run was stopping may still run when the next command looks, and
exit a moment later. Its last engine event since the entry was written is then the stop's
``kill``; such a container is waited for (up to its recorded stop timeout) and started once it
is down.

``unfinished_artifact``: a pre-restore safety copy is journalled while it is written (backups
that run on a schedule are cleaned by the next backup instead). A run killed meanwhile leaves
a temp file, or a complete artifact whose manifest (the commit point) was never written:
neither is a backup, both are removed.

``system_restore``: the step a ``restore --all`` is at. Each step's own entries undo or finish
that step; this one says that the whole-system restore stopped, what it had done, and the
command that continues from the step it stopped at.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container

from ... import naming
from ...errors import SafeholdError
from ...sources.docker.engine import unavailable
from .. import journal
from .downtime import KIND

UNFINISHED_KIND = "unfinished_artifact"
PROGRESS_KIND = "system_restore"
# Docker states a container can be started from; "running", "restarting" and "paused" count
# as up, "removing" and "dead" as gone.
_STARTABLE = frozenset({"created", "exited"})
# The engine's clock may be a little off ours (DOCKER_HOST on another machine).
_CLOCK_SKEW_S = 5
_STOP_GRACE_S = 5
# What entries written before timeouts were recorded waited: the fixed timeout of then.
_UNRECORDED_TIMEOUT_S = 30


@journal.resolver(KIND, last=True)
def start_stopped(entry: journal.Entry, context: journal.Context) -> str:
    client: docker.DockerClient = context.get("docker")
    recorded: list[dict[str, Any]] = list(entry.data.get("containers", []))
    started: list[str] = []
    up: list[str] = []
    gone: list[str] = []
    failed: list[str] = []
    try:
        found = _existing(client, recorded, gone, failed)
        stopping = _being_stopped(client, entry, [c for c in found if c.status == "running"])
        timeouts = {str(item["id"]): item.get("timeout") for item in recorded}
        for container in found:
            name = str(container.name)
            if container.id in stopping:
                timeout = timeouts.get(str(container.id))
                _wait_down(container, timeout if isinstance(timeout, int) else None)
            elif container.status == "running":
                container.reload()  # (it may have gone down while the events were read)
            if container.status not in _STARTABLE:
                (up if container.status in ("running", "restarting", "paused") else gone).append(
                    name
                )
                continue
            try:
                container.start()
            except docker.errors.APIError as exc:
                failed.append(f"{name}: {exc.explanation or exc}")
                continue
            started.append(name)
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


def _existing(
    client: docker.DockerClient, recorded: list[dict[str, Any]], gone: list[str], failed: list[str]
) -> list[Container]:
    """The recorded containers that still exist, in starting (reverse stopping) order."""
    found = []
    for item in reversed(recorded):
        name = str(item.get("name") or item.get("id"))
        try:
            found.append(client.containers.get(str(item["id"])))
        except docker.errors.NotFound:
            gone.append(name)
        except docker.errors.APIError as exc:
            failed.append(f"{name}: {exc.explanation or exc}")
    return found


def _being_stopped(
    client: docker.DockerClient, entry: journal.Entry, running: Iterable[Container]
) -> set[str]:
    """The running ones whose last event since the entry is a ``kill``: a stop the dead run
    sent, which the engine is still carrying out."""
    ids = [str(c.id) for c in running]
    if not ids:
        return set()
    since = int(entry.created_at.timestamp()) - _CLOCK_SKEW_S
    try:
        events = list(
            client.events(
                since=since,
                until=int(time.time()) + 1,  # whole seconds: up to one more to wait for it
                filters={"type": "container", "container": ids, "event": ["kill", "die", "start"]},
                decode=True,
            )
        )
    except docker.errors.APIError:
        return set()  # an engine without this history: only what each one's state says
    last: dict[str, str] = {}
    for event in events:
        actor = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")
        last[actor] = str(event.get("Action") or event.get("status") or "")
    return {cid for cid, action in last.items() if action == "kill"}


def _wait_down(container: Container, timeout: int | None) -> None:
    """Until it has stopped; a container still up after the stop timeout was not being
    stopped (a kill event for another signal) and is left running."""
    limit = (_UNRECORDED_TIMEOUT_S if timeout is None else timeout) + _STOP_GRACE_S
    with contextlib.suppress(requests.exceptions.ConnectionError, requests.exceptions.Timeout):
        container.wait(condition="not-running", timeout=limit)
    container.reload()


@journal.resolver(UNFINISHED_KIND)
def remove_unfinished(entry: journal.Entry, context: journal.Context) -> str:
    storage = context.storage
    artifact = str(entry.data["artifact"])
    what = str(entry.data.get("what") or "backup")
    record = naming.manifest_key(artifact)
    removed = storage.remove_partials_of(artifact, entry.pid)
    removed += storage.remove_partials_of(record, entry.pid)
    # And what else dead runs left beside the backups (a latest link being replaced...).
    removed += [name for name in storage.remove_stale_partials() if name not in removed]
    if storage.exists(record):
        kept = f"its {what} {artifact} was complete; kept"
        return kept + (f" (removed {', '.join(removed)})" if removed else "")
    if storage.exists(artifact):  # renamed into place, never committed: not a backup
        storage.delete(artifact)
        removed.append(artifact)
    if not removed:
        return f"its {what} {artifact} had not been started; nothing to remove"
    return f"removed the unfinished {what} ({', '.join(removed)}): it was never a backup"


@journal.resolver(PROGRESS_KIND)
def say_where_it_stopped(entry: journal.Entry, _context: journal.Context) -> str:
    """Nothing to undo (each step's own entries do that): the operator learns that the
    whole-system restore did not finish, what it had done, and the command that continues."""
    data = entry.data
    return f"the whole-system restore of set {data['set']} {data['at']}; {data['state']}; " + str(
        data["resume"]
    )
