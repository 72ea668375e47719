"""What every doctor check returns (one line of the report) and the facts the checks share,
so the check modules need not import the runner (``doctor``) that imports them."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import docker

Result = Literal["OK", "WARN", "FAIL", "SKIP"]
RESULTS: tuple[Result, ...] = ("OK", "WARN", "FAIL", "SKIP")
SHOWN = 5  # names listed in one detail before "and N more"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    check: str
    result: Result
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fix": self.fix or None}


@dataclass(frozen=True)
class ServerProcess:
    """The database server when it runs on this host: its data folder and the OS user (ids
    as the kernel has them, from /proc) that runs it, and so runs its archive_command."""

    data_directory: Path
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]
    user: str
    environ: (
        dict[str, str] | None
    )  # the postmaster's, which archive_command inherits; None: unreadable


@dataclass
class State:
    """What one check learns that later ones need."""

    server_version_num: int | None = None
    database_bytes: int | None = None
    superuser: bool = False
    server: ServerProcess | None = None
    server_unknown: str = "the server was not reached"  # why ``server`` is None
    docker_client: docker.DockerClient | None = None
    docker_failed: bool = False

    @property
    def reached(self) -> bool:
        return self.server_version_num is not None


def names(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def sql_name(name: str) -> str:
    """``name`` as typed in a statement shown in a fix: bare when PostgreSQL reads it back
    unchanged, else double-quoted."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'
