"""Every time in the ``--json`` output of the commands is RFC 3339 in UTC with a ``Z``.

The commands run as an operator runs them (child processes), in a time zone that is not UTC so
that a local time cannot pass for a UTC one; their documents are walked and every value that
looks like a time, or sits under a key that names one, must be ``YYYY-MM-DDTHH:MM:SS[.fff]Z``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from safehold.cli.json_output import UTC_TIME, json_ready, rfc3339
from safehold.storage import LocalStorage

from .conftest import ROOT, CliRunner

LOOKS_LIKE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}.*", re.ASCII)
TIME_KEYS = re.compile(r"(.*_at|.*_utc|.*_local|at|time|local|utc|started|finished)")
ZONE = {"TZ": "America/New_York"}  # -05:00 in December, -04:00 in summer: never UTC


def _times(value: Any, where: str = "$") -> Iterator[tuple[str, str]]:
    """(path, value) of every string that is a time, by its look or by its key."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}"
            if isinstance(item, str) and TIME_KEYS.fullmatch(key) and item[:1].isdigit():
                yield path, item
            else:
                yield from _times(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _times(item, f"{where}[{index}]")
    elif isinstance(value, str) and LOOKS_LIKE_TIME.fullmatch(value):
        yield where, value


def _checked(stdout: str) -> list[tuple[str, str]]:
    times = list(_times(json.loads(stdout)))
    wrong = [(path, text) for path, text in times if not UTC_TIME.fullmatch(text)]
    assert not wrong, wrong
    return times


def test_rfc3339_is_utc_with_z_and_a_fraction_only_when_there_is_one() -> None:
    east = timezone(timedelta(hours=5, minutes=30))
    assert rfc3339(datetime(2026, 12, 6, 7, 30, tzinfo=east)) == "2026-12-06T02:00:00Z"
    assert rfc3339(datetime(2026, 12, 6, 2, 0, 0, 123456, UTC)) == "2026-12-06T02:00:00.123Z"
    # A naive time is not known to be UTC: it is left as it is, for the walk below to catch.
    assert not UTC_TIME.fullmatch(rfc3339(datetime(2026, 12, 6, 2, 0)))
    document = json_ready(
        {
            "at": "2026-12-05T21:00:00-05:00",  # isoformat() of an aware local time
            "list": [datetime(2026, 12, 6, 2, 0, tzinfo=UTC), "2026-12-06 03:00:00.5+01:00"],
            "manifest": "2024-06-02T02:00:00.000Z",  # already RFC 3339 UTC: kept as written
            "name": "db_backup_20241201_120000.sql",
            "note": "restored to time 2026-12-06 02:00:00+00:00",  # prose, not a time
        }
    )
    assert document == {
        "at": "2026-12-06T02:00:00Z",
        "list": ["2026-12-06T02:00:00Z", "2026-12-06T02:00:00.500Z"],
        "manifest": "2024-06-02T02:00:00.000Z",
        "name": "db_backup_20241201_120000.sql",
        "note": "restored to time 2026-12-06 02:00:00+00:00",
    }


def _run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "safehold", *args],
        env=env | ZONE,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_json_of_commands_without_services(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "crontab").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "PG"))}
    env |= {"BACKUP_DIR": str(repo), "DB_HOST": "127.0.0.1", "DB_PORT": "1", "DB_NAME": "app"}
    env |= {"DB_USER": "app", "PYTHONPATH": str(ROOT / "src")}
    found: dict[str, list[tuple[str, str]]] = {}
    for args in (
        ("config", "--json"),
        ("schedule", "show", "--crontab-file", "crontab", "--json"),
        ("list", "--json"),
        ("status", "--json"),  # critical (no backups): exit 2, still a reading
        ("report", "--json"),
        ("pin", "--json"),
        ("prune", "--dry-run", "--json"),
    ):
        result = _run(env, tmp_path, *args)
        assert result.stdout.startswith(("{", "[")), (args, result.stderr)
        found[" ".join(args[:2])] = _checked(result.stdout)
    # The walk saw times, including the schedule's local ones (New York, converted to UTC).
    next_runs = dict(found["schedule show"])
    assert any(path.endswith(".local") for path in next_runs), next_runs
    assert next_runs and all(text.endswith("Z") for text in next_runs.values())
    assert [path for path, _ in found["status --json"]] == ["$.checked_at"]
    assert "$.generated_at" in dict(found["report --json"])


@pytest.mark.slow
def test_json_of_a_backup_list_status_verify_and_drill(
    run_cli: CliRunner, repo: LocalStorage
) -> None:
    def ok(*args: str) -> list[tuple[str, str]]:
        result = run_cli(*args, env=ZONE)
        assert result.stdout.startswith(("{", "[")), (args, result.returncode, result.stderr)
        return _checked(result.stdout)

    before = datetime.now(UTC)
    backup = dict(ok("backup", "--json"))
    started = datetime.fromisoformat(backup["$.started_at"])
    assert before - timedelta(seconds=1) <= started <= datetime.now(UTC)
    listed = dict(ok("list", "--json"))
    assert listed["$[0].created_local"].endswith("Z")  # the same instant, in UTC
    assert dict(ok("list", "--runs", "--json"))
    assert "$.targets[0].last_backup_at" in dict(ok("status", "--json"))
    assert any(path.endswith("checked_at") for path, _ in ok("verify", "--json"))
    # A drill record is written with isoformat() (+00:00); what drill prints is converted.
    assert {"$.started_at", "$.finished_at"} <= set(dict(ok("drill", "--json")))
    assert dict(ok("report", "--json"))
