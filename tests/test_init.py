"""`safehold init`: the renderer alone, then the real thing against the sandbox engine with
applications brought up by the real docker-compose (1.29), their images tagged postgres:16."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import docker
import pytest
from docker.models.images import Image

from safehold import config
from safehold.config.template import STOP_LABEL, Found, render, toml_value
from safehold.errors import UsageError
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.docker import engine as docker_engine
from safehold.sources.docker.compose import (
    ComposeProject,
    PostgresService,
    ServiceContainer,
    choose_project,
    parse_projects,
    postgres_major,
)

NOW = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)
PASSWORD = "s3cret-never-copied"


def _pg(**changes: object) -> PostgresService:
    base = PostgresService(
        container="shop-db-1",
        service="db",
        image="postgres:16.2-alpine",
        database="shop",
        user="shop_owner",
        password_in_env=True,
        password_file=None,
        password_file_on_host=None,
        container_port=5432,
        port_from_env=False,
        network_mode="shop_default",
        published=("127.0.0.1", 15432),
        address="172.18.0.2",
        network="shop_default",
        major=16,
        major_from="PG_MAJOR in the container's environment",
        volumes=("shop_db-data",),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _project(pg: PostgresService | None, *, labelled: bool = False) -> ComposeProject:
    app = ServiceContainer(
        name="shop-app-1",
        service="app",
        image="shop/app:3",
        state="running",
        volumes=("shop_app-data", "shop_user-data"),
        writes=("shop_app-data", "shop_user-data"),
        stop_labelled=labelled,
    )
    db = ServiceContainer("shop-db-1", "db", "postgres:16", "running", ("shop_db-data",), (), False)
    return ComposeProject(
        name="shop",
        working_dir="/srv/shop",
        config_files=("/srv/shop/compose.yaml",),
        containers=(app, db) if pg else (app,),
        volumes=("shop_app-data", "shop_db-data", "shop_user-data"),
        anonymous_volumes=(),
        bind_mounts=(),
        postgres=(pg,) if pg else (),
        compose_version="2.29.1",
    )


def _prose(text: str) -> str:
    """The comments as one line, so a test does not depend on where they wrap."""
    return " ".join(line.lstrip("# ") for line in text.splitlines())


def _load(text: str, folder: Path) -> config.Settings:
    path = folder / "safehold.toml"
    path.write_text(text)
    return config.load(path, env={})


# ---- the renderer, no engine ----


def test_toml_strings_survive_every_character() -> None:
    nasty = 'a"b\\c\nd\te\x00f\x7fg\u00e9h\U0001f600'
    assert tomllib.loads(f"k = {toml_value(nasty)}")["k"] == nasty
    assert tomllib.loads(f"k = {toml_value(['x', nasty])}")["k"] == ["x", nasty]


def test_published_port_and_password_file_load_with_the_real_loader(tmp_path: Path) -> None:
    secret = tmp_path / "db_password.txt"
    secret.write_text("from-the-file\n")
    pg = _pg(password_file="/run/secrets/db", password_file_on_host=str(secret))
    found = Found(_project(pg), "unix:///run/docker.sock", NOW, clients={16: "/opt/pg16/bin"})
    text = render(found)
    settings = _load(text, tmp_path)
    db = settings.database
    assert (db.host, db.port, db.name, db.user) == ("127.0.0.1", 15432, "shop", "shop_owner")
    assert db.password_file == secret and settings.password == "from-the-file"
    assert db.pg_bin_dir == Path("/opt/pg16/bin")
    assert settings.volumes.include == ("shop_app-data", "shop_user-data")
    assert settings.volumes.exclude == ("shop_db-data",)
    assert settings.restore.project == "shop"
    r = settings.retention
    assert (r.daily, r.weekly, r.monthly, r.yearly) == (30, 12, 12, 7)
    assert settings.schedule == config.ScheduleSettings()
    assert settings.objectives == config.ObjectiveSettings()
    # Where each value came from, and what to add to the compose file.
    assert "port = 15432  # published" in text
    assert 'name = "shop"  # POSTGRES_DB' in text
    assert "PostgreSQL 16 (PG_MAJOR" in text
    assert f'#         {STOP_LABEL}: "true"' in text
    assert "`docker compose up -d`" in text
    for section in ("# [encryption]", "# [locations.offsite]", "# [alerts]"):
        assert section in text


def test_unpublished_port_names_the_container_and_says_why(tmp_path: Path) -> None:
    pg = _pg(published=None, password_in_env=True)
    text = render(Found(_project(pg, labelled=True), "tcp://10.0.0.5:2376", NOW))
    settings = _load(text, tmp_path)
    assert (settings.database.host, settings.database.port) == ("172.18.0.2", 5432)
    assert "not published" in text and "127.0.0.1:5432:5432" in text
    assert "POSTGRES_PASSWORD" in text and "~/.pgpass" in text
    assert settings.password is None and settings.database.password_file is None
    assert "172.18.0.2:5432:*:shop_owner:PASSWORD" in text  # the ~/.pgpass line
    assert '# pg_bin_dir = "/usr/lib/postgresql/16/bin"' in text and "client-16" in text
    assert "Not labelled yet" not in text
    assert "Labelled already: app (shop-app-1)" in _prose(text)


def test_no_project_writes_the_defaults(tmp_path: Path) -> None:
    text = render(Found(None, "unix:///run/docker.sock", NOW))
    settings = _load(text, tmp_path)
    assert "No compose project was found" in text
    defaults = config.Settings()
    for section in config.schema.SECTIONS:
        assert getattr(settings, section) == getattr(defaults, section), section
    assert settings.locations == ()


def test_choosing_a_project_never_asks() -> None:
    shop, other = _project(_pg()), dataclasses.replace(_project(None), name="blog")
    assert choose_project([], None) is None
    assert choose_project([shop], None) is shop
    assert choose_project([shop, other], "blog") is other
    with pytest.raises(UsageError) as several:
        choose_project([shop, other], None)
    assert "shop, blog" in several.value.message and "--project" in (several.value.hint or "")
    with pytest.raises(UsageError) as missing:
        choose_project([shop], "nope")
    assert "projects there: shop" in (missing.value.hint or "")


def test_inspect_documents_become_a_project() -> None:
    labels = {"com.docker.compose.project": "ts", "com.docker.compose.service": "db"}
    doc = {
        "Name": "/ts-db-1",
        "Config": {
            "Image": "timescale/timescaledb:2.14.2-pg15",
            "Labels": labels,
            "Env": ["POSTGRES_PASSWORD=x", "PGPORT=6000"],
            "Cmd": ["postgres"],
        },
        "HostConfig": {"NetworkMode": "ts_default", "PortBindings": {}},
        "NetworkSettings": {
            "Ports": {"6000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "16000"}]}  # noqa: S104
        },
        "Mounts": [{"Type": "volume", "Name": "ts_pg", "Destination": "/var/lib/postgresql/data"}],
    }
    (project,) = parse_projects([doc], [])
    (pg,) = project.postgres
    assert (pg.published, pg.container_port, pg.major) == (("localhost", 16000), 6000, 15)
    assert project.database_volumes == ("ts_pg",) and project.data_volumes == ()
    assert postgres_major("postgis/postgis:16-3.4", {}) == (16, "the image tag '16-3.4'")
    assert postgres_major("postgres:latest", {"PG_MAJOR": "17"})[0] == 17
    assert postgres_major("postgres:latest", {}) == (None, "")


def test_the_stop_label_is_the_one_backups_read() -> None:
    assert STOP_LABEL == docker_engine.STOP_LABEL


# ---- against the sandbox engine, with the real docker-compose ----

# Exits at once on SIGTERM (a bare sleep as PID 1 ignores it), so `down` does not wait.
IDLE = """x-idle: &idle ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]\n"""
SHOP = (
    IDLE
    + """\
