"""Run records and the heartbeat, through the real command line: a backup that fails before
writing anything (the server is down, the config is bad) leaves a record that ``list --runs``,
``status`` and the report show, and a Healthchecks.io-style receiver on 127.0.0.1 gets the
start, success and failure pings with the exit code."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from safehold.operations import runs
from safehold.sandbox.cluster import free_port
from safehold.storage import LocalStorage

from .conftest import CliRunner, http_serving

Ping = tuple[str, str]  # path with query, body


@contextlib.contextmanager
def ping_receiver() -> Iterator[tuple[str, list[Ping]]]:
    """A Healthchecks-like endpoint on 127.0.0.1: its check URL and the pings it received."""
    received: list[Ping] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body.decode()))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    with http_serving(Handler) as base:
        yield f"{base}/ping/check-uuid", received


def test_a_failed_backup_is_recorded_and_shown_by_list_status_and_report(
    run_cli: CliRunner, repo: LocalStorage
) -> None:
    good = run_cli("backup", "--json")
    assert good.returncode == 0, good.stderr
    artifact = json.loads(good.stdout)["artifact"]

    down = run_cli("backup", "--compress", "zstd", env={"DB_PORT": str(free_port())})
    assert down.returncode == 3, down.stderr
    assert "cannot reach the PostgreSQL server" in down.stderr

    listed = run_cli("list", "--runs", "--json")
    assert listed.returncode == 0, listed.stderr
    failed, ok = json.loads(listed.stdout)  # newest first
    assert (failed["command"], failed["args"], failed["outcome"]) == (
        "backup",
        ["--compress", "zstd"],
        "failed",
    )
    assert failed["exit_code"] == 3 and failed["error_type"] == "DatabaseUnreachable"
    assert "cannot reach the PostgreSQL server" in failed["error"] and failed["hint"]
    assert failed["produced"] == [] and failed["pid"] > 0 and failed["version"]
    assert (ok["outcome"], ok["exit_code"], ok["produced"]) == ("ok", 0, [artifact])
    text = run_cli("list", "--runs")
    assert text.returncode == 0 and "backup --compress zstd" in text.stdout
    assert "failed" in text.stdout and artifact in text.stdout

    # The newest backup is fresh, but the last backup run failed: a warning, not OK.
    status = run_cli("status", "--json")
    assert status.returncode == 1, status.stdout + status.stderr
    reading = json.loads(status.stdout)
    assert reading["level"] == "warning" and reading["targets"][0]["level"] == "ok"
    (reason,) = reading["runs"]["reasons"]
    assert reason.startswith("the last backup run failed ('backup --compress zstd' at ")
    assert "exit 3): cannot reach the PostgreSQL server" in reason
    shown = run_cli("status")
    assert shown.returncode == 1 and "status: WARNING" in shown.stdout
    assert "runs: the last backup run failed" in shown.stdout

    report = run_cli("report", "--json")
    assert report.returncode == 0, report.stderr
    (failure,) = json.loads(report.stdout)["failures"]
    assert (failure["what"], failure["subject"], failure["severity"]) == (
        "backup",
        "backup --compress zstd",
        "critical",
    )
    assert failure["detail"].startswith("run failed (exit 3): cannot reach the PostgreSQL")

    # Two in a row say so; a later good run clears the warning.
    assert run_cli("backup", env={"DB_PORT": str(free_port())}).returncode == 3
    again = json.loads(run_cli("status", "--json").stdout)
    assert again["runs"]["reasons"][0].startswith("the last 2 backup runs failed ('backup' at ")
    assert run_cli("backup").returncode == 0
    cleared = run_cli("status", "--json")
    assert cleared.returncode == 0, cleared.stdout
    assert json.loads(cleared.stdout)["runs"]["reasons"] == []


def test_a_bad_config_is_recorded_where_backup_dir_is_known(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    config = tmp_path / "safehold.toml"
    config.write_text('[database]\nport = "abc"\n')
    repo.ensure()

    result = run_cli("verify", "--config", str(config))

    assert result.returncode == 2, result.stderr
    (record,) = runs.read_runs(repo)
    assert (record.command, record.outcome, record.exit_code) == ("verify", "failed", 2)
    assert record.error_type == "ConfigError" and record.error and "port" in record.error
    assert record.finished_at is not None

    # BACKUP_DIR names no folder: no repository is created just to hold the record.
    elsewhere = tmp_path / "none"
    result = run_cli("backup", "--config", str(config), env={"BACKUP_DIR": str(elsewhere)})
    assert result.returncode == 2 and not elsewhere.exists()
    assert "warning" not in result.stderr  # nothing but the error itself


def test_heartbeat_pings_start_success_and_failure_with_the_exit_code(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path
) -> None:
    with ping_receiver() as (url, received):
        env = {"SAFEHOLD_ALERTS_HEARTBEAT_URL": url}
        assert run_cli("backup", env=env).returncode == 0
        assert run_cli("backup", env={**env, "DB_PORT": str(free_port())}).returncode == 3
        assert run_cli("list", "--runs", env=env).returncode == 0  # not a run: no ping
        bad = tmp_path / "bad.toml"
        bad.write_text("[alerts]\ntimeout = 'soon'\n")
        assert run_cli("backup", "--config", str(bad), env=env).returncode == 2

    paths = [path.split("?")[0] for path, _ in received]
    assert paths == [
        "/ping/check-uuid/start",
        "/ping/check-uuid",
        "/ping/check-uuid/start",
        "/ping/check-uuid/fail",
        "/ping/check-uuid/fail",  # the config failed: no start, but the failure is reported
    ]
    # The receiver pairs a start with its end by the run id.
    rids = [path.split("?rid=")[1] for path, _ in received]
    assert rids[0] == rids[1] and rids[2] == rids[3] and rids[1] != rids[2]
    bodies = [body for _, body in received]
    assert bodies[1].startswith("exit code 0\nsafehold backup\n")
    assert bodies[3].startswith("exit code 3\nsafehold backup\nerror: cannot reach the PostgreSQL")
    assert bodies[4].startswith("exit code 2\nsafehold backup\nerror: ")

    # A receiver that is gone costs a warning line, never the run.
    gone = f"http://127.0.0.1:{free_port()}/ping/x"
    result = run_cli("backup", env={"SAFEHOLD_ALERTS_HEARTBEAT_URL": gone})
    assert result.returncode == 0, result.stderr
    assert f"heartbeat http://127.0.0.1:{gone.split(':')[2].split('/')[0]}/... not pinged" in (
        result.stderr
    )


def test_a_killed_run_and_old_records(repo: LocalStorage) -> None:
    repo.ensure()
    child = subprocess.Popen(["true"])
    child.wait()  # its pid is now free: like a run killed mid-way
    killed = runs.start_run("backup", ("--all",))
    killed = runs.RunRecord(killed.id, "backup", ("--all",), killed.started_at, pid=child.pid)
    runs.write_run(repo, killed)
    (read,) = runs.read_runs(repo)
    assert read.outcome == "running" and read.dead()
    assert not runs.start_run("backup", ()).dead()  # this process: alive

    old = runs.start_run("prune", (), now=datetime.now(UTC) - timedelta(days=91))
    runs.write_run(repo, runs.finish_run(old, outcome="ok", exit_code=0), create=False)
    assert len(runs.read_runs(repo)) == 1  # written and pruned by its own write: too old
    repo.put_bytes(runs.run_key("garbage"), b"{not json")
    fresh = runs.start_run("verify", ())
    runs.write_run(repo, fresh)
    assert [r.command for r in runs.read_runs(repo)] == ["backup", "verify"]
