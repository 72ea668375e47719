"""Whole-system restore (restore --all) of a containerized service whose data must come back:
real PostgreSQL, a private Docker engine, and an HTTP service that serves from its volume."""

from __future__ import annotations

import http.server
import json
import secrets
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from docker.models.images import Image

from safehold import catalog
from safehold.errors import IntegrityError, RestoreError
from safehold.model import Manifest
from safehold.operations.system.plan import choose_set
from safehold.operations.system.steps import HEALTH_POLL_S, verify_members, wait_healthy
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner, databases, execute, fingerprint, http_serving

PROJECT_LABEL = "com.docker.compose.project"


@dataclass
class Service:
    container: Container
    volume: str
    root: Path  # the volume's folder on this host
    url: str  # answers 200 only while the volume holds www/health.txt
    project: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture
def service(client: docker.DockerClient, image: Image) -> Iterator[Service]:
    tag = secrets.token_hex(3)
    project = f"shop-{tag}"
    volume = client.volumes.create(name=f"{project}_data", labels={PROJECT_LABEL: project})
    root = Path(volume.attrs["Mountpoint"])
    (root / "www").mkdir()
    (root / "www" / "health.txt").write_text("ok\n")
    (root / "orders.json").write_text('{"orders": [1, 2, 3]}\n')
    port = free_port()
    container = client.containers.run(
        image,
        # As PID 1, httpd would ignore SIGTERM and every stop would wait for the kill.
        [
            "sh",
            "-c",
            f"trap 'kill $!; exit 0' TERM; httpd -f -p 127.0.0.1:{port} -h /data/www & wait",
        ],
        name=f"{project}-web",
        labels={PROJECT_LABEL: project},
        volumes={volume.name: {"bind": "/data"}},
        network_mode="host",
        detach=True,
    )
    url = f"http://127.0.0.1:{port}/health.txt"
    deadline = time.monotonic() + 30
    while status_of(url) != 200:
        assert time.monotonic() < deadline, container.logs()
        time.sleep(0.2)
    try:
        yield Service(container, str(volume.name), root, url, project)
    finally:
        container.remove(force=True)
        volume.remove(force=True)


def wreck(db: PgTarget, svc: Service) -> None:
    """The disaster: rows gone, files gone, the service unhealthy."""
    execute(db, "DELETE FROM app.files WHERE id % 2 = 0")
    (svc.root / "www" / "health.txt").unlink()
    (svc.root / "orders.json").write_text("corrupted")
    (svc.root / "junk.tmp").write_text("not in the backup")
    assert status_of(svc.url) == 404