services:
  db:
    image: postgres:16
    command: *idle
    network_mode: host
    environment:
      POSTGRES_DB: shop
      POSTGRES_USER: shop_owner
      POSTGRES_PASSWORD_FILE: /run/secrets/db_password
      PGPORT: "5433"
    volumes:
      - db-data:/var/lib/postgresql/data
      - ./secrets/db_password:/run/secrets/db_password:ro
  app:
    image: safehold-busybox:latest
    command: *idle
    network_mode: host
    volumes:
      - app-data:/app/data
      - user-data:/app/users
  report:
    image: safehold-busybox:latest
    command: *idle
    network_mode: host
    volumes:
      - user-data:/reports/users:ro
volumes:
  db-data:
  app-data:
  user-data:
"""
)
BLOG = (
    IDLE
    + f"""\
services:
  pg:
    image: postgres:16
    command: *idle
    network_mode: host
    environment:
      POSTGRES_PASSWORD: {PASSWORD}
    volumes:
      - pg:/var/lib/postgresql/data
volumes:
  pg:
"""
)


class Compose:
    """docker-compose 1.29 against the sandbox engine; every project it brings up comes down."""

    def __init__(self, engine: SandboxDockerd, root: Path) -> None:
        binary = shutil.which("docker-compose")
        if binary is None:
            pytest.fail("docker-compose is not installed (scripts/install-deps.sh installs it)")
        self.binary, self.root = binary, root
        self.up_: list[Path] = []
        # The settings must come from the file alone: no seed or SAFEHOLD_ variable of ours.
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SAFEHOLD_", "DB_", "PG", "COMPOSE_")) and k != "BACKUP_DIR"
        }
        self.env["DOCKER_HOST"] = engine.base_url

    def up(self, name: str, compose_file: str) -> Path:
        folder = self.root / name
        (folder / "secrets").mkdir(parents=True)
        (folder / "secrets" / "db_password").write_text(PASSWORD + "\n")
        (folder / "docker-compose.yml").write_text(compose_file)
        self.up_.append(folder)
        self.run(folder, "up", "-d")
        return folder

    def run(self, folder: Path, *args: str) -> None:
        subprocess.run(
            [self.binary, *args], cwd=folder, env=self.env, check=True, capture_output=True
        )

    def init(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "safehold", "init", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def down(self) -> None:
        for folder in reversed(self.up_):
            self.run(folder, "down", "-v", "--timeout", "0")


@pytest.fixture
def compose(
    engine: SandboxDockerd, image: Image, client: docker.DockerClient, tmp_path: Path
) -> Iterator[Compose]:
    image.tag("postgres", "16")  # the busybox image under a name that looks like PostgreSQL
    runner = Compose(engine, tmp_path / "apps")
    try:
        yield runner
    finally:
        runner.down()
        client.images.remove("postgres:16")


@pytest.fixture
def here(tmp_path: Path) -> Path:
    """The folder init runs in (the apps live beside it)."""
    folder = tmp_path / "here"
    folder.mkdir()
    return folder


def test_init_reads_a_compose_application(compose: Compose, here: Path) -> None:
    shop = compose.up("shop", SHOP)
    result = compose.init("--dry-run", cwd=here)
    assert result.returncode == 0, result.stderr
    assert not (here / "safehold.toml").exists()
    text = result.stdout
    values = tomllib.loads(text)
    assert values["restore"]["project"] == "shop"
    assert values["database"] == {
        "host": "localhost",
        "port": 5433,
        "name": "shop",
        "user": "shop_owner",
        "password_file": str(shop / "secrets" / "db_password"),
    }
    assert values["volumes"] == {
        "include": ["shop_app-data", "shop_user-data"],
        "exclude": ["shop_db-data"],
    }
    assert "port = 5433  # PGPORT in the container's environment" in text
    assert "network_mode host" in text and "PostgreSQL 16 (the image tag '16')" in text
    assert f"# compose file: {shop / 'docker-compose.yml'}" in text
    # app writes to the volumes and must stop; report only reads them.
    assert "Not labelled yet: app (shop_app_1)." in text and "report (" not in text
    for where in (text, result.stderr):
        assert f'        {STOP_LABEL}: "true"' in where
        assert "`docker-compose up -d`" in where
    assert PASSWORD not in text + result.stderr


def test_init_writes_once_atomically_and_the_loader_agrees(compose: Compose, here: Path) -> None:
    compose.up("shop", SHOP)
    printed = compose.init("--dry-run", cwd=here).stdout
    written = compose.init(cwd=here)
    assert written.returncode == 0, written.stderr
    path = here / "safehold.toml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert tomllib.loads(path.read_text()) == tomllib.loads(printed)
    assert [p.name for p in here.iterdir()] == ["safehold.toml"]  # no temp file left
    settings = config.load(path, env={})
    assert settings.database.port == 5433 and settings.password == PASSWORD
    shown = subprocess.run(
        [sys.executable, "-m", "safehold", "config", "--json"],
        cwd=here,
        env=compose.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["database"]["name"] == "shop" and data["restore"]["project"] == "shop"
    # A second run refuses and leaves the file as it was; --force replaces it.
    path.write_text(path.read_text() + "# edited by hand\n")
    before = path.read_bytes()
    again = compose.init(cwd=here)
    assert again.returncode == 2 and "exists; nothing was written" in again.stderr
    assert "--force" in again.stderr and path.read_bytes() == before
    forced = compose.init("--force", cwd=here)
    assert forced.returncode == 0, forced.stderr
    assert "# edited by hand" not in path.read_text()


def test_several_projects_need_a_name(compose: Compose, here: Path) -> None:
    compose.up("shop", SHOP)
    compose.up("blog", BLOG)
    refused = compose.init("--dry-run", cwd=here)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "2 compose projects on the Docker engine: blog, shop" in refused.stderr
    assert "safehold init --project blog" in refused.stderr
    chosen = compose.init("--project", "blog", "--json", "--dry-run", cwd=here)
    assert chosen.returncode == 0, chosen.stderr
    found = json.loads(chosen.stdout)
    assert found["projects"] == ["blog", "shop"] and found["written"] is None
    assert found["project"]["postgres"][0]["password_in_env"] is True
    values = tomllib.loads(found["config"])
    assert values["database"]["name"] == "postgres" and values["database"]["user"] == "postgres"
    assert values["volumes"] == {"include": [], "exclude": ["blog_pg"]}
    assert PASSWORD not in chosen.stdout + chosen.stderr
    assert "Other compose projects there: shop." in found["config"]


def test_no_project_writes_defaults_and_says_so(compose: Compose, here: Path) -> None:
    result = compose.init("--output", str(here / "app.toml"), cwd=here)
    assert result.returncode == 0, result.stderr
    assert "no compose project found on the Docker engine" in result.stderr
    settings = config.load(here / "app.toml", env={})
    assert settings.database == config.DatabaseSettings()
    assert settings.volumes == config.VolumeSettings() and settings.restore.project == ""
