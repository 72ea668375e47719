"""Several databases on one server in one run: ``[database] names`` (issue: file names carry
the database, ``latest`` per database, one set per run, restore/list/status/prune per database).

The service tests share three databases on the session's PostgreSQL (``container_app``,
``tenant_a``, ``tenant_b``, each with a different number of rows) and drive the real CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from safehold import catalog, config, naming
from safehold.errors import ConfigError, DatabaseMissing, SafeholdError
from safehold.model import BackupRecord, Manifest
from safehold.operations.database.backup import BackupOptions
from safehold.operations.database.names import select
from safehold.operations.system.backup import SetOptions, backup_set
from safehold.sandbox import SandboxCluster, load_sample
from safehold.sandbox.cluster import free_port
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import ROOT, drop_databases, execute, fingerprint

DATABASES = {"container_app": 12, "tenant_a": 23, "tenant_b": 34}  # users each: rows differ
NAMES = "container_app,tenant_*"
T0 = datetime(2024, 12, 1, 12, 0, tzinfo=UTC)


# ---- names, links and configuration: pure --------------------------------------------------


@pytest.mark.parametrize(
    "database",
    ["2024", "a_b", "tenant_20240101_000000", "latest", "with space", "ünïcode", "x.sql"],
)
def test_a_database_name_never_mixes_with_the_stamp(database: str) -> None:
    for compression, encrypted in (("gzip", False), ("zstd", True)):
        dump = naming.database_artifact(T0, compression, encrypted, database)
        parsed = naming.parse(dump)
        assert parsed is not None and parsed.kind == "database"
        assert (parsed.target, parsed.created, parsed.zstd, parsed.encrypted) == (
            database,
            T0,
            compression == "zstd",
            encrypted,
        )
        companion = naming.parse(naming.globals_artifact(dump))
        assert companion is not None and (companion.kind, companion.target) == ("globals", database)
        for link in naming.latest_links(parsed):
            assert naming.latest_link_of(link) == ("database", database)
    seed = naming.parse(naming.database_artifact(T0, "gzip"))
    assert seed is not None and seed.target is None  # the seed's names are unchanged


@pytest.mark.parametrize(
    ("database", "why"),
    [
        ("a/b", "slash"),
        ("..", "'..'"),
        ("x/../../etc", "slash"),
        ("back\\slash", "slash"),
        ("new\nline", "control character"),
        ("bell\x07", "control character"),
        ("rtl\u202egnp.exe", "format character"),
        ("line\u2028sep", "line separator"),
        ("", "empty"),
    ],
)
def test_hostile_database_names_never_reach_a_file_name(database: str, why: str) -> None:
    problem = naming.database_name_problem(database)
    assert problem is not None and why in problem
    with pytest.raises(ValueError, match="cannot name a file"):
        naming.database_artifact(T0, "gzip", database=database)
    if database:  # an empty entry of a list is dropped, as in the environment
        with pytest.raises(ConfigError, match="cannot be part of a file name"):
            config.load(env={}, flags={"database.names": ["ok", database]})


def test_names_and_name_are_one_or_the_other() -> None:
    both = {"SAFEHOLD_DB_NAMES": NAMES, "DB_NAME": "container_app"}
    with pytest.raises(ConfigError, match=r"both database\.name") as refused:
        config.load(env=both)
    assert "--db-name" in (refused.value.hint or "")
    many = config.load(env={"SAFEHOLD_DB_NAMES": NAMES})
    assert many.database.names == ("container_app", "tenant_*") and many.many_databases
    assert many.seed_database() is None and many.required_databases() == ("container_app",)
    picked = config.load(env={"SAFEHOLD_DB_NAMES": NAMES}, flags={"database.name": "tenant_b"})
    assert picked.database_patterns() == ("tenant_b",) and picked.pg_target().dbname == "tenant_b"
    one = config.load(env={"SAFEHOLD_DB_NAMES": "tenant_a"})  # one name: the seed's file names
    assert not one.many_databases and one.pg_target().dbname == "tenant_a"
    assert config.load(env={"DB_NAME": "x"}).seed_database() == "x"


def test_names_and_patterns_are_matched_against_the_server() -> None:
    present = ["container_app", "tenant_b", "tenant_a", "other", "tenant_../x"]
    chosen = select(["container_app", "tenant_*", "nobody_*"], present)
    assert chosen.databases == ["container_app", "tenant_a", "tenant_b"]
    assert chosen.refused == {"tenant_../x": "it holds a slash"}
    assert chosen.warnings == ["no database on the server matches 'nobody_*' (database.names)"]
    with pytest.raises(DatabaseMissing, match=r"'typo' .* does not exist"):
        select(["typo", "tenant_*"], present)


def _record(name: str, database: str, at: datetime) -> BackupRecord:
    manifest = Manifest(name, "database", database, "pg_dump-gzip", 1, "0" * 64, at, at, "t")
    return BackupRecord(name, "database", at, 1, "ok", manifest)


def test_seed_links_follow_one_database_and_each_database_gets_its_own() -> None:
    """Seed-named dumps of a (t0, t2) and b (t1), then multi-named dumps of a and c."""
    seed_a0 = _record(naming.database_artifact(T0, "gzip"), "a", T0)
    seed_b = _record(naming.database_artifact(T0 + timedelta(hours=1), "gzip"), "b", T0)
    seed_a2 = _record(naming.database_artifact(T0 + timedelta(hours=2), "gzip"), "a", T0)
    records = [seed_a0, seed_b, seed_a2]
    # DB_NAME=b names the seed links; before, the newest dump of any database took them.
    plan = catalog.latest_link_plan(records, primary="b")
    assert plan["db_backup_latest.sql"] == plan["latest_db_backup.sql"] == seed_b.name
    assert plan["db_backup_a_latest.sql"] == seed_a2.name  # both databases are named too
    assert plan["db_backup_b_latest.sql"] == seed_b.name
    assert catalog.latest_link_plan(records)["db_backup_latest.sql"] == seed_a2.name
    only_a = catalog.latest_link_plan([seed_a0, seed_a2], primary="a")
    assert set(only_a) == set(naming.DB_LATEST_LINKS)  # one database: exactly the seed's links
    named_a = _record(
        naming.database_artifact(T0 + timedelta(hours=3), "gzip", False, "a"), "a", T0
    )
    named_c = _record(
        naming.database_artifact(T0 + timedelta(hours=3), "zstd", False, "c"), "c", T0
    )
    mixed = catalog.latest_link_plan([*records, named_a, named_c], primary="a")
    assert mixed["db_backup_a_latest.sql"] == named_a.name  # newest of a, in any style
    assert mixed["db_backup_c_latest.sql"] == mixed["db_backup_c_latest.sql.zst"] == named_c.name
    assert mixed["db_backup_latest.sql"] == seed_a2.name  # the seed's names: seed-named dumps
    assert "db_backup_latest.sql.zst" not in mixed


# ---- the real thing ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def three(pg: SandboxCluster) -> Iterator[PgTarget]:
    for name in ("container_app", "tenant_", "hostile_"):
        drop_databases(pg.target, name)
    for name, users in DATABASES.items():
        load_sample(pg.target, name, users=users)
    yield pg.target
    for name in ("container_app", "tenant_", "hostile_"):
        drop_databases(pg.target, name)


def cli(
    server: PgTarget, backup_dir: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG", "SAFEHOLD_"))}
    full.update(
        BACKUP_DIR=str(backup_dir),
        DB_HOST=server.host,
        DB_PORT=str(server.port),
        DB_USER=server.user,
        PGPASSWORD=server.password or "",
        PYTHONPATH=str(ROOT / "src"),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=backup_dir.parent,
    )


def toc_database(path: Path) -> str:
    """The database a custom-format dump was taken of, from its TOC header."""
    listing = subprocess.run(["pg_restore", "--list", str(path)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    line = next(x for x in listing.stdout.splitlines() if x.startswith(";     dbname: "))
    return line.removeprefix(";     dbname: ")


def test_one_run_backs_up_every_database_and_restores_each(three: PgTarget, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    before = {name: fingerprint(three, name) for name in DATABASES}
    made = cli(three, repo, "backup", "--json", SAFEHOLD_DB_NAMES=NAMES)
    assert made.returncode == 0, made.stderr
    manifests = json.loads(made.stdout)
    assert [m["target"] for m in manifests] == sorted(DATABASES)
    set_id = manifests[0]["set_id"]
    for m in manifests:
        assert m["set_id"] == set_id  # one run, one set
        assert m["artifact"] == f"db_backup_{m['target']}_{set_id}.sql"
        assert m["facts"]["tables"]["app.users"] == DATABASES[m["target"]]
        assert m["facts"]["globals"] == f"db_globals_{m['target']}_{set_id}.sql"
        link = repo / naming.database_latest_link(m["target"])
        assert link.is_symlink() and os.readlink(link) == m["artifact"]
        assert toc_database(link) == m["target"]
    assert not any((repo / link).exists() for link in naming.DB_LATEST_LINKS)
    (record,) = catalog.read_sets(LocalStorage(repo))
    assert (record.scope, record.databases, record.volumes) == (
        "databases",
        tuple(sorted(DATABASES)),
        (),
    )

    listed = json.loads(cli(three, repo, "list", "--json", SAFEHOLD_DB_NAMES=NAMES).stdout)
    dumps = {r["name"]: r["target"] for r in listed if r["kind"] == "database"}
    assert dumps == {m["artifact"]: m["target"] for m in manifests}

    status = cli(three, repo, "status", "--json", SAFEHOLD_DB_NAMES=NAMES)
    targets = {
        t["target"]: t for t in json.loads(status.stdout)["targets"] if t["kind"] == "database"
    }
    assert {name: t["last_backup"] for name, t in targets.items()} == dumps_by_target(manifests)

    # latest is ambiguous with three databases: refused, naming them.
    refused = cli(three, repo, "restore", "--database", "latest", SAFEHOLD_DB_NAMES=NAMES)
    assert refused.returncode != 0
    assert "container_app, tenant_a, tenant_b" in refused.stderr and "--db-name" in refused.stderr

    execute(three, "DROP TABLE app.files", "tenant_a")
    execute(three, "DELETE FROM public.audit_log", "tenant_b")
    one = cli(
        three,
        repo,
        "restore",
        "--database",
        "latest",
        "--db-name",
        "tenant_a",
        "--drop-previous",
        SAFEHOLD_DB_NAMES=NAMES,
    )
    assert one.returncode == 0, one.stderr
    assert fingerprint(three, "tenant_a") == before["tenant_a"]
    assert fingerprint(three, "tenant_b") != before["tenant_b"]  # only the one asked
    # A file restores into the database its manifest names.
    by_file = cli(
        three,
        repo,
        "restore",
        "--database",
        dumps_by_target(manifests)["tenant_b"],
        "--drop-previous",
        SAFEHOLD_DB_NAMES=NAMES,
    )
    assert by_file.returncode == 0, by_file.stderr
    assert fingerprint(three, "tenant_b") == before["tenant_b"]

    execute(three, "DELETE FROM public.audit_log", "container_app")
    execute(three, "DROP TABLE app.files", "tenant_b")
    whole = cli(three, repo, "restore", "--all", "--set", set_id, "--json", SAFEHOLD_DB_NAMES=NAMES)
    assert whole.returncode == 0, whole.stderr
    steps = [s["title"] for s in json.loads(whole.stdout)["steps"]]
    assert sum(t.startswith("restore database") for t in steps) == 3
    assert {name: fingerprint(three, name) for name in DATABASES} == before
    drop_databases(three, "container_app_pre_restore")
    drop_databases(three, "tenant_a_pre_restore")
    drop_databases(three, "tenant_b_pre_restore")


def dumps_by_target(manifests: list[dict[str, object]]) -> dict[str, str]:
    return {str(m["target"]): str(m["artifact"]) for m in manifests}


def test_one_database_keeps_the_seed_names(three: PgTarget, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    made = cli(three, repo, "backup", "--json", SAFEHOLD_DB_NAMES="tenant_a")
    assert made.returncode == 0, made.stderr
    manifest = json.loads(made.stdout)
    assert manifest["artifact"] == f"db_backup_{manifest['artifact'][10:25]}.sql"
    assert naming.parse(manifest["artifact"]) is not None and manifest["set_id"] is None
    for link in naming.DB_LATEST_LINKS:
        assert os.readlink(repo / link) == manifest["artifact"]
    assert sorted(p.name for p in repo.iterdir() if p.is_symlink()) == sorted(
        naming.DB_LATEST_LINKS
    )


def test_two_databases_under_the_seed_names_keep_their_own_latest(
    three: PgTarget, tmp_path: Path
) -> None:
    """The bug: DB_NAME=tenant_a, then DB_NAME=tenant_b, in one BACKUP_DIR made
    db_backup_latest.sql tenant_b's for everyone; restoring it under DB_NAME=tenant_a was then
    refused as another database's backup."""
    repo = tmp_path / "backups"
    for name in ("tenant_a", "tenant_b"):
        made = cli(three, repo, "backup", DB_NAME=name)
        assert made.returncode == 0, made.stderr
    assert toc_database(repo / "db_backup_latest.sql") == "tenant_b"  # the last run's DB_NAME
    assert toc_database(repo / "db_backup_tenant_a_latest.sql") == "tenant_a"
    assert toc_database(repo / "db_backup_tenant_b_latest.sql") == "tenant_b"
    planned = cli(
        three,
        repo,
        "restore",
        "--database",
        "db_backup_latest.sql",
        "--dry-run",
        "--json",
        DB_NAME="tenant_a",
    )
    assert planned.returncode == 0, planned.stderr
    source = Path(json.loads(planned.stdout)["source"])
    assert toc_database(source) == "tenant_a"
    pruned = cli(three, repo, "prune", DB_NAME="tenant_a")
    assert pruned.returncode == 0, pruned.stderr
    for link in naming.DB_LATEST_LINKS:
        assert toc_database(repo / link) == "tenant_a"
    assert toc_database(repo / "db_backup_tenant_b_latest.sql") == "tenant_b"


