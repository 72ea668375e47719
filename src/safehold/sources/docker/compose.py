"""Compose applications as the engine shows them, for ``safehold init``.

docker compose (v1 and v2) labels every container it creates with its project, service, working
folder and compose files, and every volume it creates with its project; nothing else is needed
to see an application: its named volumes (the mounts of type volume), the PostgreSQL service (an
image named like postgres, postgis or timescaledb, or a container that runs ``postgres``) with
the database, role and port its environment gives, and which containers write to the volumes.
Only the engine's API is read (the docker SDK, ``DOCKER_HOST``); no compose file is parsed and
no docker CLI is run. The password is never read out of the environment: only whether one is set.

``parse_projects`` is the pure half (inspect documents in, dataclasses out); ``find_projects``
asks the engine for those documents; ``choose_project`` picks the one ``init`` writes for.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import requests

from ...errors import UsageError
from .engine import STOP_LABEL, unavailable
from .stops import COMPOSE_PROJECT, COMPOSE_SERVICE

COMPOSE_WORKING_DIR = "com.docker.compose.project.working_dir"
COMPOSE_CONFIG_FILES = "com.docker.compose.project.config_files"
COMPOSE_ONEOFF = "com.docker.compose.oneoff"
COMPOSE_VERSION = "com.docker.compose.version"
PG_DEFAULT_PORT = 5432
# Image names (the last path part, without tag) of PostgreSQL servers.
_PG_IMAGES = re.compile(r"^(postgres|postgresql|postgis|timescaledb[a-z0-9-]*|pgvector)$")
# Volumes compose names itself when a service declares a path without a name.
_ANONYMOUS = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ServiceContainer:
    """One container of a project, as far as backups care."""

    name: str
    service: str
    image: str
    state: str
    volumes: tuple[str, ...]  # the named volumes it mounts
    writes: tuple[str, ...]  # those of them mounted read-write
    stop_labelled: bool  # carries safehold's stop label already


@dataclass(frozen=True)
class PostgresService:
    """The PostgreSQL server of a project and how to reach it from the engine's host."""

    container: str
    service: str
    image: str
    database: str | None  # POSTGRES_DB
    user: str | None  # POSTGRES_USER
    password_in_env: bool  # POSTGRES_PASSWORD is set (its value is never kept)
    password_file: str | None  # POSTGRES_PASSWORD_FILE, a path inside the container
    password_file_on_host: str | None  # the host file bind-mounted there, when one is
    container_port: int  # PGPORT, else 5432
    port_from_env: bool
    network_mode: str
    published: tuple[str, int] | None  # (host address, host port) the port is published on
    address: str | None  # the container's address on its first network
    network: str | None  # that network's name
    major: int | None  # PostgreSQL major version
    major_from: str  # where the version came from ("" when unknown)
    volumes: tuple[str, ...]  # the named volumes it mounts (its data folder)


@dataclass(frozen=True)
class ComposeProject:
    name: str
    working_dir: str | None
    config_files: tuple[str, ...]
    containers: tuple[ServiceContainer, ...]
    volumes: tuple[str, ...]  # named volumes: mounted by its containers or labelled with it
    anonymous_volumes: tuple[str, ...]
    bind_mounts: tuple[str, ...]  # host folders its containers mount ("service: /host/path")
    postgres: tuple[PostgresService, ...] = field(default=())
    compose_version: str = ""  # of the compose that made it: 1.x is `docker-compose`

    @property
    def compose_command(self) -> str:
        return "docker-compose" if self.compose_version.startswith("1.") else "docker compose"

    @property
    def database_volumes(self) -> tuple[str, ...]:
        """Volumes only the PostgreSQL containers mount: the database's own files, which a
        file copy of a running server does not capture consistently (pg_dump does)."""
        pg = {p.container for p in self.postgres}
        others = {v for c in self.containers if c.name not in pg for v in c.volumes}
        return tuple(v for v in self.volumes if v not in others and self._pg_mounts(v))

    @property
    def data_volumes(self) -> tuple[str, ...]:
        """The application's volumes: every named volume but the database's files."""
        return tuple(v for v in self.volumes if v not in self.database_volumes)

    def writers(self, volumes: Iterable[str]) -> tuple[ServiceContainer, ...]:
        """The non-database containers that mount any of ``volumes`` read-write: the ones to
        stop while those volumes are copied."""
        wanted = set(volumes)
        pg = {p.container for p in self.postgres}
        return tuple(
            c for c in self.containers if c.name not in pg and wanted.intersection(c.writes)
        )

    def _pg_mounts(self, volume: str) -> bool:
        return any(volume in p.volumes for p in self.postgres)


