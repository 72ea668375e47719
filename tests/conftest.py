"""Real services for the tests, started here: a throwaway PostgreSQL cluster on loopback.

Nothing is mocked. In CI (CI=true) a missing service is a failure, never a skip: the fixtures
raise instead of skipping in every environment.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
from docker.models.images import Image
from docker.models.volumes import Volume

from safehold.errors import ToolError
from safehold.sandbox import SandboxCluster, load_sample
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sandbox.images import ensure_busybox_image
from safehold.sandbox.s3server import SandboxS3
from safehold.sources.postgres import PgTarget, connect, sequence_values, table_fingerprints
from safehold.storage import LocalStorage

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_USERS = 120

Fingerprint = tuple[dict[str, tuple[int, str]], dict[str, int | None]]


# Fixtures that start a service (a PostgreSQL cluster, a Docker engine, an S3 server): a test
# that uses one, directly or through another fixture, is a service test (``-m "not service"``
# runs the pure ones in seconds). Tests that start their own servers are marked where they are.
SERVICE_FIXTURES = frozenset({"pg", "engine", "s3"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.service)


@pytest.fixture(scope="session")
def pg() -> Iterator[SandboxCluster]:
    cluster = SandboxCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def db(pg: SandboxCluster, request: pytest.FixtureRequest) -> Iterator[PgTarget]:
    """A fresh database with the sample schema; it and its restore leftovers are dropped after."""
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:20].strip("_")
    name = f"t_{base}_{secrets.token_hex(3)}"
    load_sample(pg.target, name, users=SAMPLE_USERS)
    yield pg.target.with_db(name)
    drop_databases(pg.target, name)


def drop_databases(server: PgTarget, prefix: str) -> None:
    with connect(server, "postgres", autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)
            ).fetchall()
        ]
        for name in names:
            conn.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(name)
                )
            )


@pytest.fixture
def repo(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "backups")


def fingerprint(target: PgTarget, dbname: str | None = None) -> Fingerprint:
    """Rows and content hash per table, and every sequence's value."""
    with connect(target, dbname, autocommit=True) as conn:
        return table_fingerprints(conn), sequence_values(conn)


def databases(target: PgTarget) -> set[str]:
    with connect(target, "postgres", autocommit=True) as conn:
        return {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


def execute(target: PgTarget, statement: str, dbname: str | None = None) -> None:
    with connect(target, dbname, autocommit=True) as conn:
        conn.execute(statement)


def seed_env(target: PgTarget, backup_dir: Path) -> dict[str, str]:
    """The environment an operator sets: the seed's names, the password in PGPASSWORD."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG", "SAFEHOLD_"))}
    env.update(
        BACKUP_DIR=str(backup_dir),
        DB_HOST=target.host,
        DB_PORT=str(target.port),
        DB_NAME=target.dbname,
        DB_USER=target.user,
        PGPASSWORD=target.password or "",
        PYTHONPATH=str(ROOT / "src"),
    )
    return env


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli(db: PgTarget, repo: LocalStorage) -> CliRunner:
    """Run the real ``safehold`` command in a child process against ``db`` and ``repo``."""

    def run(
        *args: str, env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        full_env = seed_env(db, repo.root)
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "safehold", *args],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=kwargs.get("cwd", repo.root.parent),
        )

    return run


# ---- a private Docker engine (started once per session, only when a test asks for it) ----


@pytest.fixture(scope="session")
def engine() -> Iterator[SandboxDockerd]:
    started = SandboxDockerd()
    try:
        started.start()
    except ToolError as exc:
        started.remove()
        pytest.fail(f"the sandbox Docker engine did not start: {exc}", pytrace=False)
    try:
        yield started
    finally:
        started.remove()


@pytest.fixture(scope="session")
def client(engine: SandboxDockerd) -> Iterator[docker.DockerClient]:
    with contextlib.closing(engine.client()) as api:
        yield api


@pytest.fixture(scope="session")
def image(client: docker.DockerClient) -> Image:
    return ensure_busybox_image(client)


@pytest.fixture
def volume(client: docker.DockerClient) -> Iterator[Volume]:
    created = client.volumes.create(name=f"safehold-vol-{secrets.token_hex(4)}")
    try:
        yield created
    finally:
        for container in client.containers.list(all=True, filters={"volume": created.name}):
            container.remove(force=True)
        created.remove(force=True)


def run_in(client: docker.DockerClient, image: Image, volume: str, script: str) -> bytes:
    container = client.containers.run(
        image,
        ["sh", "-c", script],
        volumes={volume: {"bind": "/data", "mode": "rw"}},
        network_mode="none",
        detach=True,
    )
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs()
        return bytes(container.logs(stdout=True, stderr=False))
    finally:
        container.remove(force=True)


# ---- a private S3 server (SeaweedFS), started once per session when a test asks for it ----


def start_s3(**options: Any) -> SandboxS3:
    """A running sandbox server, or a test failure (never a skip, in CI or not)."""
    server = SandboxS3(**options)
    try:
        server.start()
    except ToolError as exc:
        server.remove()
        pytest.fail(f"the sandbox S3 server (SeaweedFS) did not start: {exc}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def s3() -> Iterator[SandboxS3]:
    server = start_s3()
    try:
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def http_serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on 127.0.0.1 (a free port) on a thread: yields http://127.0.0.1:PORT."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A JSON webhook on 127.0.0.1 (a free port): its URL and the bodies it received."""
    received: list[dict[str, object]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http_serving(Handler) as base:
        yield f"{base}/hook", received


__all__ = [
    "ROOT",
    "CliRunner",
    "Fingerprint",
    "databases",
    "drop_databases",
    "execute",
    "fingerprint",
    "http_serving",
    "run_in",
    "seed_env",
    "start_s3",
    "webhook_receiver",
]
