"""Downtime around a consistent copy: the containers that use a volume are stopped (journalled
first, so a run killed meanwhile has them started by the next command; see
``recovery_containers``), the copy runs, and they are started again, also when it fails."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker
from docker.models.containers import Container

from ... import _proc
from ...model import EventSink
from ...sources.docker.engine import (
    POST_LABEL,
    PRE_LABEL,
    STOP_LABEL,
    STOP_TIMEOUT_S,
    run_hooks,
    start_again,
    stop_all,
    users_of,
)
from ...sources.docker.stops import plan_stops
from ...storage import LocalStorage
from .. import journal

KIND = "stopped_containers"  # their journal entries


@contextlib.contextmanager
def stopped(
    containers: list[Container],
    sink: EventSink,
    why: str,
    repo: LocalStorage | None = None,
    *,
    stop_timeout: int | None = None,
) -> Iterator[None]:
    """Stop ``containers`` for the block, then start them again (dependencies first) — also
    when the block fails. A container that will not start again is an error of its own. With
    ``repo``, they are journalled there first, so a run killed meanwhile is finished by the
    next one (see ``Downtime``); ``stop_timeout``: ``[docker] stop_timeout``."""
    downtime = Downtime(sink, why, repo, stop_timeout=stop_timeout)
    try:
        downtime.stop(containers)
        yield
    finally:
        downtime.start()


class Downtime:
    """The containers one run stops, and starting them again however the run ends.

    They stop in parallel, dependents first, and start in parallel, dependencies first
    (``container_stops``: compose's ``depends_on``, each container's stop timeout). With a
    repository, they are recorded there (``stopped_containers``: ids, names and timeouts, in a
    valid stopping order) before the first is stopped and crossed out once all run again: a run
    killed in between leaves the entry, and the next command starts them
    (``recovery_containers``). The stops, and the starts, are never cut short by SIGTERM/SIGINT
    (``_proc.shielded``): the interruption is raised once none is in flight."""

    def __init__(
        self,
        sink: EventSink,
        why: str,
        repo: LocalStorage | None = None,
        *,
        stop_timeout: int | None = None,
    ) -> None:
        self.sink = sink
        self.why = why
        self.repo = repo
        self.stop_timeout = STOP_TIMEOUT_S if stop_timeout is None else stop_timeout
        self.down: list[Container] = []
        self.entry: journal.Entry | None = None

    def stop(self, containers: list[Container]) -> None:
        planned = plan_stops(containers, self.stop_timeout)  # a bad label fails before any stop
        if self.repo is not None and planned:
            recorded = [
                {"id": str(s.container.id), "name": str(s.container.name), "timeout": s.timeout}
                for s in planned
            ]
            data = {"containers": recorded, "why": self.why}
            with _proc.shielded():
                self.entry = journal.record(self.repo, KIND, data, f"safehold {self.why}")
        with _proc.shielded():
            stop_all(planned, self.sink, self.why, self.down)

    def start(self) -> None:
        with _proc.shielded():
            start_again(self.down, self.sink, self.why)  # raises if one did not start
            self.down.clear()
            if self.entry is not None and self.repo is not None:
                journal.done(self.repo, self.entry)
                self.entry = None


@contextlib.contextmanager
def quiesced(
    client: docker.DockerClient | None,
    volumes: list[str],
    sink: EventSink,
    why: str,
    repo: LocalStorage | None = None,
    *,
    stop_timeout: int | None = None,
) -> Iterator[None]:
    """Around a copy of ``volumes``: the pre-backup commands of the running containers using
    them (a failure stops here), the labelled ones stopped for the block and started again
    (also when it fails), then the post-backup commands. A container using several volumes is
    handled once. ``repo``: where the stopped ones are journalled (see ``Downtime``);
    ``stop_timeout``: ``[docker] stop_timeout``."""
    users: dict[str, Container] = {}
    for volume in volumes:
        assert client is not None, "volumes need the engine"
        for container in users_of(client, volume):
            users.setdefault(str(container.id), container)
    running = list(users.values())
    run_hooks(running, PRE_LABEL, sink)
    to_stop = [c for c in running if (c.labels or {}).get(STOP_LABEL) == "true"]
    with stopped(to_stop, sink, why, repo, stop_timeout=stop_timeout):
        yield
    run_hooks(running, POST_LABEL, sink)
