"""The container image (scripts/build-image.sh: Debian packages only, nothing pulled) built into
the sandbox engine, then used as operators use it: tools, --help, the default daemon, a backup
and a whole-system restore of a sample app run from the image, and the compose example."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import APIError, ImageNotFound
from docker.models.containers import Container
from docker.models.images import Image

from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sandbox.images import DEFAULT_TAG as BUSYBOX_TAG
from safehold.sandbox.s3server import SandboxS3
from safehold.sources.postgres import PgTarget

from .conftest import ROOT, execute, fingerprint, run_in

pytestmark = [pytest.mark.service, pytest.mark.slow, pytest.mark.timeout(1200)]

UID = 10001  # the image's user safehold (scripts/build-image.sh)
BUILD_LIMIT_S = 600.0
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
EXAMPLE = ROOT / "examples" / "compose"
# Modes, owners, link targets and content of a volume, as a busybox container sees them.
FILL = (
    "mkdir -p /data/uploads/u1 && echo original > /data/uploads/u1/a.txt"
    " && seq 1 5000 > /data/big.txt && ln -s uploads/u1/a.txt /data/link"
    " && chmod 600 /data/uploads/u1/a.txt && chown -R 1000:1000 /data/uploads"
)
READ = (
    "cd /data && find . | sort | while read -r f; do stat -c '%n %F %a %u:%g' \"$f\"; done"
    " && find . -type f | sort | xargs md5sum && readlink link"
)
DAMAGE = "rm -rf /data/uploads && echo junk > /data/big.txt && echo new > /data/extra.txt"
IDLE = ["sh", "-c", "trap 'exit 0' TERM; while sleep 1; do :; done"]


def note(request: pytest.FixtureRequest, line: str) -> None:
    """A line in pytest's live output (the build's timing is worth seeing on every run)."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"test_image: {line}")


@pytest.fixture(scope="module", autouse=True)
def leave_the_engine_as_found(client: docker.DockerClient, image: Image) -> Iterator[None]:
    """The shared engine's other tests expect only the sandbox's own image (``image`` makes
    it first): drop every tag and image this module adds (the built image, the helper images
    safehold makes from inside it, compose's stand-ins)."""
    before = client.images.list(all=True)
    tags, ids = {t for i in before for t in i.tags}, {i.id for i in before}
    yield
    for found in client.images.list(all=True):
        for tag in set(found.tags) - tags:
            with contextlib.suppress(ImageNotFound, APIError):
                client.images.remove(tag)
    for found in client.images.list(all=True):
        if found.id is not None and found.id not in ids:
            with contextlib.suppress(ImageNotFound, APIError):
                client.images.remove(found.id, force=True)
    assert {t for i in client.images.list(all=True) for t in i.tags} == tags


@pytest.fixture(scope="module")
def safehold_image(engine: SandboxDockerd, request: pytest.FixtureRequest) -> str:
    """The image, built once per session into the sandbox engine (the .debs and wheels are
    cached under .cache/image/, the root file system is built afresh)."""
    tag = f"safehold:test-{secrets.token_hex(3)}"
    started = time.monotonic()
    built = subprocess.run(
        [str(ROOT / "scripts" / "build-image.sh"), "--tag", tag, "--docker-host", engine.base_url],
        capture_output=True,
        text=True,
        timeout=BUILD_LIMIT_S + 300,
        check=False,
    )
    took = time.monotonic() - started
    assert built.returncode == 0, built.stdout + built.stderr
    for line in built.stdout.splitlines():
        if line.startswith("build-image: "):
            note(request, line)
    note(request, f"image built in {took:.0f}s")
    assert took < BUILD_LIMIT_S, f"the image took {took:.0f}s to build"
    return tag


