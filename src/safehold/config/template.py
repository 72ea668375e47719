"""The commented ``safehold.toml`` that ``safehold init`` writes, from what the engine showed.

Pure: a compose project (``sources.docker.compose``) and a few facts about this host go in, TOML
text comes out. Every value found on the engine carries a comment saying where it came from; the
rest are safehold's defaults, written out so an operator sees what runs; encryption, an S3
location and alerts are there commented out, ready to fill in. The database password is never
written: the text says where the container keeps it and how to hand it to safehold instead.
The text loads with ``config.load`` like a file written by hand (the tests hold them together).
"""

from __future__ import annotations

import dataclasses
import textwrap
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .schema import (
    DatabaseSettings,
    ObjectiveSettings,
    RetentionSettings,
    ScheduleSettings,
)

if TYPE_CHECKING:  # the adapter imports the docker SDK; the renderer needs only its shapes
    from ..sources.docker.compose import ComposeProject, PostgresService

STOP_LABEL = "safehold.stop-during-backup"  # sources.docker.engine's, without importing docker


@dataclass(frozen=True)
class Found:
    """What ``render`` writes about: the project (None: none on the engine) and this host."""

    project: ComposeProject | None
    engine: str  # the engine's address, for the header
    now: datetime
    others: tuple[str, ...] = ()  # other projects on the engine
    clients: Mapping[int, str] = field(default_factory=dict)  # pg client major -> bin folder

    @property
    def remote(self) -> str | None:
        """The engine's host when it is another machine (tcp:// or ssh://), else None."""
        url = urllib.parse.urlsplit(self.engine)
        if url.scheme in ("unix", "npipe", "") or url.hostname in _LOOPBACK:
            return None
        return url.hostname


_LOOPBACK = (None, "localhost", "127.0.0.1", "::1")


