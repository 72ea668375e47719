"""What a whole-system restore will do: which set, which containers, which steps, in order.

Planning reads the repository and asks Docker who is running; it changes nothing, so
``--dry-run`` is the plan printed and a real run is the same plan executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors
import requests
from docker.models.containers import Container

from ... import catalog
from ...errors import IntegrityError, UsageError
from ...model import BackupSet, Manifest
from ...sources.docker.engine import unavailable
from ...storage import LocalStorage

COMPOSE_PROJECT = "com.docker.compose.project"
HELPER_LABEL = "org.safehold.helper"
StepKind = Literal[
    "verify", "stop", "roles", "database", "volume", "folder", "post", "start", "connect", "health"
]
# Steps that change data and may be skipped when resuming with --from-step.
RESUMABLE: frozenset[str] = frozenset({"roles", "database", "volume", "folder", "post"})


@dataclass(frozen=True)
class Step:
    number: int
    kind: StepKind
    title: str
    target: str = ""  # the artifact, folder, command or URL the step works on
    member: Manifest | None = None

    def to_json(self) -> dict[str, Any]:
        return {"step": self.number, "kind": self.kind, "title": self.title}


@dataclass(frozen=True)
class SystemPlan:
    backup_set: BackupSet
    why: str  # how the set was chosen, in words
    steps: list[Step]
    containers: list[Container] = field(default_factory=list)
    from_step: int = 1
    # Each database member goes into the database its manifest names (several databases);
    # else the set's one dump goes into the configured database.
    per_member: bool = False

    def database_of(self, step: Step, configured: str) -> str:
        """The live database a roles/database/connect step works on."""
        if not self.per_member:
            return configured
        if step.kind == "connect":
            return step.target
        return step.member.target if step.member is not None else configured

    def skipped(self, step: Step) -> bool:
        return step.kind in RESUMABLE and step.number < self.from_step

    def to_json(self) -> dict[str, Any]:
        return {
            "set": self.backup_set.id,
            "chosen": self.why,
            "containers": [str(c.name) for c in self.containers],
            "steps": [{**s.to_json(), "skipped": self.skipped(s)} for s in self.steps],
        }


def choose_set(
    storage: LocalStorage, ref: str | None, point_in_time: datetime | None
) -> tuple[BackupSet, str]:
    """``ref`` is a set id or ``latest``; ``point_in_time`` picks the newest good set that
    started at or before it. Only sets whose members are all good backups qualify."""
    sets = catalog.read_sets(storage)
    by_name = {r.name: r for r in catalog.scan(storage)}
    if ref not in (None, "latest"):
        chosen = next((s for s in sets if s.id == ref), None)
        if chosen is None:
            known = ", ".join(s.id for s in sets[-5:]) or "none"
            raise UsageError(
                f"no complete backup set {ref!r} in {storage.description}",
                hint=f"'safehold list --sets' shows them (newest: {known})",
            )
        status = catalog.set_status(chosen, by_name)
        if status != "ok":
            raise IntegrityError(
                f"backup set {ref} cannot be restored: {status}",
                hint="pick another set ('safehold list --sets'); nothing was changed",
            )
        return chosen, f"set {ref} as asked"
    # The sets of plain backups of several databases hold no volumes: not a whole system.
    good = [s for s in sets if s.scope == "full" and catalog.set_status(s, by_name) == "ok"]
    if point_in_time is not None:
        good = [s for s in good if s.started_at <= point_in_time]
    if not good:
        when = f" taken at or before {point_in_time:%Y-%m-%d %H:%M:%S %Z}" if point_in_time else ""
        raise UsageError(
            f"no good full-system backup set{when} in {storage.description}",
            hint="'safehold list --sets' shows the sets; 'safehold backup --all' makes one",
        )
    chosen = good[-1]
    if point_in_time is None:
        return chosen, f"the newest good set, {chosen.id}"
    return chosen, (
        f"set {chosen.id}, the newest good set taken at or before "
        f"{point_in_time.astimezone():%Y-%m-%d %H:%M:%S %Z} (started "
        f"{chosen.started_at.astimezone():%Y-%m-%d %H:%M:%S %Z})"
    )


def containers_to_stop(
    client: docker.DockerClient | None, volumes: list[str], project: str | None
) -> list[Container]:
    """The application's running containers: the compose project's (``--project``, or the
    projects named by the volumes' own compose labels) and every running user of a volume
    about to be replaced. Safehold's helpers are not the application."""
    if client is None:
        return []
    found: dict[str, Container] = {}
    try:
        projects = {project} if project else set()
        for name in volumes:
            try:
                labels = client.volumes.get(name).attrs.get("Labels") or {}
            except docker.errors.NotFound:
                continue  # restore creates it; nobody can be using it
            if not project and labels.get(COMPOSE_PROJECT):
                projects.add(labels[COMPOSE_PROJECT])
        for name in sorted(projects):
            for c in client.containers.list(filters={"label": f"{COMPOSE_PROJECT}={name}"}):
                found.setdefault(str(c.id), c)
        for name in volumes:
            for c in client.containers.list(filters={"volume": name}):
                found.setdefault(str(c.id), c)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    helpers = [c for c in found.values() if (c.labels or {}).get(HELPER_LABEL) == "true"]
    return sorted((c for c in found.values() if c not in helpers), key=lambda c: str(c.name))


def plan_system_restore(
    storage: LocalStorage,
    backup_set: BackupSet,
    why: str,
    *,
    client: docker.DockerClient | None,
    database: str | None,
    project: str | None,
    post_restore_cmds: tuple[str, ...],
    health_url: str | None,
    from_step: int = 1,
    per_member: bool = False,
) -> SystemPlan:
    """``database``: the live database the set's dump replaces (None when it has none);
    ``per_member``: each dump replaces the database its manifest names (``[database] names``,
    or a set of several databases)."""
    members = [catalog.read_manifest(storage, name) for name in backup_set.members]
    manifests = [m for m in members if m is not None]
    docker_volumes = [
        m.target for m in manifests if m.kind == "volume" and m.target not in backup_set.folders
    ]
    if docker_volumes and client is None:
        raise UsageError("the set holds Docker volumes but no Docker engine was given")
    containers = containers_to_stop(client, docker_volumes, project)
    steps: list[tuple[StepKind, str, str, Manifest | None]] = [
        ("verify", f"verify the {len(manifests)} members' sha256", "", None)
    ]
    if containers:
        names = ", ".join(str(c.name) for c in containers)
        steps.append(("stop", f"stop containers {names}", names, None))
    for m in manifests:  # a fresh server needs the dump's roles before the database step
        if m.kind == "globals" and database:
            title = f"create the roles missing here from {m.artifact} (existing ones unchanged)"
            steps.append(("roles", title, m.artifact, m))
    dumps = [m for m in manifests if m.kind == "database"]
    for m in dumps:
        if database:
            live = m.target if per_member else database
            title = f"restore database {live!r} from {m.artifact} (previous kept)"
            steps.append(("database", title, m.artifact, m))
    for m in manifests:
        if m.kind != "volume":
            continue
        if m.target in backup_set.folders:
            folder = str(m.facts.get("source", ""))
            steps.append(("folder", f"restore folder {folder} from {m.artifact}", folder, m))
        else:
            steps.append(("volume", f"restore volume {m.target} from {m.artifact}", m.target, m))
    steps += [("post", f"post-restore command: {cmd}", cmd, None) for cmd in post_restore_cmds]
    if containers:
        steps.append(("start", "start the stopped containers again", "", None))
    checked = sorted({m.target for m in dumps}) if per_member else [database]
    for name in checked if database else []:
        steps.append(("connect", f"check the database {name!r} answers", str(name), None))
    if health_url:
        steps.append(("health", f"wait for {health_url} to answer 200", health_url, None))
    numbered = [
        Step(n, kind, title, target, m) for n, (kind, title, target, m) in enumerate(steps, 1)
    ]
    if not 1 <= from_step <= len(numbered):
        raise UsageError(
            f"--from-step {from_step} is not a step of this plan (1-{len(numbered)})",
            hint="--dry-run prints the numbered plan",
        )
    return SystemPlan(backup_set, why, numbered, containers, from_step, per_member)


def folder_of(step: Step) -> Path:
    return Path(step.target)