def run_image(
    client: docker.DockerClient, tag: str, command: list[str], **options: Any
) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``docker run --network host [OPTIONS] IMAGE COMMAND``."""
    container = client.containers.run(tag, command, network_mode="host", detach=True, **options)
    try:
        status = int(container.wait(timeout=300)["StatusCode"])
        out = container.logs(stdout=True, stderr=False).decode()
        err = container.logs(stdout=False, stderr=True).decode()
        return status, out, err
    finally:
        container.remove(force=True)


def wait_for_log(container: Container, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = container.logs().decode()
        if text in logs:
            return logs
        assert time.monotonic() < deadline, logs
        time.sleep(0.2)


def started_at(container: Container) -> str:
    container.reload()
    assert container.status == "running", container.status
    return str(container.attrs["State"]["StartedAt"])


def repository_folder(tmp_path: Path) -> Path:
    """A backup folder the image's user owns, as the docs tell operators to make it."""
    folder = tmp_path / "backups"
    folder.mkdir(mode=0o700)
    os.chown(folder, UID, UID)
    return folder


def test_image_settings_tools_help_and_default_daemon(
    client: docker.DockerClient, safehold_image: str
) -> None:
    config = client.images.get(safehold_image).attrs["Config"]
    assert config["Cmd"] == ["daemon"]
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "/opt/safehold/bin/safehold"]
    assert config["User"] == f"{UID}:{UID}"
    assert "BACKUP_DIR=/backups" in config["Env"]
    assert "/backups" in config["Volumes"]
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION

    status, out, err = run_image(client, safehold_image, ["--help"])
    assert status == 0, err
    assert out.startswith("Usage: safehold") and "backup" in out and "restore" in out

    # No command: the daemon, PID 1 being tini, which hands it docker stop's SIGTERM.
    daemon = client.containers.run(safehold_image, network_mode="none", detach=True)
    try:
        wait_for_log(daemon, "daemon: started")
        tools = daemon.exec_run(
            [
                "sh",
                "-c",
                "set -e; id -un; pg_dump --version; pg_restore --version; tini --version;"
                " seq 1 1000 | zstd -q | zstd -dq | md5sum;"
                " age-keygen -o /tmp/k 2>/dev/null;"
                " seq 1 1000 | age -r $(age-keygen -y /tmp/k) | age -d -i /tmp/k | md5sum;"
                " age --version; cat /proc/1/cmdline | tr '\\0' ' '",
            ]
        )
        assert tools.exit_code == 0 and isinstance(tools.output, bytes), tools.output
        lines = tools.output.decode().splitlines()
        numbers = "".join(f"{n}\n" for n in range(1, 1001)).encode()
        expected = f"{hashlib.md5(numbers).hexdigest()}  -"  # noqa: S324 (md5sum's output)
        assert lines[0] == "safehold"
        assert re.match(r"pg_dump \(PostgreSQL\) 15\.\d+", lines[1]), lines
        assert re.match(r"pg_restore \(PostgreSQL\) 15\.\d+", lines[2]), lines
        assert lines[3].startswith("tini version")
        assert lines[4] == lines[5] == expected  # zstd and age round trips
        assert re.match(r"v?1\.\d+\.\d+", lines[6]), lines
        assert lines[7].startswith("/usr/bin/tini -- /opt/safehold/bin/safehold daemon")
        stopping = time.monotonic()
        daemon.stop(timeout=20)
        assert time.monotonic() - stopping < 10  # stopped by the signal, not killed at 20 s
        daemon.reload()
        assert daemon.attrs["State"]["ExitCode"] == 0
        assert "daemon: stopped (SIGTERM)" in daemon.logs().decode()
    finally:
        daemon.remove(force=True)


@pytest.fixture
def app(client: docker.DockerClient, image: Image) -> Iterator[tuple[Container, list[str]]]:
    """The sample app's files: two volumes, filled, and a running container using them that
    carries the stop label (the database is the ``db`` fixture)."""
    project = f"img-{secrets.token_hex(3)}"
    names = [f"{project}_app-data", f"{project}_user-data"]
    for name in names:
        client.volumes.create(name=name)
        run_in(client, image, name, FILL)
    container = client.containers.run(
        image,
        IDLE,
        name=f"{project}-app",
        labels={"safehold.stop-during-backup": "true"},
        volumes={name: {"bind": f"/mnt/{name}"} for name in names},
        network_mode="none",
        detach=True,
    )
    try:
        yield container, names
    finally:
        container.remove(force=True)
        for name in names:
            client.volumes.get(name).remove(force=True)