def test_restore_all_brings_back_database_and_volume_and_checks_health(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    service: Service,
    tmp_path: Path,
) -> None:
    env = {"DOCKER_HOST": engine.base_url}
    before_db = fingerprint(db)
    made = run_cli("backup", "--all", "--volume", service.volume, "--json", env=env)
    assert made.returncode == 0, made.stderr
    set_id = json.loads(made.stdout)["id"]
    wreck(db, service)
    marker = tmp_path / "migrated"

    result = run_cli(
        "restore",
        "--all",
        "--set",
        set_id,
        "--project",
        service.project,
        "--post-restore-cmd",
        f'echo "$PGDATABASE" > {marker}',
        "--health-url",
        service.url,
        "--health-timeout",
        "60",
        "--json",
        env=env,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert fingerprint(db) == before_db
    assert (service.root / "www" / "health.txt").read_text() == "ok\n"
    assert (service.root / "orders.json").read_text() == '{"orders": [1, 2, 3]}\n'
    assert not (service.root / "junk.tmp").exists()
    assert marker.read_text().strip() == db.dbname  # ran with the database's settings
    service.container.reload()
    assert service.container.status == "running"
    assert status_of(service.url) == 200
    kinds = [s["kind"] for s in report["timings_s"]]
    assert kinds == [
        "verify", "stop", "roles", "database", "volume", "post", "start", "connect", "health"
    ]  # fmt: skip
    assert all(s["seconds"] >= 0 for s in report["timings_s"])
    objectives = {o["objective"]: o for o in report["objectives"]}
    assert set(objectives) == {"database", "container data", "full system"}
    assert objectives["full system"]["target_s"] == 7200 and objectives["full system"]["met"]
    assert report["containers"] == [f"{service.project}-web"]
    # Nothing lost: the replaced database and volume content are kept.
    assert any(name.startswith(f"{db.dbname}_pre_restore_") for name in databases(db))
    assert any("previous content of volume" in note for note in report["notes"])


def test_restore_all_text_output_shows_steps_and_objectives(
    run_cli: CliRunner, db: PgTarget, engine: SandboxDockerd, service: Service
) -> None:
    env = {"DOCKER_HOST": engine.base_url}
    assert run_cli("backup", "--all", "--volume", service.volume, env=env).returncode == 0
    plan = run_cli("restore", "--all", "--dry-run", "--project", service.project, env=env)
    assert plan.returncode == 0, plan.stderr
    assert "plan (dry run, nothing changed)" in plan.stdout
    assert f"stop containers {service.project}-web" in plan.stdout
    service.container.reload()
    assert service.container.status == "running"

    done = run_cli("restore", "--all", "--project", service.project, env=env)

    assert done.returncode == 0, done.stderr
    assert "recovery time against the objectives:" in done.stdout
    for line in ("database", "container data", "full system"):
        assert any(
            row.strip().startswith(line) and "met" in row for row in done.stdout.splitlines()
        )


def test_a_failed_step_says_where_it_stopped_and_how_to_continue(
    run_cli: CliRunner, db: PgTarget, engine: SandboxDockerd, service: Service
) -> None:
    env = {"DOCKER_HOST": engine.base_url}
    before_db = fingerprint(db)
    assert run_cli("backup", "--all", "--volume", service.volume, env=env).returncode == 0
    wreck(db, service)

    failed = run_cli(
        "restore",
        "--all",
        "--project",
        service.project,
        "--post-restore-cmd",
        "echo migrating; exit 3",
        env=env,
    )

    assert failed.returncode == 9, failed.stderr
    assert "stopped at step 6" in failed.stderr and "exit 3" in failed.stderr
    assert "--from-step 6" in failed.stderr
    assert "containers were started again" in failed.stderr
    service.container.reload()
    assert service.container.status == "running"
    # Steps before the failure are done: data is back.
    assert fingerprint(db) == before_db
    assert (service.root / "www" / "health.txt").exists()

    execute(db, "INSERT INTO public.audit_log (action) VALUES ('after')")
    after = fingerprint(db)
    resumed = run_cli(
        "restore",
        "--all",
        "--project",
        service.project,
        "--from-step",
        "6",
        "--post-restore-cmd",
        "true",
        "--json",
        env=env,
    )

    assert resumed.returncode == 0, resumed.stderr
    kinds = [s["kind"] for s in json.loads(resumed.stdout)["timings_s"]]
    assert "database" not in kinds and "volume" not in kinds and "post" in kinds
    assert fingerprint(db) == after  # the database was not restored a second time


def test_a_damaged_member_is_refused_before_anything_stops(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    service: Service,
) -> None:
    env = {"DOCKER_HOST": engine.base_url}
    made = run_cli("backup", "--all", "--volume", service.volume, "--json", env=env)
    assert made.returncode == 0, made.stderr
    member = next(m for m in json.loads(made.stdout)["members"] if m.startswith("volume_"))
    path = repo.path(member)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    service.container.reload()
    started = service.container.attrs["State"]["StartedAt"]
    wreck(db, service)
    wrecked = fingerprint(db)

    explicit = run_cli("restore", "--all", "--set", json.loads(made.stdout)["id"], env=env)
    assert explicit.returncode == 6, explicit.stderr
    assert "stopped at step 1" in explicit.stderr and "no data was changed" in explicit.stderr
    assert fingerprint(db) == wrecked

    # A truncated member makes the set damaged in the catalog: "latest" skips it.
    path.write_bytes(bytes(data[:100]))
    latest = run_cli("restore", "--all", env=env)
    assert latest.returncode == 2 and "no good full-system backup set" in latest.stderr
    assert fingerprint(db) == wrecked
    service.container.reload()
    assert service.container.attrs["State"]["StartedAt"] == started


def test_point_in_time_picks_the_newest_set_at_or_before_it(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    ids = []
    for round_ in range(2):
        (folder / "round.txt").write_text(str(round_))
        made = run_cli("backup", "--all", "--path", str(folder), "--json")
        assert made.returncode == 0, made.stderr
        ids.append(json.loads(made.stdout)["id"])
    first, second = catalog.read_sets(repo)

    assert choose_set(repo, None, first.started_at)[0].id == ids[0]
    assert choose_set(repo, None, second.started_at + timedelta(hours=1))[0].id == ids[1]
    assert choose_set(repo, "latest", None)[0].id == ids[1]
    between = first.started_at + (second.started_at - first.started_at) / 2
    chosen, why = choose_set(repo, None, between)
    assert chosen.id == ids[0] and "at or before" in why
    too_early = run_cli("restore", "--all", "--point-in-time", "2001-01-01 00:00", "--dry-run")
    assert too_early.returncode == 2 and "at or before 2001-01-01" in too_early.stderr

    # A set restores its folders in place, and the database with them.
    (folder / "round.txt").write_text("changed")
    done = run_cli("restore", "--all", "--set", ids[0])
    assert done.returncode == 0, done.stderr
    assert (folder / "round.txt").read_text() == "0"


def test_verify_reads_every_member_and_names_the_first_damaged_one(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    folders = [tmp_path / name for name in ("alpha", "beta")]
    for number, folder in enumerate(folders):
        folder.mkdir()
        (folder / "data.bin").write_bytes(secrets.token_bytes(300_000 + number))
    made = run_cli("backup", "--all", *[a for f in folders for a in ("--path", str(f))], "--json")
    assert made.returncode == 0, made.stderr
    members: list[Manifest] = []
    for name in json.loads(made.stdout)["members"]:
        manifest = catalog.read_manifest(repo, name if isinstance(name, str) else name["artifact"])
        assert manifest is not None
        members.append(manifest)
    # The database, its roles and the two folders, hashed at once.
    assert {m.kind for m in members} == {"database", "globals", "volume"}
    verify_members(members, repo, lambda _: None)
    first, second = [m for m in members if m.kind == "volume"]

    def damage(manifest: Manifest) -> None:
        path = repo.path(manifest.artifact)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    damage(second)
    with pytest.raises(IntegrityError, match=second.artifact):
        verify_members(members, repo, lambda _: None)
    damage(first)  # both damaged: the error is the plan's first, whichever ends first
    with pytest.raises(IntegrityError, match=first.artifact):
        verify_members(members, repo, lambda _: None)


@pytest.fixture
def slow_starting_app() -> Iterator[tuple[str, float]]:
    """A health URL that answers 503 for its first 0.3 s, as an application starting up."""
    ready_at = time.monotonic() + 0.3

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if time.monotonic() >= ready_at else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http_serving(Handler) as base:
        yield f"{base}/health", ready_at


def test_health_is_polled_often_while_the_application_starts(
    slow_starting_app: tuple[str, float],
) -> None:
    url, ready_at = slow_starting_app
    waited = wait_healthy(url, timeout=30)
    # Answered 0.3 s after the start: the restore notices it well before a 1 s poll would.
    assert time.monotonic() - ready_at < HEALTH_POLL_S / 2
    assert 0.25 < waited < 0.3 + HEALTH_POLL_S / 2


@pytest.mark.slow
def test_health_that_never_comes_fails_at_its_timeout() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/health"
    began = time.monotonic()
    with pytest.raises(RestoreError, match="did not answer 200 within 2s"):
        wait_healthy(url, timeout=2)
    assert 1.9 < time.monotonic() - began < 3.5
