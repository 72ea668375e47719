"""Dumps operators already have: every pg_dump format, plain SQL, gzip/zstd-wrapped, restored
through the same staging database and swap. Each input is built by the real tools (pg_dump,
gzip, zstd, tar) and identified by content: the files carry no telling extension.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from safehold.errors import IntegrityError, RestoreError, SafeholdError, UsageError
from safehold.operations.database.backup import backup_database
from safehold.operations.database.restore import RestoreOptions, restore_database
from safehold.sandbox import SandboxCluster
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner, databases, execute, fingerprint
from .test_backup_restore import mutate

Build = Callable[[PgTarget, Path], Path]


def tool_env(target: PgTarget) -> dict[str, str]:
    return {**os.environ, **target.env(), "LC_MESSAGES": "C"}


def pg_dump(target: PgTarget, out: Path, *args: str) -> Path:
    subprocess.run(
        ["pg_dump", *args, "--file", str(out), target.dbname],
        env=tool_env(target),
        check=True,
        capture_output=True,
    )
    return out


def wrap(tool: str, path: Path) -> Path:
    """``gzip -c`` / ``zstd -c`` of ``path`` into a file without a telling name."""
    out = path.with_name(path.name + "-wrapped")
    with out.open("wb") as fh:
        subprocess.run([tool, "-q", "-c", str(path)], stdout=fh, check=True)
    path.unlink()
    return out


def pg_dump_supports_zstd(target: PgTarget) -> bool:
    probe = subprocess.run(
        ["pg_dump", "-Fc", "--compress=zstd", "--schema-only", target.dbname],
        env=tool_env(target),
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


BUILDS: dict[str, Build] = {
    "custom": lambda t, d: pg_dump(t, d / "dump", "-Fc"),
    "custom-Z0": lambda t, d: pg_dump(t, d / "dump", "-Fc", "-Z0"),
    "custom.zst": lambda t, d: wrap("zstd", pg_dump(t, d / "dump", "-Fc", "-Z0")),
    "custom.gz": lambda t, d: wrap("gzip", pg_dump(t, d / "dump", "-Fc", "-Z0")),
    "tar": lambda t, d: pg_dump(t, d / "dump", "-Ft"),
    "tar.gz": lambda t, d: wrap("gzip", pg_dump(t, d / "dump", "-Ft")),
    "directory": lambda t, d: pg_dump(t, d / "dumpdir", "-Fd", "--jobs=2"),
    "plain": lambda t, d: pg_dump(t, d / "dump", "-Fp"),
    "plain.gz": lambda t, d: wrap("gzip", pg_dump(t, d / "dump", "-Fp")),
    "plain.zst": lambda t, d: wrap("zstd", pg_dump(t, d / "dump", "-Fp")),
    "custom-zstd": lambda t, d: pg_dump(t, d / "dump", "-Fc", "--compress=zstd"),
}
EXPECTED_FORMAT = {
    "custom": ("custom", False, False),
    "custom-Z0": ("custom", False, False),
    "custom.zst": ("custom", True, False),
    "custom.gz": ("custom", False, True),
    "tar": ("tar", False, False),
    "tar.gz": ("tar", False, True),
    "directory": ("directory", False, False),
    "plain": ("plain", False, False),
    "plain.gz": ("plain", False, True),
    "plain.zst": ("plain", True, False),
    "custom-zstd": ("custom", False, False),
}


def staging_left(pg: SandboxCluster) -> set[str]:
    return {n for n in databases(pg.target) if "_safehold_staging_" in n}


@pytest.mark.parametrize("kind", list(BUILDS))
def test_each_format_restores_over_live_and_side_by_side(
    kind: str, db: PgTarget, repo: LocalStorage, pg: SandboxCluster, tmp_path: Path
) -> None:
    if kind == "custom-zstd" and not pg_dump_supports_zstd(db):
        # pg_dump before 16 has no zstd: its pg_restore could not read such a file either.
        assert int(subprocess.check_output(["pg_dump", "--version"], text=True).split()[2][:2]) < 16
        return
    expected = fingerprint(db)
    dump = BUILDS[kind](db, tmp_path)
    assert expected[0], "the sample has tables"

    # Side by side first: the live database must stay exactly as it is.
    side = f"{db.dbname}_side"
    jobs = 2 if kind == "directory" else 0
    result = restore_database(db, repo, str(dump), RestoreOptions(target_db=side, jobs=jobs))
    fmt, zstd, gz = EXPECTED_FORMAT[kind]
    assert (result.plan.format, result.plan.zstd, result.plan.gzip) == (fmt, zstd, gz)
    assert fingerprint(db, side) == expected
    assert fingerprint(db) == expected

    # Over the live database, changed since the dump: the restore brings the dump back.
    mutate(db)
    changed = fingerprint(db)
    assert changed != expected
    result = restore_database(db, repo, str(dump), RestoreOptions(jobs=jobs))
    assert fingerprint(db) == expected
    assert result.plan.previous is not None
    assert fingerprint(db, result.plan.previous) == changed
    if kind == "directory":
        assert result.plan.jobs == 2
    if kind.startswith("tar") or kind.startswith("plain"):
        assert result.plan.jobs == 1  # pg_restore has no parallel tar restore; psql is one stream
    assert staging_left(pg) == set()
    scratch = repo.root / ".safehold" / "tmp"
    assert not scratch.exists() or not any(scratch.iterdir())  # the decompressed copy is gone


def test_plain_sql_with_an_error_midway_changes_nothing(
    db: PgTarget, repo: LocalStorage, pg: SandboxCluster, tmp_path: Path
) -> None:
    dump = pg_dump(db, tmp_path / "dump.sql", "-Fp")
    lines = dump.read_text().splitlines(keepends=True)
    # Break it after the tables and some data are in: the statement after the first COPY block.
    end_of_copy = lines.index("\\.\n")
    lines.insert(end_of_copy + 1, "INSERT INTO app.no_such_table VALUES (1);\n")
    dump.write_text("".join(lines))
    mutate(db)
    before, names = fingerprint(db), databases(pg.target)

    with pytest.raises(RestoreError) as caught:
        restore_database(db, repo, str(dump))

    assert "no_such_table" in caught.value.message
    assert "was not touched" in caught.value.message
    assert fingerprint(db) == before
    assert databases(pg.target) == names  # no staging database, no previous one


def test_a_truncated_plain_dump_is_refused_before_psql_commits(
    db: PgTarget, repo: LocalStorage, pg: SandboxCluster, tmp_path: Path
) -> None:
    dump = pg_dump(db, tmp_path / "dump.sql", "-Fp")
    text = dump.read_text()
    # Cut at a statement boundary: psql alone would run what is there and commit it.
    cut = text.index("\n", len(text) * 2 // 3) + 1
    dump.write_text(text[:cut])
    mutate(db)
    before, names = fingerprint(db), databases(pg.target)

    with pytest.raises(IntegrityError, match="cut short"):
        restore_database(db, repo, str(dump))

    assert fingerprint(db) == before
    assert databases(pg.target) == names


@pytest.mark.parametrize("tool", ["gzip", "zstd"])
def test_a_damaged_compressed_plain_dump_stops_psql_before_it_commits(
    tool: str, db: PgTarget, repo: LocalStorage, pg: SandboxCluster, tmp_path: Path
) -> None:
    # Big enough that the damage lies beyond what identification reads: it shows up only while
    # psql is already running the statements before it.
    execute(
        db,
        "CREATE TABLE public.bulk AS SELECT g, md5(g::text) AS h FROM generate_series(1, 60000) g",
    )
    dump = wrap(tool, pg_dump(db, tmp_path / "dump", "-Fp"))
    data = dump.read_bytes()
    dump.write_bytes(data[: len(data) * 3 // 4])
    mutate(db)
    before, names = fingerprint(db), databases(pg.target)

    with pytest.raises(IntegrityError, match=f"damaged {tool} file"):
        restore_database(db, repo, str(dump))

    assert fingerprint(db) == before
    assert databases(pg.target) == names


def _volume_backup(d: Path) -> Path:
    (d / "files").mkdir()
    (d / "files" / "a.txt").write_text("user data\n")
    out = d / "volume-archive"
    subprocess.run(["tar", "czf", str(out), "-C", str(d / "files"), "."], check=True)
    return out


def _cluster_dump(target: PgTarget, d: Path) -> Path:
    out = d / "cluster"
    subprocess.run(
        ["pg_dumpall", "--globals-only", "--file", str(out)], env=tool_env(target), check=True
    )
    return out


def _random_bytes(d: Path) -> Path:
    out = d / "noise"
    out.write_bytes(b"\x07" + random.Random(7).randbytes(8191))  # \x07: no known magic
    return out


def _empty(d: Path) -> Path:
    out = d / "empty"
    out.write_bytes(b"")
    return out


def _text(d: Path) -> Path:
    out = d / "notes"
    out.write_text("Dear operator,\nthe backup is on the blue disk.\n")
    return out


REFUSED: dict[str, tuple[Callable[[PgTarget, Path], Path], type[SafeholdError], str]] = {
    "volume backup": (lambda t, d: _volume_backup(d), UsageError, "volume backup"),
    "empty file": (lambda t, d: _empty(d), IntegrityError, "an empty file"),
    "random bytes": (lambda t, d: _random_bytes(d), IntegrityError, "binary data"),
    "pg_dumpall": (_cluster_dump, UsageError, "pg_dumpall output"),
    "pg_dump --create": (
        lambda t, d: pg_dump(t, d / "created", "-Fp", "--create"),
        UsageError,
        "creates or connects to its own database",
    ),
    "text": (lambda t, d: _text(d), IntegrityError, "does not look like SQL"),
    "gzip of nothing": (lambda t, d: wrap("gzip", _empty(d)), IntegrityError, "empty stream"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_files_that_are_not_dumps_are_named_and_nothing_changes(
    case: str, db: PgTarget, repo: LocalStorage, pg: SandboxCluster, tmp_path: Path
) -> None:
    build, error, words = REFUSED[case]
    path = build(db, tmp_path)
    before, names = fingerprint(db), databases(pg.target)

    for dry_run in (True, False):
        with pytest.raises(error) as caught:
            restore_database(db, repo, str(path), dry_run=dry_run)
        assert words in caught.value.message
        assert caught.value.hint

    assert fingerprint(db) == before
    assert databases(pg.target) == names


def test_a_volume_backup_is_refused_through_the_cli(
    db: PgTarget, run_cli: CliRunner, pg: SandboxCluster, tmp_path: Path
) -> None:
    path = _volume_backup(tmp_path)
    before = fingerprint(db)

    done = run_cli("restore", "--database", str(path))

    assert done.returncode == 2, done.stderr
    assert "a volume backup?" in done.stderr
    assert "--volume" in done.stderr
    assert "unexpected" not in done.stderr
    assert fingerprint(db) == before


def test_a_directory_dump_and_jobs_through_the_cli(
    db: PgTarget, repo: LocalStorage, run_cli: CliRunner, pg: SandboxCluster, tmp_path: Path
) -> None:
    expected = fingerprint(db)
    folder = pg_dump(db, tmp_path / "nightly", "-Fd", "--jobs=2")
    mutate(db)

    done = run_cli("restore", "--database", str(folder), "-j", "2", "--drop-previous")

    assert done.returncode == 0, done.stderr
    assert fingerprint(db) == expected
    assert staging_left(pg) == set()


def test_restore_jobs_flag_through_the_cli(
    db: PgTarget, repo: LocalStorage, run_cli: CliRunner, pg: SandboxCluster
) -> None:
    """`restore -j N` used to crash: the flag and the config file both passed `jobs`."""
    manifest = backup_database(db, repo)
    expected = fingerprint(db)
    mutate(db)

    plan = run_cli("restore", "--database", "latest", "-j", "2", "--dry-run")
    done = run_cli("restore", "--database", "latest", "--jobs", "2", "--drop-previous")

    assert plan.returncode == 0, plan.stderr
    assert "pg_restore --jobs=2" in plan.stdout
    assert done.returncode == 0, done.stderr
    assert manifest.artifact in done.stdout
    assert fingerprint(db) == expected


def test_the_plan_says_what_the_file_is(
    db: PgTarget, repo: LocalStorage, run_cli: CliRunner, tmp_path: Path
) -> None:
    dump = wrap("gzip", pg_dump(db, tmp_path / "dump", "-Fp"))

    done = run_cli("restore", "--database", str(dump), "--dry-run")

    assert done.returncode == 0, done.stderr
    assert "plain SQL, gzip-compressed" in done.stdout
    assert "decompress gzip into psql" in done.stdout
    assert "psql -v ON_ERROR_STOP=1 --single-transaction" in done.stdout