def find_projects(client: docker.DockerClient) -> list[ComposeProject]:
    """Every compose project the engine knows (running, stopped, or only its volumes left)."""
    try:
        containers = client.containers.list(
            all=True, filters={"label": COMPOSE_PROJECT}, ignore_removed=True
        )
        volumes = client.volumes.list(filters={"label": COMPOSE_PROJECT})
        mounted = {m["Name"] for c in containers for m in _mounts(c.attrs, "volume")}
        # A volume mounted but not created by compose (external: true) has no project label.
        documents = [v.attrs for v in volumes]
        for name in sorted(mounted - {str(v.name) for v in volumes}):
            try:
                documents.append(client.volumes.get(name).attrs)
            except docker.errors.NotFound:
                continue  # removed since the container list was read
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    return parse_projects([c.attrs for c in containers], documents)


def parse_projects(
    containers: Sequence[Mapping[str, Any]], volumes: Sequence[Mapping[str, Any]]
) -> list[ComposeProject]:
    """Projects from the engine's inspect documents of containers and volumes."""
    names = {_labels(c).get(COMPOSE_PROJECT, "") for c in containers}
    names |= {_labels(v).get(COMPOSE_PROJECT, "") for v in volumes}
    return [_project(n, containers, volumes) for n in sorted(names - {""})]


def _project(
    name: str, containers: Sequence[Mapping[str, Any]], volumes: Sequence[Mapping[str, Any]]
) -> ComposeProject:
    mine = sorted(
        (
            c
            for c in containers
            if _labels(c).get(COMPOSE_PROJECT) == name
            and _labels(c).get(COMPOSE_ONEOFF, "False") != "True"  # `compose run` one-offs
        ),
        key=lambda c: (_labels(c).get(COMPOSE_SERVICE, ""), _name(c)),
    )
    labels = [_labels(c) for c in mine]
    working_dir = next(
        (lb[COMPOSE_WORKING_DIR] for lb in labels if COMPOSE_WORKING_DIR in lb), None
    )
    files = next((lb[COMPOSE_CONFIG_FILES] for lb in labels if COMPOSE_CONFIG_FILES in lb), "")
    version = next((lb[COMPOSE_VERSION] for lb in labels if COMPOSE_VERSION in lb), "")
    named = {str(v.get("Name")) for v in volumes if _labels(v).get(COMPOSE_PROJECT) == name}
    mounted = {m["Name"] for c in mine for m in _mounts(c, "volume")}
    binds = sorted(
        f"{_labels(c).get(COMPOSE_SERVICE, _name(c))}: {m.get('Source')}"
        for c in mine
        for m in _mounts(c, "bind")
    )
    every = named | mounted
    found = [_postgres(c) for c in mine if is_postgres(_image(c), _argv(c))]
    # A server keeps its data in a volume; a postgres image without one is likelier a client
    # (a migration or psql sidecar), so it comes after.
    postgres = tuple(sorted(found, key=lambda p: (not p.volumes, p.service, p.container)))
    return ComposeProject(
        name=name,
        working_dir=working_dir,
        config_files=tuple(_config_files(files, working_dir)),
        containers=tuple(_container(c) for c in mine),
        volumes=tuple(sorted(v for v in every if not _ANONYMOUS.match(v))),
        anonymous_volumes=tuple(sorted(v for v in every if _ANONYMOUS.match(v))),
        bind_mounts=tuple(dict.fromkeys(binds)),
        postgres=postgres,
        compose_version=version,
    )


def choose_project(projects: Sequence[ComposeProject], name: str | None) -> ComposeProject | None:
    """The project ``init`` writes for: the one named, the only one, or None when there is
    none; several and no name is a refusal (init asks nothing)."""
    names = [p.name for p in projects]
    if name is not None:
        chosen = next((p for p in projects if p.name == name), None)
        if chosen is None:
            raise UsageError(
                f"no compose project {name!r} on the Docker engine; nothing was written",
                hint=f"projects there: {', '.join(names)}" if names else _NO_PROJECT_HINT,
            )
        return chosen
    if len(projects) > 1:
        raise UsageError(
            f"{len(projects)} compose projects on the Docker engine: {', '.join(names)}; "
            "nothing was written",
            hint=f"choose one: safehold init --project {names[0]}",
        )
    return projects[0] if projects else None


_NO_PROJECT_HINT = (
    "start the application (docker compose up -d) so its containers carry their compose "
    "labels, or point DOCKER_HOST at the engine that runs it"
)


def is_postgres(image: str, argv: list[str]) -> bool:
    """A PostgreSQL server: its image is named like one, or it runs ``postgres``."""
    if _PG_IMAGES.match(image_name(image)):
        return True
    return any(posixpath.basename(word) == "postgres" for word in argv[:2])


