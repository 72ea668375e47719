from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..config import APP_DIR_ENV
from ..config.template import Found, render, stop_hint
from ..errors import ConfigError, UsageError
from ..sources.docker.compose import ComposeProject, choose_project, find_projects
from ..sources.docker.engine import connect_docker

# The --help examples are in cli/examples.py's table, with every command's.


@click.command("init")
@click.option("--project", help="the compose project to write for (required when several run)")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"file to write (default ./safehold.toml, or in ${APP_DIR_ENV})",
)
@click.option("--dry-run", is_flag=True, help="print the config on stdout, write nothing")
@click.option("--force", is_flag=True, help="replace the file if it exists")
@click.option("--json", "as_json", is_flag=True, help="print what was found as JSON")
def init_cmd(
    project: str | None, output: Path | None, dry_run: bool, force: bool, as_json: bool
) -> None:
    """Write a commented safehold.toml for the compose application on the Docker engine.

    Reads the engine (DOCKER_HOST, else the local socket): the compose projects from their
    containers' labels, each project's named volumes, and the PostgreSQL service's database,
    role, port and version from its environment and image. Asks nothing: with several
    projects name one with --project. The password is never written; the file says how to
    give it. Refuses to replace an existing file without --force.
    """
    path = output or _default_path()
    if not dry_run and not force and path.exists():
        raise _exists(path)
    with contextlib.closing(connect_docker()) as client:
        projects = find_projects(client)
    chosen = choose_project(projects, project)
    found = Found(
        project=chosen,
        engine=_engine(),
        now=datetime.now(UTC),
        others=tuple(p.name for p in projects if p is not chosen),
        clients=_pg_clients(),
    )
    text = render(found)
    if not dry_run:
        _write(path, text, force=force)
    if as_json:
        click.echo(json.dumps(_report(found, text, None if dry_run else path), indent=2))
    elif dry_run:
        click.echo(text, nl=False)
    _tell(chosen, None if dry_run else path)


def _default_path() -> Path:
    app_dir = os.environ.get(APP_DIR_ENV, "")
    return Path(os.path.expanduser(app_dir)) / "safehold.toml" if app_dir else Path("safehold.toml")


def _engine() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _pg_clients() -> dict[int, str]:
    """The PostgreSQL client tools installed here (Debian's layout), by major version."""
    found: dict[int, str] = {}
    for tool in glob.glob("/usr/lib/postgresql/*/bin/pg_dump"):
        version = Path(tool).parent.parent.name
        if version.isdigit():
            found[int(version)] = str(Path(tool).parent)
    return found


def _exists(path: Path) -> UsageError:
    return UsageError(
        f"{path} exists; nothing was written",
        hint="--force replaces it, --dry-run prints the new one, --output writes elsewhere",
    )


def _write(path: Path, text: str, *, force: bool) -> None:
    """All or nothing: a temp file beside ``path`` (0600), synced, then linked in (which
    fails if a file appeared meanwhile) or, with ``force``, renamed over it."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(
            f"cannot write in {path.parent}: {exc.strerror}; nothing was written",
            hint="create the folder first, or choose another with --output",
        ) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if force:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
        with contextlib.suppress(OSError):  # the rename's own durability; best effort
            folder = os.open(path.parent, os.O_RDONLY)
            os.fsync(folder)
            os.close(folder)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _link_new(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # A filesystem without hard links: check, then rename (a small race, never a mix).
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(tmp, path)


def _report(found: Found, text: str, written: Path | None) -> dict[str, Any]:
    project = found.project
    data: dict[str, Any] = {
        "engine": found.engine,
        "projects": sorted([*found.others, *([project.name] if project else [])]),
        "project": dataclasses.asdict(project) if project else None,
        "volumes": list(project.data_volumes) if project else [],
        "database_volumes": list(project.database_volumes) if project else [],
        "stop": [c.name for c in project.writers(project.data_volumes)] if project else [],
        "stop_hint": stop_hint(project) if project else [],
        "written": str(written.absolute()) if written else None,
    }
    if written is None:
        data["config"] = text
    return data


def _tell(project: ComposeProject | None, written: Path | None) -> None:
    """What was done, on stderr (stdout holds the config or the JSON)."""
    where = f"wrote {written}" if written else "printed the config (nothing written)"
    if project is None:
        click.echo(
            f"no compose project found on the Docker engine at {_engine()}: {where} with "
            "safehold's defaults; set [database] and [volumes] in it",
            err=True,
        )
    else:
        pg = project.postgres[0] if project.postgres else None
        db = (
            f"database {pg.database or pg.user or 'postgres'} (service {pg.service})"
            if pg
            else ("no PostgreSQL container")
        )
        volumes = ", ".join(project.data_volumes) or "no volumes"
        click.echo(f"{where} for the compose project {project.name}: {db}; {volumes}", err=True)
        for line in stop_hint(project):
            click.echo(line, err=True)
    target = "" if written in (None, Path("safehold.toml")) else f" --config {written}"
    click.echo(f"next: safehold config{target}; safehold doctor{target}", err=True)