def test_backup_and_restore_all_from_the_image(
    client: docker.DockerClient,
    image: Image,
    engine: SandboxDockerd,
    db: PgTarget,
    app: tuple[Container, list[str]],
    safehold_image: str,
    tmp_path: Path,
) -> None:
    container, names = app
    backups = repository_folder(tmp_path)

    def from_image(*command: str) -> tuple[int, str, str]:
        return run_image(
            client,
            safehold_image,
            list(command),
            environment={
                "DB_HOST": db.host,
                "DB_PORT": str(db.port),
                "DB_NAME": db.dbname,
                "DB_USER": db.user,
                "PGPASSWORD": db.password or "",
            },
            volumes={
                str(engine.socket): {"bind": "/var/run/docker.sock"},
                str(backups): {"bind": "/backups"},
            },
            # The user safehold reads the socket through the socket's group, as the docs say.
            group_add=[str(engine.socket.stat().st_gid)],
        )

    rows_before = fingerprint(db)
    files_before = {name: run_in(client, image, name, READ) for name in names}
    app_started = started_at(container)

    volume_args = [arg for name in names for arg in ("--volume", name)]
    status, out, err = from_image("backup", "--all", *volume_args, "--json")

    assert status == 0, err
    set_id = json.loads(out)["id"]
    assert "(engine API)" in err  # no volume folder in the container: helpers did the reading
    assert started_at(container) != app_started  # stopped for the copy, started again
    made = {p.name: p.stat() for p in backups.iterdir() if p.is_file()}
    assert f"db_backup_{set_id}.sql" in made
    assert {f"volume_{name}_{set_id}.tar.gz" for name in names} <= set(made)
    assert all(st.st_uid == UID and st.st_mode & 0o077 == 0 for st in made.values())
    listed = subprocess.run(
        ["tar", "-tzf", str(backups / f"volume_{names[0]}_{set_id}.tar.gz")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"./big.txt", "./link", "./uploads/u1/a.txt"} <= set(listed)

    execute(db, "DELETE FROM app.files WHERE id % 2 = 0")
    execute(db, "UPDATE app.users SET display = 'lost'")
    for name in names:
        assert run_in(client, image, name, f"{DAMAGE} && {READ}") != files_before[name]
    assert fingerprint(db) != rows_before

    status, out, err = from_image("restore", "--all", "--set", set_id, "--json")

    assert status == 0, err
    assert [step["kind"] for step in json.loads(out)["timings_s"]][-3:] == [
        "volume",
        "start",
        "connect",
    ]
    assert fingerprint(db) == rows_before
    assert {name: run_in(client, image, name, READ) for name in names} == files_before
    started_at(container)  # running again


def compose_stack(tmp_path: Path, s3: SandboxS3, bucket: str, db: PgTarget) -> Path:
    """The example's files in a folder of their own, with this test's keys, bucket and secrets."""
    stack = tmp_path / "stack"
    (stack / "secrets").mkdir(parents=True)
    shutil.copy(EXAMPLE / "docker-compose.yml", stack)
    identity = stack / "secrets" / "age-identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], capture_output=True, check=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(identity)], capture_output=True, text=True, check=True
    ).stdout.strip()
    (stack / "secrets" / "db-password.txt").write_text(db.password or "")
    for secret in (stack / "secrets").iterdir():
        os.chown(secret, UID, UID)
        secret.chmod(0o400)
    config = (EXAMPLE / "safehold.toml").read_text()
    for pattern, value in (
        (r'recipients = \["age1[a-z0-9]+"\]', f'recipients = ["{public}"]'),
        (r'endpoint = "[^"]+"', f'endpoint = "{s3.endpoint}"'),
        (r'bucket = "[^"]+"', f'bucket = "{bucket}"'),
    ):
        config, count = re.subn(pattern, value, config)
        assert count == 1, f"the example's safehold.toml lost {pattern}"
    (stack / "safehold.toml").write_text(config)
    repository_folder(stack)
    return stack