def image_name(image: str) -> str:
    """``registry:5000/timescale/timescaledb:2.14-pg16@sha256:..`` -> ``timescaledb``."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[0].lower()


def image_tag(image: str) -> str:
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def postgres_major(image: str, env: Mapping[str, str]) -> tuple[int | None, str]:
    """The server's major version and where it came from: the official images' ``PG_MAJOR``,
    else the image tag (``16``, ``16.2-alpine``, ``16-3.4`` for postgis, ``...-pg16``)."""
    if env.get("PG_MAJOR", "").split(".")[0].isdigit():
        return int(env["PG_MAJOR"].split(".")[0]), "PG_MAJOR in the container's environment"
    tag = image_tag(image)
    found = re.search(r"pg(\d+)", tag) or re.match(r"(\d+)", tag)
    if found and 9 <= int(found.group(1)) < 100:
        return int(found.group(1)), f"the image tag {tag!r}"
    return None, ""


def _postgres(c: Mapping[str, Any]) -> PostgresService:
    env = _env(c)
    host_config = c.get("HostConfig") or {}
    port_text = env.get("PGPORT", "")
    port = int(port_text) if port_text.isdigit() else PG_DEFAULT_PORT
    networks = (c.get("NetworkSettings") or {}).get("Networks") or {}
    net, address = next(
        ((n, str(v.get("IPAddress"))) for n, v in sorted(networks.items()) if v.get("IPAddress")),
        (None, None),
    )
    major, major_from = postgres_major(_image(c), env)
    password_file = env.get("POSTGRES_PASSWORD_FILE") or None
    return PostgresService(
        container=_name(c),
        service=_labels(c).get(COMPOSE_SERVICE, _name(c)),
        image=_image(c),
        database=env.get("POSTGRES_DB") or None,
        user=env.get("POSTGRES_USER") or None,
        password_in_env=bool(env.get("POSTGRES_PASSWORD")),
        password_file=password_file,
        password_file_on_host=_host_path(c, password_file) if password_file else None,
        container_port=port,
        port_from_env=bool(port_text.isdigit()),
        network_mode=str(host_config.get("NetworkMode") or "default"),
        published=_published(c, port),
        address=address,
        network=net,
        major=major,
        major_from=major_from,
        volumes=tuple(sorted(m["Name"] for m in _mounts(c, "volume"))),
    )


def _published(c: Mapping[str, Any], port: int) -> tuple[str, int] | None:
    """Where the engine's host listens for ``port``: the running container's actual binding
    (a random host port shows there only), else the configured one."""
    key = f"{port}/tcp"
    running = ((c.get("NetworkSettings") or {}).get("Ports") or {}).get(key)
    configured = ((c.get("HostConfig") or {}).get("PortBindings") or {}).get(key)
    for binding in running or configured or []:
        host_port = str(binding.get("HostPort") or "")
        if host_port.isdigit():
            ip = str(binding.get("HostIp") or "")
            return ("localhost" if ip in ("", "0.0.0.0", "::") else ip), int(host_port)  # noqa: S104
    return None


def _host_path(c: Mapping[str, Any], inside: str) -> str | None:
    """The host file behind a path in the container, when a bind mount puts it there."""
    for m in sorted(_mounts(c, "bind"), key=lambda m: -len(str(m.get("Destination")))):
        dest = str(m.get("Destination") or "").rstrip("/")
        if inside == dest or inside.startswith(dest + "/"):
            return str(m.get("Source")) + inside[len(dest) :]
    return None


def _container(c: Mapping[str, Any]) -> ServiceContainer:
    volumes = _mounts(c, "volume")
    return ServiceContainer(
        name=_name(c),
        service=_labels(c).get(COMPOSE_SERVICE, _name(c)),
        image=_image(c),
        state=str((c.get("State") or {}).get("Status") or "unknown"),
        volumes=tuple(sorted({m["Name"] for m in volumes})),
        writes=tuple(sorted({m["Name"] for m in volumes if m.get("RW", True)})),
        stop_labelled=_labels(c).get(STOP_LABEL, "").lower() == "true",
    )


def _config_files(text: str, working_dir: str | None) -> list[str]:
    files = [f.strip() for f in text.split(",") if f.strip()]
    base = working_dir or ""
    return [f if posixpath.isabs(f) or not base else posixpath.join(base, f) for f in files]


def _mounts(c: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    return [m for m in c.get("Mounts") or [] if m.get("Type") == kind and m.get(_KEY[kind])]


_KEY = {"volume": "Name", "bind": "Source"}


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    # Containers keep labels under Config, volumes at the top.
    return dict((obj.get("Config") or {}).get("Labels") or obj.get("Labels") or {})


def _env(c: Mapping[str, Any]) -> dict[str, str]:
    pairs = ((c.get("Config") or {}).get("Env")) or []
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def _argv(c: Mapping[str, Any]) -> list[str]:
    config = c.get("Config") or {}
    return [str(w) for w in [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]]


def _image(c: Mapping[str, Any]) -> str:
    return str((c.get("Config") or {}).get("Image") or c.get("Image") or "")


def _name(c: Mapping[str, Any]) -> str:
    return str(c.get("Name") or "").lstrip("/")
