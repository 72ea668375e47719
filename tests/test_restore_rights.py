"""Before anything is touched: a role that may not create or rename databases is told so at step
1 (dry run, restore and doctor), with the missing privilege named and the statement that fixes it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from safehold.operations.database.backup import backup_database
from safehold.sandbox import SandboxCluster
from safehold.sources import pg_admin
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import CliRunner, databases, fingerprint
from .test_backup_restore import mutate


@pytest.fixture
def role(pg: SandboxCluster) -> Iterator[tuple[str, str]]:
    """A login role with no rights beyond LOGIN (dropped afterwards, its objects reassigned)."""
    name, password = f"restorer_{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    with connect(pg.target, "postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    try:
        yield name, password
    finally:
        with connect(pg.target, "postgres", autocommit=True) as conn:
            role_id = sql.Identifier(name)
            # Its databases (restored as it) are test databases: conftest would drop them too.
            owned = conn.execute(
                "SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = %s", (name,)
            ).fetchall()
            for (dbname,) in owned:
                conn.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname))
                )
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(role_id))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(role_id))
            conn.execute(sql.SQL("DROP ROLE {}").format(role_id))


def as_role(role: tuple[str, str]) -> dict[str, str]:
    return {"DB_USER": role[0], "PGPASSWORD": role[1]}


def admin_sql(pg: SandboxCluster, statement: sql.Composed) -> None:
    with connect(pg.target, "postgres", autocommit=True) as conn:
        conn.execute(statement)


def leftovers(repo: LocalStorage) -> list[Path]:
    scratch = repo.root / ".safehold" / "tmp"
    return sorted(scratch.iterdir()) if scratch.exists() else []


def test_a_role_without_createdb_is_refused_at_step_one(
    db: PgTarget,
    repo: LocalStorage,
    pg: SandboxCluster,
    run_cli: CliRunner,
    role: tuple[str, str],
) -> None:
    backup_database(db, repo)
    # The role owns the database (so renaming it is allowed) but may not create one.
    admin_sql(
        pg,
        sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(db.dbname), sql.Identifier(role[0])
        ),
    )
    expected = fingerprint(db)
    mutate(db)
    before, names = fingerprint(db), databases(pg.target)

    plan = run_cli("restore", "--database", "latest", "--dry-run", env=as_role(role))
    done = run_cli("restore", "--database", "latest", env=as_role(role))

    assert plan.returncode == 7, plan.stderr  # the plan is printed, and exits as the run would
    assert "a restore would be refused" in plan.stderr
    assert "REFUSED" in plan.stdout
    assert "lacks the CREATEDB privilege" in plan.stdout
    assert f"ALTER ROLE {role[0]} CREATEDB" in plan.stdout
    assert done.returncode == 7, done.stderr
    assert "lacks the CREATEDB privilege" in done.stderr
    assert f"hint: as a superuser: ALTER ROLE {role[0]} CREATEDB" in done.stderr
    assert "unexpected" not in done.stderr
    assert fingerprint(db) == before
    assert databases(pg.target) == names
    assert leftovers(repo) == []

    # With the fix the hint names, the restore goes through (--no-owner: the dump's objects
    # belong to postgres, which this role may not hand them to).
    admin_sql(pg, sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(role[0])))
    again = run_cli("restore", "--database", "latest", "--no-owner", env=as_role(role))
    assert again.returncode == 0, again.stderr
    assert fingerprint(db) == expected


def test_a_role_that_does_not_own_the_database_is_refused(
    db: PgTarget,
    repo: LocalStorage,
    pg: SandboxCluster,
    run_cli: CliRunner,
    role: tuple[str, str],
) -> None:
    backup_database(db, repo)
    admin_sql(pg, sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(role[0])))
    before, names = fingerprint(db), databases(pg.target)

    done = run_cli("restore", "--database", "latest", env=as_role(role))

    assert done.returncode == 7, done.stderr
    assert f"does not own database '{db.dbname}' (its owner is 'postgres')" in done.stderr
    assert f"ALTER DATABASE {db.dbname} OWNER TO {role[0]}" in done.stderr
    assert fingerprint(db) == before
    assert databases(pg.target) == names
    assert leftovers(repo) == []

    # Side by side into a new database needs CREATEDB only.
    side = run_cli(
        "restore",
        "--database",
        "latest",
        "--no-owner",
        "--target-db",
        f"{db.dbname}_side",
        env=as_role(role),
    )
    assert side.returncode == 0, side.stderr
    assert fingerprint(db, f"{db.dbname}_side") == before


def doctor_rights(run_cli: CliRunner, env: dict[str, str] | None = None) -> dict[str, str]:
    done = run_cli("doctor", "--json", env=env)
    checks = json.loads(done.stdout)
    (found,) = [c for c in checks if c["check"] == "restore rights"]
    return dict(found)


def test_doctor_shows_the_rights_check(
    db: PgTarget, pg: SandboxCluster, run_cli: CliRunner, role: tuple[str, str]
) -> None:
    superuser = doctor_rights(run_cli)
    assert superuser["result"] == "OK"
    assert "is a superuser" in superuser["detail"]

    lacking = doctor_rights(run_cli, as_role(role))
    assert lacking["result"] == "FAIL"
    assert "CREATEDB" in lacking["detail"]
    assert (
        lacking["fix"]
        == f"as a superuser: ALTER ROLE {role[0]} CREATEDB; or restore as a superuser"
    )

    admin_sql(pg, sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(role[0])))
    admin_sql(
        pg,
        sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(db.dbname), sql.Identifier(role[0])
        ),
    )
    allowed = doctor_rights(run_cli, as_role(role))
    assert allowed["result"] == "OK", allowed
    assert "has CREATEDB" in allowed["detail"]


def test_role_rights_reads_the_catalog(pg: SandboxCluster, role: tuple[str, str]) -> None:
    with connect(pg.target, "postgres", autocommit=True) as conn:
        mine = pg_admin.role_rights(conn)
    assert (mine.role, mine.superuser, mine.createdb, mine.createrole) == (
        "postgres",
        True,
        True,
        True,
    )
    target = PgTarget(pg.target.host, pg.target.port, "postgres", role[0], password=role[1])
    with connect(target, "postgres", autocommit=True) as conn:
        theirs = pg_admin.role_rights(conn)
    assert (theirs.role, theirs.superuser, theirs.createdb, theirs.createrole) == (
        role[0],
        False,
        False,
        False,
    )