def toml_value(value: str | int | float | bool | Sequence[str]) -> str:
    """A TOML literal: basic strings escaped as the TOML spec requires."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


# Every control character as \uXXXX (TOML's basic strings allow no raw one), and the two
# characters that end or escape a string.
_ESCAPES = {chr(i): f"\\u{i:04X}" for i in [*range(0x20), 0x7F]} | {'"': '\\"', "\\": "\\\\"}


def stop_hint(project: ComposeProject) -> list[str]:
    """Lines telling which containers write to the project's volumes and the compose labels
    that make safehold stop them during a copy; [] when every one is labelled already."""
    writers = project.writers(project.data_volumes)
    missing = [c for c in writers if not c.stop_labelled]
    if not missing:
        return []
    where = project.config_files[0] if project.config_files else "the compose file"
    lines = [
        f"Not labelled yet: {', '.join(f'{c.service} ({c.name})' for c in missing)}.",
        f"Add to {where}, then run `{project.compose_command} up -d`:",
        "  services:",
    ]
    for service in dict.fromkeys(c.service for c in missing):
        lines += [f"    {service}:", "      labels:", f'        {STOP_LABEL}: "true"']
    return lines


def render(found: Found) -> str:
    project = found.project
    lines = _header(found)
    lines += ["", *_comment(_BACKUP_DIR), 'backup_dir = "./backups"']
    lines += ['# log_file = "/var/log/safehold.log"  # also append log lines (and failures) here']
    pg = project.postgres[0] if project and project.postgres else None
    lines += ["", "[database]", *_database(project, pg, found)]
    lines += ["", "[backup]", *_backup()]
    lines += ["", "[restore]", *_restore(project)]
    lines += ["", "[volumes]", *_volumes(project)]
    lines += ["", "[docker]", *_DOCKER]
    lines += ["", "[schedule]", *_defaults(ScheduleSettings(), _SCHEDULE_KEYS)]
    lines += ["", "[retention]", *_comment(_RETENTION), *_defaults(RetentionSettings(), _GFS)]
    lines += ["", "[objectives]", *_comment(_OBJECTIVES), *_defaults(ObjectiveSettings(), _RTO)]
    lines += ["", *_optional_sections(project)]
    return "\n".join(lines) + "\n"


def _header(found: Found) -> list[str]:
    project = found.project
    stamp = f"{found.now:%Y-%m-%d %H:%M %Z}".strip()
    lines = [f"# safehold.toml, written by `safehold init` on {stamp}"]
    if project is None:
        lines += [
            f"# No compose project was found on the Docker engine at {found.engine}: these",
            "# are safehold's defaults. Set [database] and [volumes] for your application.",
        ]
    else:
        lines += [f'# for the compose project "{project.name}", Docker engine {found.engine}']
        if project.working_dir:
            lines += [f"# (its folder: {project.working_dir})"]
        for path in project.config_files:
            lines += [f"# compose file: {path}"]
        if found.others:
            lines += [f"# Other compose projects there: {', '.join(found.others)}."]
    return [
        *lines,
        "# Values found on the engine say where they came from; the rest are safehold's defaults.",
        "# Check it with `safehold config` (the effective settings) and `safehold doctor`;",
        "# `safehold config --keys` lists every key.",
    ]


_BACKUP_DIR = (
    "The repository. A relative path means the folder scripts/backup.sh lives in (it sets "
    "SAFEHOLD_APP_DIR), else the folder safehold is started in."
)


def _database(
    project: ComposeProject | None, pg: PostgresService | None, found: Found
) -> list[str]:
    defaults = DatabaseSettings()
    if pg is None:
        why = (
            f"No PostgreSQL container in the project {project.name!r}"
            if project
            else "Nothing found"
        )
        return [
            *_comment(f"{why}: safehold's defaults. Set your server's host, port, name and user."),
            f"host = {toml_value(defaults.host)}",
            f"port = {defaults.port}",
            f"name = {toml_value(defaults.name)}",
            f"user = {toml_value(defaults.user)}",
            *_password(None, "HOST"),
        ]
    assert project is not None
    lines = _comment(f"The service {pg.service!r} (container {pg.container}, image {pg.image}).")
    if len(project.postgres) > 1:
        rest = ", ".join(f"{p.service} ({p.container})" for p in project.postgres[1:])
        lines += _comment(f"Other PostgreSQL containers in the project, not used here: {rest}.")
    host = _host(pg, found.remote)
    lines += _address(pg, host)
    name, name_from = _db_name(pg)
    lines += [f"name = {toml_value(name)}  # {name_from}"]
    user_from = "POSTGRES_USER in the container's environment"
    lines += [f"user = {toml_value(pg.user or 'postgres')}  # {user_from if pg.user else _IMAGE}"]
    return lines + _password(pg, host) + _client_tools(pg, found.clients)


_IMAGE = "the image's default (no POSTGRES_USER in the container's environment)"


def _db_name(pg: PostgresService) -> tuple[str, str]:
    if pg.database:
        return pg.database, "POSTGRES_DB in the container's environment"
    if pg.user:
        return pg.user, "no POSTGRES_DB: the image names the database after POSTGRES_USER"
    return "postgres", "no POSTGRES_DB or POSTGRES_USER: the image's default database"


def _address(pg: PostgresService, host: str) -> list[str]:
    port_from = (
        "PGPORT in the container's environment"
        if pg.port_from_env
        else "PostgreSQL's default (no PGPORT in the container's environment)"
    )
    if pg.network_mode == "host":
        return [
            f"host = {toml_value(host)}  # network_mode host: it listens on the host's network",
            f"port = {pg.container_port}  # {port_from}",
        ]
    if pg.published is not None:
        inner = f"{pg.container_port} (PGPORT)" if pg.port_from_env else str(pg.container_port)
        port = pg.published[1]
        return [
            f"host = {toml_value(host)}  # the port is published on the engine's host",
            f"port = {port}  # published there for the container's port {inner}",
        ]
    network = f" on the network {pg.network}" if pg.network else ""
    note = (
        f"The server's port {pg.container_port} is not published on the engine's host, so "
        f"this is the container's own address{network}: the host reaches it on Linux, but it "
        "changes when the container is recreated. Better: publish the port to loopback only "
        f'(ports: ["127.0.0.1:{pg.container_port}:{pg.container_port}"]) and use '
        'host = "localhost", or run safehold in a container on the same network with '
        f"host = {toml_value(pg.service)}."
    )
    return [
        *_comment(note),
        f"host = {toml_value(host)}  # the container's address (see above)",
        f"port = {pg.container_port}  # {port_from}",
    ]


def _password(pg: PostgresService | None, host: str) -> list[str]:
    if pg is not None and pg.password_file_on_host:
        return [
            *_comment(
                f"POSTGRES_PASSWORD_FILE ({pg.password_file}) is this host file, bind-mounted "
                "into the container; the user safehold runs as must be able to read it."
            ),
            f"password_file = {toml_value(pg.password_file_on_host)}",
        ]
    if pg is not None and pg.password_file:
        where = f"in the container's file {pg.password_file} (POSTGRES_PASSWORD_FILE)"
    elif pg is not None and pg.password_in_env:
        where = "in the container's environment (POSTGRES_PASSWORD)"
    else:
        where = "wherever your server's administrator keeps it"
    port = pg.published[1] if pg and pg.published else (pg.container_port if pg else 5432)
    user = (pg.user or "postgres") if pg else "USER"
    note = _comment(
        f"The password is never written here; it is {where}. Give it to safehold one of "
        "these ways (cron has no terminal to ask in):\n"
        "- a file holding only the password (mode 0600), named by password_file (or "
        "DB_PASSWORD_FILE);\n"
        "- a line in ~/.pgpass of the user safehold runs as, or in the file PGPASSFILE names "
        f"(mode 0600):\n      {host}:{port}:*:{user}:PASSWORD\n"
        "- DB_PASSWORD or PGPASSWORD in the environment (not for cron)."
    )
    return [*note, '# password_file = "/etc/safehold/db.password"']


def _host(pg: PostgresService, remote: str | None) -> str:
    """Where safehold reaches the server: the engine's host for a port on the host's network
    (``localhost`` when the engine is local), else the container's own address."""
    if pg.network_mode == "host" or (pg.published and pg.published[0] == "localhost"):
        return remote or "localhost"
    return pg.published[0] if pg.published else (pg.address or pg.service)


