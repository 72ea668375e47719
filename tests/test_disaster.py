"""Recovery from nothing: the host is gone, only the bucket, the config and the identity survive.

"Production" is a PostgreSQL cluster with application roles (an owner, a login role with a
password, settings and a connection limit, a read-only member role), grants, a row-level security
policy, default privileges and database-level settings; WAL archived into the repository and an
S3 location; a Docker engine with two volumes used by a running web container; every backup
encrypted to an X25519 key. It takes a full-system set and a base backup, then everything but the
bucket, the config and the identity file is destroyed. A second, fresh cluster and Docker engine
with an empty ``BACKUP_DIR`` then run ``restore --all --from offsite`` (roles, database, volumes;
the container starts and its health check answers) and ``restore --pitr --from offsite --to-time
T``. Content is compared, not exit codes: rows and hashes, role attributes, memberships, password
hashes, ACLs, policies, file trees byte for byte. The measured time of each step is printed.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest
from docker.models.containers import Container

from safehold.crypto import generate_keypair
from safehold.operations.pitr import restore as pitr_restore
from safehold.sandbox import SandboxCluster, load_sample
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sandbox.images import ensure_busybox_image
from safehold.sandbox.s3server import SandboxS3
from safehold.sources.postgres import PgTarget, connect

from .conftest import fingerprint, seed_env
from .pitr_support import (
    RUN_AS,
    archiving_cluster,
    give_to_server,
    new_target_dir,
    server,
    server_command,
    shared_folder,
)
from .test_system_restore import PROJECT_LABEL, free_port, status_of
from .test_tree import make_tree, snapshot

DB_NAME = "container_app"
VOLUMES = ("app-data", "user-data")
PASSWORD = "s3cret-app-rw"

APP_SQL = f"""
CREATE ROLE app_owner NOLOGIN;
CREATE ROLE app_ro LOGIN CONNECTION LIMIT 3 VALID UNTIL '2099-01-01 00:00:00+00';
CREATE ROLE app_rw LOGIN CREATEDB CONNECTION LIMIT 7 PASSWORD '{PASSWORD}' IN ROLE app_ro;
ALTER ROLE app_rw SET statement_timeout = '5s';
ALTER DATABASE {DB_NAME} OWNER TO app_owner;
ALTER DATABASE {DB_NAME} SET work_mem = '8MB';
COMMENT ON DATABASE {DB_NAME} IS 'the application''s state';
GRANT CONNECT ON DATABASE {DB_NAME} TO app_ro;
ALTER ROLE app_ro IN DATABASE {DB_NAME} SET search_path = app, public;
"""

# Run in the application database: ownership, grants, a policy and default privileges.
APP_DB_SQL = """
DO $$
DECLARE t record;
BEGIN
  FOR t IN SELECT schemaname, tablename FROM pg_tables WHERE schemaname = 'app' LOOP
    EXECUTE format('ALTER TABLE %I.%I OWNER TO app_owner', t.schemaname, t.tablename);
  END LOOP;
END $$;
ALTER SCHEMA app OWNER TO app_owner;
GRANT USAGE ON SCHEMA app TO app_ro;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA app TO app_rw;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO app_ro;
CREATE TABLE app.notes (owner name NOT NULL DEFAULT current_user, body text);
ALTER TABLE app.notes OWNER TO app_owner;
ALTER TABLE app.notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON app.notes TO app_ro USING (owner = current_user);
GRANT SELECT ON app.notes TO app_ro;
INSERT INTO app.notes VALUES ('app_ro', 'mine'), ('someone', 'not mine');
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA app GRANT SELECT ON TABLES TO app_ro;
CREATE TABLE items (batch int, n int);
ALTER TABLE items OWNER TO app_owner;
"""

INSERT_BATCH = "INSERT INTO items SELECT {}, g FROM generate_series(1, 1000) g"
ROLES_QUERY = """
SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
       r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil, a.rolpassword,
       (SELECT array_agg(s.setconfig::text ORDER BY s.setconfig::text)
          FROM pg_db_role_setting s WHERE s.setrole = r.oid)
FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid
WHERE r.rolname LIKE 'app\\_%' ORDER BY 1
"""
MEMBERS_QUERY = """
SELECT g.rolname, m.rolname, am.admin_option FROM pg_auth_members am
JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
WHERE g.rolname LIKE 'app\\_%' OR m.rolname LIKE 'app\\_%' ORDER BY 1, 2
"""
DATABASE_QUERY = """
SELECT pg_get_userbyid(d.datdba), ARRAY(SELECT unnest(d.datacl)::text ORDER BY 1),
       shobj_description(d.oid, 'pg_database'),
       (SELECT array_agg(s.setconfig::text) FROM pg_db_role_setting s
         WHERE s.setdatabase = d.oid AND s.setrole = 0)
FROM pg_database d WHERE d.datname = current_database()
"""
OBJECTS_QUERY = """
SELECT c.relname, pg_get_userbyid(c.relowner), ARRAY(SELECT unnest(c.relacl)::text ORDER BY 1),
       c.relrowsecurity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname IN ('app', 'public') AND c.relkind IN ('r', 'S', 'v') ORDER BY 1
