"""Globals travel with every database backup: roles, memberships, role and database settings,
the database's comment and grants. Backed up on the session cluster, restored onto a second,
fresh cluster that has none of the roles; compared by content (catalog rows), not exit codes."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from safehold import catalog
from safehold.operations.database.backup import backup_database
from safehold.sandbox import SandboxCluster
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import databases, drop_databases, fingerprint, seed_env

RW_PASSWORD = "rw-" + secrets.token_hex(8)


@dataclass(frozen=True)
class Source:
    target: PgTarget  # the database, on the session cluster
    owner: str
    rw: str
    ro: str

    @property
    def roles(self) -> list[str]:
        return [self.owner, self.ro, self.rw]


def run(target: PgTarget, repo: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    full = seed_env(target, repo) | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=repo.parent,
    )


def execute(target: PgTarget, *statements: str, dbname: str | None = None) -> None:
    with connect(target, dbname or target.dbname, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


@pytest.fixture(scope="module")
def source(pg: SandboxCluster) -> Iterator[Source]:
    tok = secrets.token_hex(3)
    owner, rw, ro = f"gl_owner_{tok}", f"gl_rw_{tok}", f"gl_ro_{tok}"
    name = f"gl_app_{tok}"
    server = pg.target
    execute(
        server,
        f"CREATE ROLE {owner} NOLOGIN",
        f"CREATE ROLE {rw} LOGIN CONNECTION LIMIT 5 PASSWORD '{RW_PASSWORD}'",
        f"CREATE ROLE {ro} LOGIN NOINHERIT VALID UNTIL '2040-01-02 03:04:05+00'",
        f"GRANT {rw} TO {ro} WITH ADMIN OPTION",
        f"ALTER ROLE {rw} SET statement_timeout = '5s'",
        f"ALTER ROLE {ro} SET search_path = \"$user\", public, 'odd''s \"x\"'",
        f"COMMENT ON ROLE {rw} IS 'the application''s writer'",
        f"CREATE DATABASE {name} OWNER {owner}",
        f"ALTER DATABASE {name} SET work_mem = '12MB'",
        f"ALTER ROLE {ro} IN DATABASE {name} SET work_mem = '3MB'",
        f"COMMENT ON DATABASE {name} IS 'the app''s data'",
        f"REVOKE CONNECT ON DATABASE {name} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {name} TO {rw}",
    )
    execute(
        server,
        f"CREATE SCHEMA app AUTHORIZATION {owner}",
        f"SET ROLE {owner}",
        "CREATE TABLE app.items (id serial PRIMARY KEY, visibility text, body text)",
        "INSERT INTO app.items (visibility, body) SELECT CASE WHEN g % 3 = 0 THEN 'public' "
        "ELSE 'private' END, md5(g::text) FROM generate_series(1, 300) g",
        "ALTER TABLE app.items ENABLE ROW LEVEL SECURITY",
        f"CREATE POLICY public_rows ON app.items FOR SELECT TO {ro} USING (visibility = 'public')",
        f"GRANT USAGE ON SCHEMA app TO {rw}, {ro}",
        f"GRANT SELECT, INSERT, UPDATE ON app.items TO {rw}",
        f"GRANT SELECT ON app.items TO {ro}",
        f"GRANT USAGE ON SEQUENCE app.items_id_seq TO {rw}",
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON TABLES TO {ro}",
        "CREATE FUNCTION app.answer() RETURNS int LANGUAGE sql AS 'SELECT 42'",
        dbname=name,
    )
    try:
        yield Source(server.with_db(name), owner, rw, ro)
    finally:
        drop_databases(server, name)
        execute(server, *[f"DROP ROLE IF EXISTS {r}" for r in (ro, rw, owner)])


@pytest.fixture(scope="module")
def fresh() -> Iterator[SandboxCluster]:
    cluster = SandboxCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="module")
def backed_up(source: Source, tmp_path_factory: pytest.TempPathFactory) -> LocalStorage:
    repo = LocalStorage(tmp_path_factory.mktemp("globals") / "backups")
    backup_database(source.target, repo)
    return repo


@pytest.fixture
def clean(fresh: SandboxCluster) -> SandboxCluster:
    """The fresh cluster as initdb left it: no extra databases, no roles but the superuser."""
    with connect(fresh.target, "postgres", autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname NOT IN "
            "('postgres', 'template0', 'template1')"
        ).fetchall()]  # fmt: skip
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        roles = [r[0] for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE oid <> 10 AND rolname !~ '^pg_'"
        ).fetchall()]  # fmt: skip
        for role in roles:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    return fresh


def dump_of(repo: LocalStorage) -> tuple[str, str]:
    (record,) = [r for r in catalog.scan(repo) if r.kind == "database"]
    assert record.manifest is not None
    return record.name, str(record.manifest.facts["globals"])


def roles_state(server: PgTarget, names: list[str]) -> dict[str, Any]:
    """Attributes, password hashes, settings (global and in the database) and memberships."""
    with connect(server, "postgres", autocommit=True) as conn:
        roles = conn.execute(
            """SELECT a.rolname, a.rolsuper, a.rolinherit, a.rolcreaterole, a.rolcreatedb,
                      a.rolcanlogin, a.rolreplication, a.rolbypassrls, a.rolconnlimit,
                      a.rolvaliduntil, a.rolpassword, shobj_description(a.oid, 'pg_authid'),
                      (SELECT setconfig FROM pg_db_role_setting
                       WHERE setrole = a.oid AND setdatabase = 0)
               FROM pg_authid a WHERE rolname = ANY(%s) ORDER BY 1""",
            (names,),
        ).fetchall()
        members = conn.execute(
            """SELECT g.rolname, m.rolname, am.admin_option FROM pg_auth_members am
               JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member
               WHERE m.rolname = ANY(%s) ORDER BY 1, 2""",
            (names,),
        ).fetchall()
    return {"roles": roles, "members": members}


def database_state(server: PgTarget, dbname: str) -> dict[str, Any]:
    """Owner, comment, settings, grants of the database; owners, ACLs, default ACLs and
    policies inside it; rows and content hashes."""
    with connect(server, "postgres", autocommit=True) as conn:
        row = conn.execute(
            """SELECT pg_get_userbyid(d.datdba), shobj_description(d.oid, 'pg_database'),
                      array(SELECT unnest(d.datacl)::text ORDER BY 1),
                      (SELECT setconfig FROM pg_db_role_setting
                       WHERE setdatabase = d.oid AND setrole = 0),
                      array(SELECT r.rolname || ':' || s.setconfig::text FROM pg_db_role_setting s
                            JOIN pg_roles r ON r.oid = s.setrole
                            WHERE s.setdatabase = d.oid ORDER BY 1)
               FROM pg_database d WHERE datname = %s""",
            (dbname,),
        ).fetchone()
    with connect(server, dbname, autocommit=True) as conn:
        inside = conn.execute(
            """SELECT
                 (SELECT array_agg(c.relname || ':' || pg_get_userbyid(c.relowner) || ':' ||
                         coalesce(c.relacl::text, '') ORDER BY c.relname)
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'app'),
                 (SELECT nspowner::regrole::text || ':' || nspacl::text FROM pg_namespace
                  WHERE nspname = 'app'),
                 (SELECT array_agg(defaclrole::regrole::text || ':' || defaclobjtype::text || ':' ||
                         defaclacl::text) FROM pg_default_acl),
                 (SELECT array_agg(policyname || ':' || roles::text) FROM pg_policies),
                 (SELECT proowner::regrole::text FROM pg_proc WHERE proname = 'answer')"""
        ).fetchone()
    return {"database": row, "inside": inside, "rows": fingerprint(server, dbname)}


def test_a_fresh_server_gets_every_role_setting_and_grant(
    source: Source, backed_up: LocalStorage, clean: SandboxCluster
) -> None:
    dump, globals_name = dump_of(backed_up)
    manifest = catalog.read_manifest(backed_up, globals_name)
    assert manifest is not None and manifest.kind == "globals"
    assert manifest.target == source.target.dbname
    assert sorted(manifest.facts["roles"]) == sorted(source.roles)
    assert manifest.facts["password_hashes"] == "captured"
    # The manifest is stored in the clear: no hash in it; the script has them.
    manifest_text = backed_up.read_bytes(f".safehold/manifests/{globals_name}.json").decode()
    assert "SCRAM-SHA-256" not in manifest_text
    assert "SCRAM-SHA-256" in backed_up.path(globals_name).read_text()
    assert (backed_up.path(globals_name).stat().st_mode & 0o777) == 0o600
    expected_roles = roles_state(source.target, source.roles)
    expected_db = database_state(source.target, source.target.dbname)
    target = clean.target.with_db(source.target.dbname)

    done = run(target, backed_up.root, "restore", "--database", dump, "--json")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert sorted(result["roles_created"]) == sorted(source.roles)
    assert roles_state(target, source.roles) == expected_roles
    assert database_state(target, source.target.dbname) == expected_db
    # The restored role logs in with its old password and gets its settings.
    login = PgTarget(target.host, target.port, target.dbname, source.rw, RW_PASSWORD)
    with connect(login, autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)
        assert conn.execute("SHOW work_mem").fetchone() == ("12MB",)
        assert conn.execute("SELECT count(*) FROM app.items").fetchone() == (0,)  # no policy
    with connect(target, autocommit=True) as conn:  # the policy works for the role it names
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(source.ro)))
        assert conn.execute("SELECT count(*) FROM app.items").fetchone() == (100,)


def test_dry_run_lists_the_roles_and_changes_nothing(
    source: Source, backed_up: LocalStorage, clean: SandboxCluster
) -> None:
    dump, globals_name = dump_of(backed_up)
    target = clean.target.with_db(source.target.dbname)

    planned = run(target, backed_up.root, "restore", "--database", dump, "--dry-run")
    doctor = run(target, backed_up.root, "doctor", "--json")

    assert planned.returncode == 0, planned.stderr
    step = next(ln for ln in planned.stdout.splitlines() if "missing role(s)" in ln)
    assert all(name in step for name in source.roles)
    assert f"verify {globals_name}" in planned.stdout
    (roles,) = [c for c in json.loads(doctor.stdout) if c["check"] == "roles"]
    assert roles["result"] == "WARN" and roles["fix"] == "a restore creates them", roles
    assert all(name in roles["detail"] for name in source.roles)
    assert roles_state(target, source.roles) == {"roles": [], "members": []}


def test_an_existing_role_is_not_altered_and_the_difference_is_reported(
    source: Source, backed_up: LocalStorage, clean: SandboxCluster
) -> None:
    dump, _ = dump_of(backed_up)
    target = clean.target.with_db(source.target.dbname)
    execute(target.with_db("postgres"), f"CREATE ROLE {source.rw} NOLOGIN CONNECTION LIMIT 1")
    before = roles_state(target, [source.rw])

    done = run(target, backed_up.root, "restore", "--database", dump, "--json")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert sorted(result["roles_created"]) == sorted([source.owner, source.ro])
    assert roles_state(target, [source.rw]) == before  # not altered
    (warning,) = [w for w in result["warnings"] if source.rw in w and "attributes" in w]
    assert "login False (backup: True)" in warning and "connection_limit 1 (backup: 5)" in warning
    # The membership of a created role in the existing one is granted (the new role's).
    assert roles_state(target, [source.ro])["members"] == [(source.rw, source.ro, True)]


def test_roles_only_creates_the_roles_and_no_database(
    source: Source, backed_up: LocalStorage, clean: SandboxCluster
) -> None:
    dump, _ = dump_of(backed_up)
    target = clean.target.with_db(source.target.dbname)
    before = databases(target)

    done = run(target, backed_up.root, "restore", "--database", dump, "--roles", "only")

    assert done.returncode == 0, done.stderr
    assert "roles created from" in done.stdout
    assert databases(target) == before
    assert roles_state(target, source.roles) == roles_state(source.target, source.roles)


def test_roles_skip_fails_before_anything_naming_every_missing_role(
    source: Source, backed_up: LocalStorage, clean: SandboxCluster
) -> None:
    dump, _ = dump_of(backed_up)
    target = clean.target.with_db(source.target.dbname)
    before = databases(target)

    skipped = run(target, backed_up.root, "restore", "--database", dump, "--roles", "skip")
    no_owner = run(
        target, backed_up.root, "restore", "--database", dump, "--roles", "skip", "--no-owner"
    )

    assert skipped.returncode == 7, skipped.stderr  # RestoreError
    assert all(name in skipped.stderr for name in source.roles)
    assert "--roles skip creates none" in skipped.stderr and "--no-owner" in skipped.stderr
    # Even without owners and grants, the policy names a role this server lacks.
    assert no_owner.returncode == 7, no_owner.stderr
    assert "row-level security policies name" in no_owner.stderr and source.ro in no_owner.stderr
    assert databases(target) == before
    assert roles_state(target, source.roles) == {"roles": [], "members": []}


def test_a_user_without_createrole_gets_one_error_with_every_role_and_the_command(
    source: Source, backed_up: LocalStorage, clean: SandboxCluster
) -> None:
    dump, globals_name = dump_of(backed_up)
    password = secrets.token_hex(8)
    admin = clean.target.with_db("postgres")
    execute(admin, f"CREATE ROLE restorer LOGIN CREATEDB PASSWORD '{password}'")
    before = databases(admin)
    target = PgTarget(admin.host, admin.port, source.target.dbname, "restorer", password)

    planned = run(target, backed_up.root, "restore", "--database", dump, "--dry-run")
    doctor = run(target, backed_up.root, "doctor", "--json")
    done = run(target, backed_up.root, "restore", "--database", dump)

    # The dry run prints the plan and exits as the restore would; doctor finds it ahead of time.
    assert planned.returncode == 7 and "REFUSED: create roles" in planned.stdout
    assert "a restore would be refused" in planned.stderr
    (roles,) = [c for c in json.loads(doctor.stdout) if c["check"] == "roles"]
    assert roles["result"] == "FAIL", roles
    assert all(name in roles["detail"] for name in source.roles)
    assert f"-f {backed_up.path(globals_name)}" in roles["fix"]
    assert done.returncode == 7, done.stderr
    error = done.stderr
    assert "neither SUPERUSER nor CREATEROLE" in error
    assert all(name in error for name in source.roles)
    assert f"psql -v ON_ERROR_STOP=1 -h {admin.host} -p {admin.port}" in error
    assert f"-f {backed_up.path(globals_name)}" in error
    assert "--roles skip --no-owner" in error
    assert databases(admin) == before
    assert roles_state(admin, source.roles) == {"roles": [], "members": []}


def test_the_plain_script_creates_the_roles_with_psql_by_hand(
    source: Source, backed_up: LocalStorage, clean: SandboxCluster
) -> None:
    _, globals_name = dump_of(backed_up)
    admin = clean.target.with_db("postgres")
    psql = [admin.tool("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]
    argv = [*psql, "-f", str(backed_up.path(globals_name))]

    first = subprocess.run(argv, env=admin.env(), capture_output=True, text=True, check=False)
    again = subprocess.run(argv, env=admin.env(), capture_output=True, text=True, check=False)

    assert first.returncode == 0, first.stderr
    assert "3 role(s) created" in first.stderr and "does not exist yet" in first.stderr
    assert again.returncode == 0 and "0 role(s) created" in again.stderr  # idempotent
    assert roles_state(admin, source.roles) == roles_state(source.target, source.roles)


def test_an_encrypted_backup_has_encrypted_globals_that_still_restore(
    source: Source, clean: SandboxCluster, tmp_path: Path
) -> None:
    repo = tmp_path / "backups"
    env = {"SAFEHOLD_ENCRYPTION_PASSPHRASE_ENV": "BACKUP_PASS", "BACKUP_PASS": "correct horse"}
    made = run(source.target, repo, "backup", "--json", env=env)
    assert made.returncode == 0, made.stderr
    dump, globals_name = dump_of(LocalStorage(repo))
    assert dump.endswith(".sql.age") and globals_name.endswith(".sql.age")
    data = (repo / globals_name).read_bytes()
    assert data.startswith(b"age-encryption.org/v1\n")
    assert b"CREATE ROLE" not in data and source.rw.encode() not in data
    target = clean.target.with_db(source.target.dbname)

    done = run(target, repo, "restore", "--database", dump, "--json", env=env)

    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)["roles_created"]) == sorted(source.roles)
    assert roles_state(target, source.roles) == roles_state(source.target, source.roles)


def test_drill_in_a_sandbox_passes_for_a_database_with_roles_and_policies(
    source: Source, backed_up: LocalStorage
) -> None:
    dump, _ = dump_of(backed_up)

    done = run(source.target, backed_up.root, "drill", dump, "--sandbox", "--json")

    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    (member,) = record["members"]
    assert record["outcome"] == "ok" and member["rows"] == 300


def test_a_set_carries_its_globals_and_restore_all_creates_the_roles_first(
    source: Source, clean: SandboxCluster, tmp_path: Path
) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    repo = tmp_path / "backups"
    made = run(source.target, repo, "backup", "--all", "--path", str(folder), "--json")
    assert made.returncode == 0, made.stderr
    members = json.loads(made.stdout)["members"]
    dump, globals_name = dump_of(LocalStorage(repo))
    assert dump in members and globals_name in members
    target = clean.target.with_db(source.target.dbname)
    (folder / "a.txt").write_text("changed")

    plan = run(target, repo, "restore", "--all", "--dry-run", "--json")
    done = run(target, repo, "restore", "--all", "--json")

    assert plan.returncode == 0, plan.stderr
    kinds = [s["kind"] for s in json.loads(plan.stdout)["steps"]]
    assert kinds.index("roles") == kinds.index("database") - 1
    assert done.returncode == 0, done.stderr
    assert (folder / "a.txt").read_text() == "alpha"
    assert roles_state(target, source.roles) == roles_state(source.target, source.roles)
    expected = database_state(source.target, source.target.dbname)
    assert database_state(target, source.target.dbname) == expected
