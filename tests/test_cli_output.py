"""What the CLI prints: JSON results for scripts, JSON log lines, progress bars on a terminal."""

from __future__ import annotations

import io
import json

from rich.console import Console

from safehold.model import Event
from safehold.operations._pipeline import Progress
from safehold.sinks import LogSink, ProgressSink
from safehold.storage import LocalStorage

from .conftest import CliRunner


def test_json_results_and_json_logs(run_cli: CliRunner, repo: LocalStorage) -> None:
    backup = run_cli("backup", "--json", "--log-format", "json")
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(backup.stdout)
    assert manifest["artifact"].startswith("db_backup_") and len(manifest["sha256"]) == 64
    log_lines = [json.loads(line) for line in backup.stderr.splitlines() if line.strip()]
    assert {line["level"] for line in log_lines} <= {"info", "warning"}
    assert any(line["event"] == "backup" and "done" in line["message"] for line in log_lines)
    assert all(line["time"].endswith("Z") for line in log_lines)

    listing = json.loads(run_cli("list", "--json").stdout)
    # Newest first: the dump, then the globals written beside it.
    assert [item["name"] for item in listing] == [
        manifest["artifact"],
        manifest["facts"]["globals"],
    ]
    assert listing[0]["status"] == "ok" and listing[0]["sha256"] == manifest["sha256"]

    plan = run_cli("restore", "--database", "latest", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert data["dry_run"] is True and len(data["plan"]) >= 4

    config = json.loads(run_cli("config", "--json").stdout)
    assert config["backup_dir"] == str(repo.root)
    assert config["password"] == "set"


def test_plain_log_lines_are_timestamped_and_quiet_hides_info(run_cli: CliRunner) -> None:
    loud = run_cli("backup")
    assert loud.returncode == 0
    lines = loud.stderr.splitlines()
    assert lines and all(line[:4].isdigit() and line[19] == "Z" for line in lines)
    quiet = run_cli("backup", "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.strip().endswith(".sql")


def test_progress_bar_on_a_terminal() -> None:
    screen = io.StringIO()
    sink = ProgressSink(Console(file=screen, force_terminal=True, width=100))
    progress = Progress(sink, "dump app", total=10_000_000)
    progress.advance(5_000_000)
    progress.close()
    sink.close()
    assert "dump app" in screen.getvalue()


def test_log_sink_throttles_progress_and_keeps_warnings() -> None:
    out = io.StringIO()
    sink = LogSink(out)
    for done in range(0, 100, 10):
        sink(Event("progress", "dump", "debug", {"task": "dump", "done": done, "unit": "B"}))
    sink(
        Event(
            "progress", "dump", "debug", {"task": "dump", "done": 100, "unit": "B", "final": True}
        )
    )
    sink(Event("lock", "previous run died", "warning"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # one final progress line, one warning: cron logs stay short
    assert "WARNING" in lines[1]