def override(tag: str, db: PgTarget, metrics_port: int) -> str:
    """Host networking (the sandbox engine has no bridge), stand-ins for images that would be
    pulled (postgres, the app), the tests' PostgreSQL, metrics on loopback only."""
    return f"""
version: "3.8"
services:
  postgres:
    image: {BUSYBOX_TAG}
    command: {json.dumps(IDLE)}
    healthcheck: {{test: ["CMD", "true"]}}
    network_mode: host
  app:
    image: {BUSYBOX_TAG}
    command: {json.dumps(IDLE)}
    network_mode: host
  safehold:
    image: {tag}
    command: ["daemon", "--metrics-port", "{metrics_port}", "--metrics-host", "127.0.0.1"]
    network_mode: host
    environment:
      DB_HOST: "{db.host}"
      DB_PORT: "{db.port}"
      DB_NAME: "{db.dbname}"
      DB_USER: "{db.user}"
"""


def test_compose_example_backs_up_the_app_from_its_daemon_container(
    client: docker.DockerClient,
    image: Image,
    engine: SandboxDockerd,
    db: PgTarget,
    s3: SandboxS3,
    safehold_image: str,
    tmp_path: Path,
) -> None:
    assert BUSYBOX_TAG in image.tags  # the stand-ins' image
    bucket = s3.bucket()
    stack = compose_stack(tmp_path, s3, bucket, db)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = int(probe.getsockname()[1])
    (stack / "docker-compose.test.yml").write_text(override(safehold_image, db, metrics_port))
    project = f"img{secrets.token_hex(3)}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "AWS_"))},
        "DOCKER_HOST": engine.base_url,
        "DOCKER_SOCKET": str(engine.socket),
        "DOCKER_GID": str(engine.socket.stat().st_gid),
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }
    base = ["docker-compose", "-p", project, "-f", "docker-compose.yml"]
    compose = [*base, "-f", "docker-compose.test.yml"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose, *args], cwd=stack, env=env, capture_output=True, text=True, timeout=300
        )

    try:
        up = run("up", "-d")
        assert up.returncode == 0, up.stderr
        for name in ("app-data", "user-data"):
            run_in(client, image, name, FILL)
        daemon = client.containers.get(f"{project}_safehold_1")
        wait_for_log(daemon, "daemon: started")
        app = client.containers.get(f"{project}_app_1")
        app_started = started_at(app)

        made = run("exec", "-T", "safehold", "safehold", "backup", "--all", "--json")

        assert made.returncode == 0, made.stderr
        set_id = json.loads(made.stdout)["id"]
        assert started_at(app) != app_started  # the stop label of the example's app
        names = {p.name for p in (stack / "backups").iterdir() if p.is_file()}
        expected = {
            f"db_backup_{set_id}.sql.zst.age",
            f"volume_app-data_{set_id}.tar.zst.age",
            f"volume_user-data_{set_id}.tar.zst.age",
        }
        assert expected <= names
        offsite = s3.storage(bucket, "app-host-1")
        assert expected <= set(offsite.list())  # copied with the credentials from the env
        # The identity secret opens every member, to the last byte.
        checked = run("exec", "-T", "safehold", "safehold", "verify", "--level", "full", "--json")
        assert checked.returncode == 0, checked.stderr
        outcomes = {r["artifact"]: (r["level"], r["outcome"]) for r in json.loads(checked.stdout)}
        assert {outcomes[name] for name in expected} == {("full", "ok")}
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as answer:
            assert b"safehold_" in answer.read()
    finally:
        down = run("down", "--volumes", "--timeout", "5")
    assert down.returncode == 0, down.stderr