def _client_tools(pg: PostgresService, clients: Mapping[int, str]) -> list[str]:
    if pg.major is None:
        note = _comment(
            "The server's version is unknown (no PG_MAJOR, no version in the image tag): "
            "pg_dump must be of its major version or newer (pg_bin_dir names another)."
        )
        return [*note, '# pg_bin_dir = "/usr/lib/postgresql/VERSION/bin"']
    fit = sorted(m for m in clients if m >= pg.major)
    if not fit:
        note = _comment(
            f"PostgreSQL {pg.major} ({pg.major_from}): pg_dump {pg.major} or newer is not "
            f"installed here; install it (Debian: apt-get install postgresql-client-{pg.major}) "
            "or name its folder with pg_bin_dir."
        )
        return [*note, f'# pg_bin_dir = "/usr/lib/postgresql/{pg.major}/bin"']
    newest = fit[-1]
    return [
        *_comment(
            f"PostgreSQL {pg.major} ({pg.major_from}): pg_dump and pg_restore {newest} "
            "found here (dumps need the server's major version or newer)."
        ),
        f"pg_bin_dir = {toml_value(clients[newest])}",
    ]


def _backup() -> list[str]:
    return [
        'compress = "gzip"  # pg_dump\'s own, the seed\'s .sql files; "zstd": faster, smaller',
        '# format = "chunked"  # deduplicated snapshots instead of one file per backup',
    ]


def _restore(project: ComposeProject | None) -> list[str]:
    if project is None:
        return ['# project = "myapp"  # the compose project whose containers restore --all stops']
    run = f"{project.compose_command} -p {project.name} run --rm SERVICE COMMAND"
    return [
        f"project = {toml_value(project.name)}  # the compose project found: "
        "restore --all stops its containers",
        f"# post_restore_cmds = [{toml_value(run)}]  # e.g. a migration",
        '# health_url = "http://127.0.0.1:PORT/health"  # must answer 200 after restore --all',
    ]


