"""Status against the objectives with a controlled clock, the Prometheus file, and the
monitoring-plugin exit codes through the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from safehold import catalog
from safehold.model import Objectives
from safehold.operations.checks.drill import drill
from safehold.operations.checks.records import verify_key
from safehold.operations.checks.verify import verify_backup
from safehold.operations.database.backup import backup_database
from safehold.operations.report.metrics import write_metrics
from safehold.operations.report.status import read_status
from safehold.operations.volumes.folder import backup_tree
from safehold.sources.postgres import PgTarget
from safehold.storage import LocalStorage

from .conftest import CliRunner, webhook_receiver

GOALS = Objectives(rpo_s=24 * 3600)


def test_fresh_stale_and_missing_backups_judged_against_the_rpo(
    db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    manifest = backup_database(db, repo)
    taken = manifest.started_at

    def level_at(now: datetime, **kw: object) -> tuple[str, list[str]]:
        report = read_status(repo, now=now, objectives=GOALS, database=db.dbname, **kw)  # type: ignore[arg-type]
        return report.level, [r for t in report.targets for r in t.reasons]

    assert level_at(taken + timedelta(hours=1)) == ("ok", [])
    level, reasons = level_at(taken + timedelta(hours=30))
    assert level == "warning" and "30.0 h old (RPO 24.0 h)" in reasons[0]
    assert level_at(taken + timedelta(hours=49))[0] == "critical"
    level, reasons = level_at(taken + timedelta(hours=1), volumes=("user-data",))
    assert level == "critical" and reasons == ["no good backup"]
    hourly = Objectives(rpo_s=3600)
    report = read_status(
        repo, now=taken + timedelta(hours=1.5), objectives=hourly, database=db.dbname
    )
    assert report.exit_code == 1


def test_verify_and_drill_results_show_and_a_failed_verify_is_critical(
    db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    manifest = backup_database(db, repo)
    verify_backup(repo, manifest.artifact, "quick")
    record = drill(repo, "latest", server=db, live_database=db.dbname)
    now = manifest.started_at + timedelta(minutes=5)

    report = read_status(repo, now=now, objectives=GOALS, database=db.dbname)

    (target,) = report.targets
    assert target.level == "ok" and target.verify is not None and target.verify.ok
    assert target.drill is not None and target.drill.id == record.id
    assert target.drill_s == record.members[0]["seconds"]
    late = read_status(repo, now=now + timedelta(days=40), objectives=GOALS, database=None)
    assert any("drill is 40 days old" in r for r in late.targets[0].reasons)

    path = repo.path(manifest.artifact)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    failed = verify_backup(repo, manifest.artifact, "quick")
    assert not failed.ok
    report = read_status(repo, now=now, objectives=GOALS, database=db.dbname)
    assert report.level == "critical"
    assert any("verify of" in r for r in report.targets[0].reasons)


def test_metrics_file_in_prometheus_text_format(
    db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    manifest = backup_database(db, repo)
    folder = tmp_path / "uploads"
    folder.mkdir()
    (folder / "f").write_text("x" * 1000)
    tree = backup_tree(folder, "uploads", repo)
    report = read_status(
        repo,
        now=manifest.started_at + timedelta(hours=2),
        objectives=GOALS,
        database=db.dbname,
    )
    out = tmp_path / "safehold.prom"

    write_metrics(report, out)

    samples = {
        (s.name, s.labels.get("kind"), s.labels.get("target")): s.value
        for family in text_string_to_metric_families(out.read_text())
        for s in family.samples
    }
    key = ("safehold_backup_size_bytes", "database", db.dbname)
    assert samples[key] == manifest.size
    assert samples[("safehold_backup_size_bytes", "volume", "uploads")] == tree.size
    stamp = samples[("safehold_last_success_timestamp_seconds", "database", db.dbname)]
    assert stamp == pytest.approx(manifest.started_at.timestamp(), abs=0.001)  # ms in manifests
    assert samples[("safehold_status", "database", db.dbname)] == 0
    assert samples[("safehold_status_overall", None, None)] == 0


def test_status_cli_exit_codes_and_json(
    run_cli: CliRunner, db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    empty = run_cli("status", "--json")
    assert empty.returncode == 2, empty.stderr
    assert json.loads(empty.stdout)["targets"][0]["reasons"] == ["no good backup"]

    assert run_cli("backup").returncode == 0
    prom = tmp_path / "m.prom"
    fresh = run_cli("status", "--metrics-file", str(prom))
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "status: OK" in fresh.stdout and "never drilled" in fresh.stdout
    written = prom.read_text()  # a timestamp, and no age that would freeze in the file
    assert "safehold_last_success_timestamp_seconds{" in written and "_age_" not in written
    assert "safehold_runs_status 0.0" in written  # the backup's run record: ok

    strict = run_cli("status", "--json", env={"SAFEHOLD_OBJECTIVES_RPO_HOURS": "0.0001"})
    assert strict.returncode == 2
    (target,) = json.loads(strict.stdout)["targets"]
    assert target["level"] == "critical" and target["last_backup"].startswith("db_backup_")
    assert datetime.fromisoformat(target["last_backup_at"]) <= datetime.now(UTC)


def test_status_alerts_on_an_rpo_breach(run_cli: CliRunner, tmp_path: Path) -> None:
    with webhook_receiver() as (url, received):
        result = run_cli("status", env={"SAFEHOLD_ALERTS_WEBHOOK_URL": url})

    assert result.returncode == 2
    (alert,) = received
    assert alert["what"] == "RPO breached" and "no good backup" in str(alert["message"])


def test_status_errors_exit_3_unknown(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    """Monitoring plugin convention: an error of status itself is UNKNOWN (3), never read as
    WARNING (1) or CRITICAL (2), and --json still prints one object, with level "unknown"."""
    config = run_cli("status", "--json", env={"SAFEHOLD_OBJECTIVES_RPO_HOURS": "soon"})
    assert config.returncode == 3, config.stdout + config.stderr
    unknown = json.loads(config.stdout)
    assert unknown["level"] == "unknown" and unknown["type"] == "ConfigError"
    assert "SAFEHOLD_OBJECTIVES_RPO_HOURS" in unknown["error"]
    assert "error: environment variable SAFEHOLD_OBJECTIVES_RPO_HOURS" in config.stderr

    usage = run_cli("status", "--no-such-option")
    assert usage.returncode == 3 and "No such option" in usage.stderr

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    storage = run_cli("status", env={"BACKUP_DIR": str(not_a_folder)})
    assert storage.returncode == 3, storage.stdout + storage.stderr
    assert "hint: move that file away, or point BACKUP_DIR at a folder" in storage.stderr

    # A crash: the newest backup's verify record is a folder where a file must be.
    assert run_cli("backup").returncode == 0
    (name,) = [r.name for r in catalog.scan(repo) if r.kind == "database"]
    repo.path(verify_key(name)).mkdir(parents=True)
    crash = run_cli("status", "--json")
    assert crash.returncode == 3, crash.stdout + crash.stderr
    assert "IsADirectoryError" in crash.stderr and "unexpected failure" in crash.stderr
    assert json.loads(crash.stdout)["level"] == "unknown"
