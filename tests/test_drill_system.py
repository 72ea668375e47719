"""The full-system drill (drill --full-system): a real set restored into an isolated rehearsal on
a real PostgreSQL cluster and a private Docker engine, production fingerprinted before and after.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.models.images import Image

from safehold.errors import RestoreError
from safehold.model import Event, Objectives
from safehold.operations import journal
from safehold.operations.checks.drill import read_drills
from safehold.operations.checks.rehearsal import SystemDrillOptions, drill_system
from safehold.operations.checks.rehearsal_docker import DRILL_LABEL
from safehold.operations.report.status import read_status
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import CliRunner, databases, fingerprint, seed_env
from .test_system_restore import PROJECT_LABEL, free_port, status_of

SECOND_NS = 1_000_000_000


@dataclass
class App:
    project: str
    volume: str
    root: Path
    url: str


@pytest.fixture
def make_app(client: docker.DockerClient, image: Image) -> Iterator[Callable[..., App]]:
    """A compose-labelled web service serving from its volume; its HEALTHCHECK is ``health``.
    Production runs with the host's network (the test engine has no bridge)."""
    made: list[tuple[Any, Any]] = []

    def make(health: str, check_timeout_s: int = 30) -> App:
        project = f"dr-{secrets.token_hex(3)}"
        volume = client.volumes.create(name=f"{project}_data", labels={PROJECT_LABEL: project})
        root = Path(volume.attrs["Mountpoint"])
        (root / "www").mkdir()
        (root / "www" / "health.txt").write_text("ok\n")
        (root / "orders.json").write_text('{"orders": [1, 2, 3]}\n')
        port = free_port()
        container = client.containers.run(
            image,
            [
                "sh",
                "-c",
                f"trap 'kill $!; exit 0' TERM; httpd -f -p 127.0.0.1:{port} -h /data/www & wait",
            ],
            name=f"{project}-web",
            labels={PROJECT_LABEL: project, "com.docker.compose.service": "web"},
            volumes={volume.name: {"bind": "/data"}},
            network_mode="host",
            healthcheck={
                "test": ["CMD-SHELL", health],
                "interval": SECOND_NS // 5,
                "timeout": check_timeout_s * SECOND_NS,
                "retries": 2,
            },
            detach=True,
        )
        made.append((container, volume))
        url = f"http://127.0.0.1:{port}/health.txt"
        deadline = time.monotonic() + 30
        while status_of(url) != 200:
            assert time.monotonic() < deadline, container.logs()
            time.sleep(0.2)
        return App(project, str(volume.name), root, url)

    yield make
    for container, volume in made:
        container.remove(force=True)
        volume.remove(force=True)