def _volumes(project: ComposeProject | None) -> list[str]:
    if project is None:
        return [
            '# include = ["app-data", "user-*"]  # volume names or patterns backup --all takes',
            '# labels = ["com.example.backup=true"]  # and volumes carrying these labels',
        ]
    lines = _comment("The project's named volumes (its containers' mounts and compose's labels):")
    lines += [f"include = {toml_value(project.data_volumes)}"]
    lines += _comment("Or every volume compose makes for the project, new ones too:")
    lines += [f"# labels = {toml_value([f'com.docker.compose.project={project.name}'])}"]
    if project.database_volumes:
        lines += _comment(
            "The database server's own files: pg_dump backs the database up consistently, "
            "a copy of a running server's files would not be."
        )
        lines += [f"exclude = {toml_value(project.database_volumes)}"]
    if project.anonymous_volumes:
        lines += _comment(
            f"Left out: {len(project.anonymous_volumes)} anonymous volume(s) (no name; "
            "compose makes new ones); name them in the compose file to back them up."
        )
    if project.bind_mounts:
        lines += _comment(
            "Host folders the containers mount (bind mounts, not volumes; back them up with "
            f"the host's files): {'; '.join(project.bind_mounts)}."
        )
    return lines + _stop_comment(project)


def _stop_comment(project: ComposeProject) -> list[str]:
    writers = project.writers(project.data_volumes)
    done = [f"{c.service} ({c.name})" for c in writers if c.stop_labelled]
    note = _comment(
        "For a consistent copy, safehold stops the containers that write to these volumes "
        f"while they are copied, then starts them again: those labelled {STOP_LABEL}=true."
        + (f" Labelled already: {', '.join(done)}." if done else "")
    )
    return [*note, *(f"# {line}" for line in stop_hint(project))] if writers else []


_DOCKER = [
    "# Seconds a container stopped for a copy gets before it is killed (its",
    "# org.safehold.stop-timeout label or compose's stop_grace_period wins):",
    "stop_timeout = 10",
]
_SCHEDULE_KEYS = ("database", "full", "archive", "drill", "quarterly_drill", "annual_drill")
_GFS = ("daily", "weekly", "monthly", "yearly", "keep_last", "safety_days")
_RTO = ("rto_database_minutes", "rto_volumes_minutes", "rto_full_minutes")
_RETENTION = (
    "Grandfather-father-son: the newest backup of each of the last N days, ISO weeks, months "
    "and years that have backups (`safehold prune` applies it)."
)
_OBJECTIVES = (
    "The RPO of each target follows its schedule (rpo_hours sets one); the restore times "
    "that drills and `safehold status` hold restores to:"
)


def _defaults(section: Any, keys: Sequence[str]) -> list[str]:
    """``key = default  # doc`` for each key: the defaults, written out to be seen and edited."""
    fields = {f.name: f for f in dataclasses.fields(section)}
    lines = []
    for key in keys:
        value = getattr(section, key)
        doc = fields[key].metadata.get("doc", "")
        lines.append(f"{key} = {toml_value(value)}" + (f"  # {doc}" if doc else ""))
    return lines


def _optional_sections(project: ComposeProject | None) -> list[str]:
    bucket = f"{project.name}-backups" if project else "app-backups"
    return [
        *_comment("Alerts on failures and missed backups (uncomment and fill in):"),
        "# [alerts]",
        '# apprise_urls = ["mailto://user:pass@example.com"]',
        '# heartbeat_url = "https://hc-ping.com/UUID"',
        "",
        *_comment(
            "Encryption at rest (age): `safehold keygen` writes an identity (secret key) and "
            "prints its public key, the recipient; keep a copy of the identity off this host."
        ),
        "# [encryption]",
        '# recipients = ["age1..."]',
        '# identity_file = "/root/safehold-identity.txt"  # restore and verify need it',
        "",
        *_comment("A copy of every backup in an S3 bucket (credentials: a file, never here):"),
        "# [locations.offsite]",
        '# endpoint = "https://s3.example.com"',
        f"# bucket = {toml_value(bucket)}",
        '# prefix = "HOSTNAME/"',
        '# credentials_file = "/etc/safehold/s3.credentials"',
    ]


def _comment(text: str, width: int = 98) -> list[str]:
    """``text`` as ``#`` lines of at most ``width`` characters; ``\\n`` starts a new line."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(paragraph, width - 2, break_on_hyphens=False) or [""]
    return [f"# {line}".rstrip() for line in lines]