def test_a_database_that_fails_fails_the_run_after_the_others(
    three: PgTarget, tmp_path: Path
) -> None:
    repo = LocalStorage(tmp_path / "backups")
    unreachable = dataclasses.replace(three.with_db("tenant_b"), port=free_port())
    options = SetOptions(BackupOptions(named=True))
    with pytest.raises(SafeholdError, match="1 of 2 members failed: database tenant_b"):
        backup_set(
            repo,
            database=None,
            databases=[three.with_db("tenant_a"), unreachable],
            client=None,
            volumes=[],
            options=options,
            scope="databases",
        )
    records = catalog.scan(repo)
    assert {(r.kind, r.manifest.target if r.manifest else None, r.status) for r in records} == {
        ("database", "tenant_a", "ok"),
        ("globals", "tenant_a", "ok"),
    }
    assert not catalog.read_sets(repo)  # no set without every member
    assert not [p for p in repo.root.iterdir() if "partial" in p.name or "tenant_b" in p.name]


def test_hostile_database_names_are_refused_and_the_others_kept(
    three: PgTarget, tmp_path: Path
) -> None:
    hostile = ["hostile_../x", "hostile_tab\tx", "hostile_rtl\u202eexe"]
    fine = ["hostile_2024", "hostile_x_20240101_000000"]
    with psycopg.connect(
        host=three.host,
        port=three.port,
        user=three.user,
        password=three.password,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        for name in hostile + fine:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    repo = tmp_path / "backups"
    made = cli(three, repo, "backup", SAFEHOLD_DB_NAMES="hostile_*,nobody_*")
    assert made.returncode != 0
    assert "3 of 5 members failed" in made.stderr and "it holds a slash" in made.stderr
    assert "no database on the server matches 'nobody_*'" in made.stderr
    records = catalog.scan(LocalStorage(repo))
    dumps = sorted(r.manifest.target for r in records if r.kind == "database" and r.manifest)
    assert dumps == fine and all(r.status == "ok" for r in records)
    names = [p.name for p in repo.iterdir()]
    assert not any("\t" in n or "\u202e" in n or ".." in n for n in names)
    assert not (repo.parent / "x").exists() and not list(repo.rglob("*x_latest*exe*"))


def test_backup_all_takes_every_database_into_one_full_set(three: PgTarget, tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    made = cli(three, repo, "backup", "--all", "--json", SAFEHOLD_DB_NAMES=NAMES)
    assert made.returncode == 0, made.stderr
    record = json.loads(made.stdout)
    assert (record["scope"], record["databases"]) == ("full", sorted(DATABASES))
    assert sorted(m["target"] for m in record["manifests"] if m["kind"] == "database") == sorted(
        DATABASES
    )
    planned = cli(three, repo, "restore", "--all", "--dry-run", "--json", SAFEHOLD_DB_NAMES=NAMES)
    assert planned.returncode == 0, planned.stderr
    titles = [s["title"] for s in json.loads(planned.stdout)["steps"]]
    for name in DATABASES:
        assert any(
            t.startswith(f"restore database '{name}' from db_backup_{name}_") for t in titles
        )
        assert f"check the database '{name}' answers" in titles
