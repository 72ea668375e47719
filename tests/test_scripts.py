"""The seed scripts behave as operators know them: ./scripts/backup.sh and ./scripts/restore.sh.

They run as an operator (or cron) runs them: from a shell, configured by BACKUP_DIR DB_HOST
DB_PORT DB_NAME DB_USER and PGPASSWORD, finding safehold in the checkout's .venv.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from safehold import naming
from safehold.sandbox.cluster import free_port
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import ROOT, databases, execute, fingerprint, seed_env, webhook_receiver

BACKUP_SH = ROOT / "scripts" / "backup.sh"
RESTORE_SH = ROOT / "scripts" / "restore.sh"
ARTIFACT = re.compile(r"^db_backup_\d{8}_\d{6}\.sql$")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")


def operator_env(db: PgTarget, backup_dir: Path, **extra: str) -> dict[str, str]:
    env = seed_env(db, backup_dir)
    env.pop("SAFEHOLD_BIN", None)  # the scripts must find the checkout's .venv by themselves
    env.update(extra)
    return env


def script(
    path: Path, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(path), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def artifacts(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if ARTIFACT.match(p.name) and p.is_file())


def pg_restore_list(path: Path, cwd: Path | None = None) -> str:
    listing = subprocess.run(
        ["pg_restore", "--list", str(path)], capture_output=True, text=True, cwd=cwd, check=False
    )
    assert listing.returncode == 0, listing.stderr
    return listing.stdout


def test_backup_sh_writes_a_custom_dump(db: PgTarget, repo: LocalStorage, tmp_path: Path) -> None:
    result = ok(script(BACKUP_SH, env=operator_env(db, repo.root), cwd=tmp_path))

    names = artifacts(repo.root)
    assert len(names) == 1
    path = repo.root / names[0]
    assert str(path) in result.stdout
    assert "TABLE DATA app users" in pg_restore_list(path)
    kind = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=True)
    assert "PostgreSQL custom database dump" in kind.stdout
    assert (repo.root / naming.manifest_key(names[0])).is_file()


def test_backup_dir_from_the_environment(db: PgTarget, repo: LocalStorage, tmp_path: Path) -> None:
    other = tmp_path / "other" / "path"

    ok(script(BACKUP_SH, env=operator_env(db, repo.root, BACKUP_DIR=str(other)), cwd=tmp_path))

    assert len(artifacts(other)) == 1
    assert artifacts(repo.root) == []
    pg_restore_list(other / artifacts(other)[0])


def test_restore_sh_lists_and_restores_a_relative_path(
    db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    env = operator_env(db, repo.root)
    at_backup = fingerprint(db)
    ok(script(BACKUP_SH, env=env, cwd=tmp_path))
    (name,) = artifacts(repo.root)

    listing = ok(script(RESTORE_SH, "--list", env=env, cwd=tmp_path))
    assert name in listing.stdout and "ok" in listing.stdout

    execute(db, "DELETE FROM app.files WHERE id % 2 = 0")
    execute(db, "UPDATE app.users SET display = 'changed' WHERE id < 10")
    execute(db, "SELECT nextval('app.invoice_no')")
    changed = fingerprint(db)
    assert changed != at_backup
    assert repo.root.parent == tmp_path

    result = ok(script(RESTORE_SH, "--database", f"./backups/{name}", env=env, cwd=tmp_path))

    assert fingerprint(db) == at_backup
    previous = [
        n for n in databases(db) if re.fullmatch(rf"{db.dbname}_pre_restore_\d{{8}}_\d{{6}}", n)
    ]
    assert len(previous) == 1, sorted(databases(db))
    assert previous[0] in result.stdout
    assert fingerprint(db, previous[0]) == changed
    assert not [n for n in databases(db) if n.startswith(f"{db.dbname}_safehold_staging_")]


def test_failing_backup_leaves_a_timestamped_error_in_the_cron_log(
    db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    log = tmp_path / "backup.log"
    log.write_text("earlier run\n")
    env = operator_env(db, repo.root, DB_PORT=str(free_port()))

    cron = subprocess.run(
        ["bash", "-c", f'"{BACKUP_SH}" >> backup.log 2>&1'],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert cron.returncode == 3
    text = log.read_text()
    assert text.startswith("earlier run\n"), "the log must be appended to, not replaced"
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert errors, text
    assert any("cannot reach" in line for line in errors), text
    assert any(TIMESTAMP.search(line) and "cannot reach" in line for line in errors), (
        f"no timestamped error line in the cron log:\n{text}"
    )
    assert artifacts(repo.root) == []


def test_latest_links_point_at_the_newest_good_backup(
    db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    env = operator_env(db, repo.root)
    ok(script(BACKUP_SH, env=env, cwd=tmp_path))
    execute(db, "INSERT INTO public.audit_log (action) VALUES ('between backups')")
    ok(script(BACKUP_SH, env=env, cwd=tmp_path))
    first, newest = artifacts(repo.root)
    assert first < newest

    for link in naming.DB_LATEST_LINKS:
        path = repo.root / link
        assert path.is_symlink()
        assert path.resolve() == (repo.root / newest).resolve()
    listing = pg_restore_list(Path("backups") / "db_backup_latest.sql", cwd=tmp_path)
    assert "TABLE DATA public audit_log" in listing

    # A failed run afterwards does not move the links.
    failed = script(BACKUP_SH, env={**env, "DB_PORT": str(free_port())}, cwd=tmp_path)
    assert failed.returncode != 0
    assert artifacts(repo.root) == [first, newest]
    for link in naming.DB_LATEST_LINKS:
        assert (repo.root / link).resolve() == (repo.root / newest).resolve()


def test_failing_backup_leaves_a_timestamped_error_in_log_file(
    db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    log = tmp_path / "logs" / "safehold.log"
    env = operator_env(db, repo.root, DB_PORT=str(free_port()), LOG_FILE=str(log))

    result = script(BACKUP_SH, env=env, cwd=tmp_path)

    assert result.returncode == 3
    text = log.read_text()
    assert "backing up database" in text  # the run's start is in the log file...
    failures = [line for line in text.splitlines() if "cannot reach" in line]
    assert failures, f"...so its failure must be too; LOG_FILE holds only:\n{text}"
    assert all(TIMESTAMP.search(line) for line in failures), text


# ---- the seed's cron line, exactly as written: another folder, an almost empty environment ----

CRON_ENV_PATH = "/usr/bin:/bin"  # what cron gives a job


def make_app(tmp_path: Path, db: PgTarget, toml: str = "") -> Path:
    """An app folder as operators have one: scripts/ (copies of the real scripts), the
    safehold.toml beside it, and safehold installed in its .venv (this checkout's)."""
    app = tmp_path / "app"
    (app / "scripts").mkdir(parents=True)
    for name in ("backup.sh", "restore.sh", "_safehold"):
        shutil.copy2(ROOT / "scripts" / name, app / "scripts" / name)
    (app / ".venv").symlink_to(ROOT / ".venv")
    password = app / "db.password"
    password.write_text((db.password or "") + "\n")
    password.chmod(0o600)
    (app / "safehold.toml").write_text(
        toml
        + "[database]\n"
        + f'host = "{db.host}"\nport = {db.port}\nname = "{db.dbname}"\nuser = "{db.user}"\n'
        + 'password_file = "db.password"\n'  # relative: the app folder's, not cron's $HOME
    )
    return app


def env_i(command: str, home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """``command`` run by sh as cron runs a crontab line: ``env -i`` with cron's variables only,
    in the user's home folder."""
    home.mkdir(parents=True, exist_ok=True)
    variables = [f"HOME={home}", f"PATH={CRON_ENV_PATH}", "SHELL=/bin/sh", "LOGNAME=root"]
    variables += [f"{name}={value}" for name, value in extra.items()]
    return subprocess.run(
        ["env", "-i", *variables, "/bin/sh", "-c", command],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_seed_cron_line_uses_the_app_folder_and_logs_each_line_once(
    db: PgTarget, tmp_path: Path
) -> None:
    log = tmp_path / "log" / "backup.log"
    log.parent.mkdir(mode=0o700)
    app = make_app(tmp_path, db, f'log_file = "{log}"\n')
    home = tmp_path / "home"
    line = f"{app}/scripts/backup.sh >> {log} 2>&1"  # the seed's line, log_file the same file

    done = env_i(line, home)
    assert done.returncode == 0, log.read_text() if log.exists() else done.stderr

    (name,) = artifacts(app / "backups")  # the app folder's ./backups, not $HOME's
    assert not (home / "backups").exists()
    assert "TABLE DATA app users" in pg_restore_list(app / "backups" / name)
    text = log.read_text()
    lines = text.splitlines()
    assert len(lines) == len(set(lines)), f"a line written twice:\n{text}"
    assert f"{app}/backups/{name}" in lines  # the printed result: an absolute path
    named = re.findall(r"(\S*)backups/db_backup_\d", text)
    assert named and set(named) == {f"{app}/"}, f"a relative path in the log:\n{text}"

    # restore.sh from the same place and environment sees the same repository.
    listing = env_i(f"{app}/scripts/restore.sh --list", home)
    assert listing.returncode == 0, listing.stderr
    assert name in listing.stdout


def test_seed_cron_line_failure_alerts_from_the_app_config(db: PgTarget, tmp_path: Path) -> None:
    log = tmp_path / "backup.log"
    with webhook_receiver() as (url, received):
        app = make_app(tmp_path, db, f'log_file = "{log}"\n[alerts]\nwebhook_url = "{url}"\n')
        toml = app / "safehold.toml"
        toml.write_text(toml.read_text().replace(f"port = {db.port}", f"port = {free_port()}"))

        done = env_i(f"{app}/scripts/backup.sh >> {log} 2>&1", tmp_path / "home")

    text = log.read_text()
    assert done.returncode == 3, text
    assert len(received) == 1, text
    assert received[0]["what"] == "backup failed"
    assert received[0]["repository"] == str(app / "backups")
    assert "cannot reach" in str(received[0]["message"])
    errors = [line for line in text.splitlines() if "cannot reach" in line]
    assert len(errors) == 1, f"the failure must be in the log once:\n{text}"
    assert TIMESTAMP.search(errors[0]), text
    assert artifacts(app / "backups") == []


def test_relative_backup_dir_given_by_the_operator_means_their_folder(
    db: PgTarget, tmp_path: Path
) -> None:
    app = make_app(tmp_path, db, 'backup_dir = "kept"\n')  # the file's: the app folder's
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in operator_env(db, tmp_path).items() if k != "BACKUP_DIR"}

    ok(script(app / "scripts" / "backup.sh", env=env, cwd=work))
    (name,) = artifacts(app / "kept")

    ok(script(app / "scripts" / "backup.sh", env={**env, "BACKUP_DIR": "mine"}, cwd=work))
    assert len(artifacts(work / "mine")) == 1
    assert artifacts(app / "kept") == [name]

    # FILE arguments of restore.sh are the operator's too: relative to their folder.
    shutil.copy2(app / "kept" / name, work / name)
    restored = script(app / "scripts" / "restore.sh", "--database", name, env=env, cwd=work)
    ok(restored)