def production(client: docker.DockerClient, db: PgTarget, app: App) -> dict[str, Any]:
    """Everything a drill must leave as it was: the live database's content, the server's
    databases and roles, the volume's files, every container (id, state, start time, restarts),
    every volume and network."""
    files = {
        str(p.relative_to(app.root)): (p.stat().st_mode, hashlib.sha256(p.read_bytes()).digest())
        for p in sorted(app.root.rglob("*"))
        if p.is_file()
    }
    with connect(db, "postgres", autocommit=True) as conn:
        roles = sorted(str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles"))
    containers = []
    for c in client.containers.list(all=True):
        state = c.attrs["State"]
        containers.append(
            (c.id, c.name, state["Status"], state["StartedAt"], c.attrs["RestartCount"])
        )
    return {
        "db": fingerprint(db),
        "databases": databases(db),
        "roles": roles,
        "files": files,
        "containers": sorted(containers),
        "volumes": sorted(str(v.name) for v in client.volumes.list()),
        "networks": sorted(str(n.name) for n in client.networks.list()),
    }


def leftovers(client: docker.DockerClient, db: PgTarget) -> list[str]:
    label: dict[str, str | list[str] | bool] = {"label": DRILL_LABEL}
    found = [f"container {c.name}" for c in client.containers.list(all=True, filters=label)]
    found += [f"network {n.name}" for n in client.networks.list(filters=label)]
    found += [f"volume {v.name}" for v in client.volumes.list(filters=label)]
    found += [f"database {d}" for d in databases(db) if d.startswith(f"{db.dbname}_drill_")]
    return found


def back_up(run_cli: CliRunner, engine: SandboxDockerd, app: App) -> str:
    made = run_cli(
        "backup", "--all", "--volume", app.volume, "--json", env={"DOCKER_HOST": engine.base_url}
    )
    assert made.returncode == 0, made.stderr
    return str(json.loads(made.stdout)["id"])


def test_rehearsal_runs_isolated_on_restored_data_is_timed_and_leaves_production_alone(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    make_app: Callable[..., App],
    tmp_path: Path,
) -> None:
    app = make_app("grep -q ok /data/www/health.txt")
    set_id = back_up(run_cli, engine, app)
    # Production moves on after the backup: the rehearsal must show the backup's content.
    (app.root / "orders.json").write_text('{"orders": [1, 2, 3, 4]}\n')
    before = production(client, db, app)
    marker = tmp_path / "post-restore"
    seen: dict[str, Any] = {}

    def inspect_while_running(event: Event) -> None:
        if "HEALTHCHECK passed" not in event.message or seen:
            return
        copies = client.containers.list(filters={"label": DRILL_LABEL})
        seen["copies"] = [c.attrs for c in copies]
        seen["networks"] = [n.attrs for n in client.networks.list(filters={"label": DRILL_LABEL})]
        seen["orders"] = [c.exec_run(["cat", "/data/orders.json"]).output for c in copies]

    record = drill_system(
        repo,
        client=docker.DockerClient(base_url=engine.base_url),
        server=db.with_db("postgres"),
        live_database=db.dbname,
        options=SystemDrillOptions(
            project=app.project,
            post_restore_cmds=(f'echo "$PGDATABASE" > {marker}',),
            health_timeout=60,
        ),
        sink=inspect_while_running,
    )

    assert record.outcome == "ok" and record.scope == "full-system" and record.set_id == set_id
    # The copy ran on the restored data, with no published port and only the drill's network.
    [copy] = seen["copies"]
    [network] = seen["networks"]
    assert copy["Name"] == f"/safehold-drill-{record.id}-{app.project}-web"
    assert seen["orders"] == [b'{"orders": [1, 2, 3]}\n']
    assert not copy["HostConfig"]["PortBindings"] and not copy["NetworkSettings"]["Ports"]
    assert not copy["HostConfig"]["PublishAllPorts"]
    assert copy["HostConfig"]["NetworkMode"] == network["Name"]
    assert set(copy["NetworkSettings"]["Networks"]) == {network["Name"]}
    assert network["Internal"] is True
    assert network["Options"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
    assert "web" in copy["NetworkSettings"]["Networks"][network["Name"]]["Aliases"]
    assert [m["Name"] for m in copy["Mounts"]] == [f"safehold-drill-{record.id}-{app.volume}"]
    assert PROJECT_LABEL not in copy["Config"]["Labels"]
    assert copy["State"]["Health"]["Status"] == "healthy"
    # The post-restore command ran against the scratch database, not the live one.
    scratch = f"{db.dbname}_drill_{record.id}"
    assert marker.read_text().strip() == scratch
    # Every step timed; the recovery time is their sum up to healthy, against the 2 h RTO.
    kinds = [s["step"] for s in record.steps]
    assert kinds == ["database", "volume", "post", "start", "healthy", "teardown"]
    assert all(s["outcome"] == "ok" and s["seconds"] >= 0 for s in record.steps)
    timed = sum(s["seconds"] for s in record.steps if s["step"] != "teardown")
    assert record.recovery_s == pytest.approx(timed) and record.objective_s == 7200
    db_member = next(m for m in record.members if m["kind"] == "database")
    assert db_member["scratch"] == scratch and db_member["rows"] > 0
    # Recorded where status and report read drills; nothing left; production as it was.
    assert [d.id for d in read_drills(repo)] == [record.id]
    assert leftovers(client, db) == [] and journal.entries(repo) == []
    assert production(client, db, app) == before
    assert status_of(app.url) == 200
    # status judges the rehearsal against the full-system RTO, and its age, on a set clock.
    goals = Objectives(rpo_s=24 * 3600, rto_full_s=7200)
    soon = read_status(repo, now=record.finished_at, objectives=goals, database=db.dbname)
    assert soon.rehearsal is not None and soon.rehearsal.level == "ok"
    assert soon.to_json()["full_system"]["last_rehearsal"]["recovery_s"] > 0
    tight = Objectives(rpo_s=10**6, rto_full_s=record.recovery_s / 2)
    over = read_status(repo, now=record.finished_at, objectives=tight, database=db.dbname)
    assert over.level == "warning" and over.rehearsal is not None
    assert "over the RTO" in over.rehearsal.reasons[0]
    later = record.started_at + timedelta(days=100)
    old = read_status(repo, now=later, objectives=Objectives(rpo_s=10**8), database=db.dbname)
    assert old.rehearsal is not None and old.rehearsal.reasons == [
        "the last full-system rehearsal is 100 days old"
    ]


def test_cli_drill_of_an_unhealthy_set_fails_and_tears_everything_down(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    make_app: Callable[..., App],
) -> None:
    app = make_app("grep -q ok /data/www/health.txt")
    # The set is taken while the health file says "down"; production is fixed afterwards.
    (app.root / "www" / "health.txt").write_text("down\n")
    back_up(run_cli, engine, app)
    (app.root / "www" / "health.txt").write_text("ok\n")
    before = production(client, db, app)

    failed = run_cli(
        "drill", "--full-system", "--project", app.project, "--health-timeout", "60",
        env={"DOCKER_HOST": engine.base_url},
    )  # fmt: skip

    assert failed.returncode == RestoreError.exit_code, failed.stderr
    assert "full-system drill failed" in failed.stderr and "unhealthy" in failed.stderr
    [record] = read_drills(repo)
    assert record.outcome == "failed" and record.scope == "full-system"
    assert [s["outcome"] for s in record.steps] == ["ok", "ok", "ok", "failed", "ok"]
    assert leftovers(client, db) == [] and journal.entries(repo) == []
    assert production(client, db, app) == before
    shown = run_cli("status", "--json")
    assert shown.returncode == 2, shown.stderr  # critical: the whole system did not come back
    rehearsal = json.loads(shown.stdout)["full_system"]
    assert rehearsal["level"] == "critical" and "rehearsal failed" in rehearsal["reasons"][0]


def start_drill(db: PgTarget, repo: LocalStorage, engine: SandboxDockerd, app: App) -> Any:
    env = seed_env(db, repo.root) | {"DOCKER_HOST": engine.base_url}
    return subprocess.Popen(
        [sys.executable, "-m", "safehold", "drill", "--full-system", "--project", app.project],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_copy(client: docker.DockerClient, proc: Any) -> None:
    deadline = time.monotonic() + 120
    while not client.containers.list(filters={"label": DRILL_LABEL}):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_drill_interrupted_mid_rehearsal_leaves_nothing_after_the_next_command(
    run_cli: CliRunner,
    db: PgTarget,
    repo: LocalStorage,
    engine: SandboxDockerd,
    client: docker.DockerClient,
    make_app: Callable[..., App],
    signum: signal.Signals,
) -> None:
    # Production is healthy; in the copy (SAFEHOLD_DRILL set) the check hangs, so the copy
    # stays "starting" and the drill is waiting for health when the signal comes.
    app = make_app('test -z "$SAFEHOLD_DRILL" || sleep 600', check_timeout_s=300)
    back_up(run_cli, engine, app)
    before = production(client, db, app)
    proc = start_drill(db, repo, engine, app)
    wait_for_copy(client, proc)
    assert any(d.startswith(f"{db.dbname}_drill_") for d in databases(db))

    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)

    if signum == signal.SIGTERM:
        assert proc.returncode == 143, stderr
        assert leftovers(client, db) == [] and journal.entries(repo) == []
    else:
        assert proc.returncode == -signal.SIGKILL
        left = leftovers(client, db)
        assert any(x.startswith("container ") for x in left)
        assert any(x.startswith("database ") for x in left)
        assert any(x.startswith("network ") for x in left)
        nxt = run_cli(
            "drill", "--full-system", "--set", "no-such-set", env={"DOCKER_HOST": engine.base_url}
        )
        assert "removed the rehearsal of full-system drill" in nxt.stderr, nxt.stderr
        assert leftovers(client, db) == [] and journal.entries(repo) == []
    assert production(client, db, app) == before