"""
POLICIES_QUERY = "SELECT polname, polroles::regrole[]::text FROM pg_policy ORDER BY 1"
DEFAULT_ACL_QUERY = """
SELECT pg_get_userbyid(defaclrole), defaclnamespace::regnamespace::text,
       ARRAY(SELECT unnest(defaclacl)::text ORDER BY 1)
FROM pg_default_acl ORDER BY 1, 2
"""


def query(target: PgTarget, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
    with connect(target, dbname, autocommit=True) as conn:
        cursor = conn.execute(statement)
        return list(cursor.fetchall()) if cursor.description else []


def cluster_facts(target: PgTarget) -> dict[str, list[tuple[Any, ...]]]:
    """Everything about the application's roles and database that a restore must carry."""
    return {
        "roles": query(target, ROLES_QUERY),
        "memberships": query(target, MEMBERS_QUERY),
        "database": query(target, DATABASE_QUERY, DB_NAME),
        "objects": query(target, OBJECTS_QUERY, DB_NAME),
        "policies": query(target, POLICIES_QUERY, DB_NAME),
        "default_acl": query(target, DEFAULT_ACL_QUERY, DB_NAME),
    }


@dataclass
class Keys:
    folder: Path
    identity: Path
    config: Path


def write_config(s3: SandboxS3, bucket: str) -> Keys:
    """What survives the disaster: the config, the identity and the bucket's credentials."""
    folder = shared_folder("safehold-dr-keys-")
    identity = folder / "identity.txt"
    public = generate_keypair(identity)
    credentials = folder / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n"
    )
    config = folder / "safehold.toml"
    config.write_text(
        f'[encryption]\nrecipients = ["{public}"]\n\n'
        f'[volumes]\ninclude = ["{VOLUMES[0]}", "{VOLUMES[1]}"]\n\n'
        f'[locations.offsite]\nendpoint = "{s3.endpoint}"\nbucket = "{bucket}"\n'
        f'prefix = "app"\nregion = "us-east-1"\ncredentials_file = "{credentials}"\n'
    )
    for path in (identity, credentials, config):
        give_to_server(path)
    return Keys(folder, identity, config)


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=tempfile.gettempdir(),
    )


@contextmanager
def engine_with_image() -> Iterator[tuple[SandboxDockerd, docker.DockerClient]]:
    engine = SandboxDockerd()
    engine.start()
    try:
        client = engine.client()
        ensure_busybox_image(client)
        yield engine, client
        client.close()
    finally:
        engine.remove()


def start_app(client: docker.DockerClient, project: str, port: int) -> Container:
    """The application as its compose file would run it: both volumes, a health page."""
    for name in VOLUMES:
        client.volumes.create(name=name, labels={PROJECT_LABEL: project})
    return client.containers.run(
        "safehold-busybox:latest",
        [
            "sh",
            "-c",
            "mkdir -p /data/www; trap 'kill $!; exit 0' TERM; "
            f"httpd -f -p 127.0.0.1:{port} -h /data/www & wait",
        ],
        name=f"{project}-web",
        labels={PROJECT_LABEL: project},
        volumes={VOLUMES[0]: {"bind": "/data"}, VOLUMES[1]: {"bind": "/users"}},
        network_mode="host",
        detach=True,
    )


