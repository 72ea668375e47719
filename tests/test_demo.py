"""The README's first command: the demo runs the whole job on its own sandbox."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.service


def test_demo_backs_up_restores_and_drills_a_database_and_a_volume() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "safehold", "demo", "--users", "50", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["identical"] is True
    members = report["set"]["members"]
    assert members[0].startswith("db_backup_") and members[1].startswith("db_globals_")
    assert members[2].startswith("volume_app-data_")
    assert report["drill"]["outcome"] == "ok"
    assert {m["kind"] for m in report["drill"]["members"]} == {"database", "volume"}
    # The volume was a real Docker volume of the demo's private engine, not the fallback folder.
    assert "Docker volume app-data" in result.stderr