def wait_healthy(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while status_of(url) != 200:
        assert time.monotonic() < deadline, f"{url} never answered 200"
        time.sleep(0.2)


def volume_root(client: docker.DockerClient, name: str) -> Path:
    return Path(client.volumes.get(name).attrs["Mountpoint"])


class Clock:
    """Recovery time of each step, printed at the end (the closing note quotes it)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        yield
        self.steps.append((name, time.monotonic() - began))

    def report(self) -> str:
        width = max(len(name) for name, _ in self.steps)
        return "\n".join(f"  {name:<{width}}  {seconds:7.2f} s" for name, seconds in self.steps)


@pytest.mark.slow
def test_a_new_host_recovers_everything_from_the_bucket_and_the_key(s3: SandboxS3) -> None:
    clock = Clock()
    bucket = s3.bucket()
    keys = write_config(s3, bucket)
    project = f"shop-{secrets.token_hex(3)}"
    env_base = {
        "SAFEHOLD_CONFIG": str(keys.config),
        "SAFEHOLD_ENCRYPTION_IDENTITY_FILE": str(keys.identity),
    }

    # ---- production: roles, data, volumes, archiving, a full-system set and a base backup ----
    with archiving_cluster(keys.config) as prod, engine_with_image() as (engine, client):
        load_sample(prod.target, DB_NAME, users=60)
        query(prod.target, APP_SQL)
        query(prod.target, APP_DB_SQL, DB_NAME)
        app_port = free_port()
        web = start_app(client, project, app_port)
        for name in VOLUMES:
            make_tree(volume_root(client, name) / "tree")
        www = volume_root(client, VOLUMES[0]) / "www"
        www.mkdir(exist_ok=True)
        (www / "health.txt").write_text("ok\n")
        wait_healthy(f"http://127.0.0.1:{app_port}/health.txt")
        env = seed_env(prod.target.with_db(DB_NAME), prod.repo.root) | env_base
        env["DOCKER_HOST"] = engine.base_url
        made = cli(env, "backup", "--all", "--json")
        assert made.returncode == 0, made.stderr
        # What the restores must bring back, read from production before it is destroyed.
        facts = cluster_facts(prod.target)
        tables = fingerprint(prod.target, DB_NAME)
        trees = {name: snapshot(volume_root(client, name) / "tree") for name in VOLUMES}
        base = cli(env, "backup", "--physical", "--json")
        assert base.returncode == 0, base.stderr
        query(prod.target, INSERT_BATCH.format(1), DB_NAME)
        time.sleep(1.1)
        moment = datetime.now(UTC)
        time.sleep(1.1)
        query(prod.target, INSERT_BATCH.format(2), DB_NAME)
        query(prod.target, "SELECT pg_switch_wal()")
        prod.switch_and_wait()
        web.remove(force=True)
        # ---- the disaster: cluster, engine and BACKUP_DIR are destroyed with the host ----
    assert not prod.repo.root.exists()
    assert facts["roles"] and facts["memberships"] and facts["policies"]

    # ---- a new host: a fresh cluster and engine, an empty BACKUP_DIR, the config and key ----
    backup_dir = Path(tempfile.mkdtemp(prefix="safehold-dr-new-")) / "backups"
    with SandboxCluster() as fresh, engine_with_image() as (engine2, client2):
        assert not query(fresh.target, "SELECT 1 FROM pg_roles WHERE rolname LIKE 'app\\_%'")
        env = seed_env(fresh.target.with_db(DB_NAME), backup_dir) | env_base
        env["DOCKER_HOST"] = engine2.base_url
        with clock.step("list --from offsite"):
            listed = cli(env, "list", "--from", "offsite", "--json")
        assert listed.returncode == 0, listed.stderr
        # The operator installs the application again (compose up: empty volumes, no data).
        port2 = free_port()
        web2 = start_app(client2, project, port2)
        url = f"http://127.0.0.1:{port2}/health.txt"
        assert status_of(url) != 200
        with clock.step("restore --all --from offsite"):
            restored = cli(
                env,
                "restore",
                "--all",
                "--from",
                "offsite",
                "--project",
                project,
                "--health-url",
                url,
                "--health-timeout",
                "60",
                "--json",
            )
        assert restored.returncode == 0, restored.stdout + restored.stderr
        report = json.loads(restored.stdout)
        for item in report["timings_s"]:
            clock.steps.append((f"  {item['step']}. {item['title']}"[:80], item["seconds"]))
        with clock.step("compare content"):
            assert cluster_facts(fresh.target) == facts
            assert fingerprint(fresh.target, DB_NAME) == tables
            for name in VOLUMES:
                assert snapshot(volume_root(client2, name) / "tree") == trees[name]
        web2.reload()
        assert web2.status == "running" and status_of(url) == 200
        # The fetched backups are now the new host's own, verified and recorded.
        local = json.loads(cli(env, "list", "--json").stdout)
        assert local and all(r["status"] == "ok" for r in local if r["kind"] != "base")

        # ---- a second run: point-in-time recovery of the cluster to the moment ----
        target_dir = new_target_dir()
        argv = ["restore", "--pitr", "--from", "offsite", "--to-time", moment.isoformat()]
        argv += ["--target-dir", str(target_dir), "--command", server_command(), "--keep-running"]
        argv += ["--json"] + (["--server-user", RUN_AS] if RUN_AS else [])
        with clock.step("restore --pitr --from offsite --to-time T"):
            recovered = cli(env, *argv)
        assert recovered.returncode == 0, recovered.stdout + recovered.stderr
        result = json.loads(recovered.stdout)
        try:
            with clock.step("compare rows, roles and grants at T"):
                assert _items(target_dir, int(result["port"])) == [(1, 1000)]
                # The side copy is the cluster itself: roles, policies and grants came along.
                side = PgTarget(str(target_dir), int(result["port"]), "postgres", "postgres")
                assert cluster_facts(side) == facts
        finally:
            pitr_restore.stop(server(fresh.bin_dir, int(result["port"])), target_dir)
            shutil.rmtree(target_dir.parent, ignore_errors=True)
    shutil.rmtree(backup_dir.parent, ignore_errors=True)
    shutil.rmtree(keys.folder, ignore_errors=True)
    print("\nrecovery from nothing, measured:\n" + clock.report())


def _items(data_dir: Path, port: int) -> list[tuple[object, ...]]:
    with psycopg.connect(host=str(data_dir), port=port, user="postgres", dbname=DB_NAME) as conn:
        return list(
            conn.execute("SELECT batch, count(*) FROM items GROUP BY 1 ORDER BY 1").fetchall()
        )
