"""Archiving ahead: one wal-push also archives the segments already waiting, and the
archive_command takes their markers instead of starting safehold again."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from safehold.errors import IntegrityError
from safehold.operations.pitr import ahead as wal_ahead
from safehold.operations.pitr import archive as wal
from safehold.operations.pitr import setup as pitr_setup
from safehold.storage import LocalStorage

from .conftest import ROOT

FIRST = "000000010000000000000010"


def pg_wal(tmp_path: Path, count: int) -> list[Path]:
    """A pg_wal folder as the server leaves it: segments, each marked ready."""
    folder = tmp_path / "pg_wal"
    (folder / "archive_status").mkdir(parents=True)
    name, made = FIRST, []
    for _ in range(count):
        path = folder / name
        path.write_bytes(os.urandom(1 << 16) + bytes((16 << 20) - (1 << 16)))
        (folder / "archive_status" / f"{name}.ready").touch()
        made.append(path)
        name = wal.next_segment(name)
    return made


def run(command: str, segment: Path) -> subprocess.CompletedProcess[str]:
    """What the server does: %f and %p substituted, run by sh in the data folder."""
    line = command.replace("%f", segment.name).replace("%p", f"pg_wal/{segment.name}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "SAFEHOLD_"))}
    env["PYTHONPATH"] = str(ROOT / "src")
    return subprocess.run(
        ["sh", "-c", line],
        cwd=segment.parent.parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_one_push_archives_the_waiting_segments_and_the_command_takes_the_markers(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "backups"
    segments = pg_wal(tmp_path, 6)
    command = pitr_setup.server_settings(f"{sys.executable} -m safehold", repo)["archive_command"]
    started = run(command, segments[0])
    assert started.returncode == 0, started.stderr
    markers = repo / wal_ahead.MARKERS
    assert sorted(p.name for p in markers.iterdir()) == [p.name for p in segments[1:]]
    storage = LocalStorage(repo)
    assert wal.archived(storage) == [p.name for p in segments]
    for segment in segments:  # every one archived, byte for byte
        out = tmp_path / "out"
        wal.fetch(storage, segment.name, out)
        assert (
            hashlib.sha256(out.read_bytes()).digest()
            == hashlib.sha256(segment.read_bytes()).digest()
        )

    began = time.monotonic()
    taken = run(command, segments[1])  # the server's call for the next one: a marker
    assert taken.returncode == 0 and time.monotonic() - began < 0.2
    assert not (markers / segments[1].name).exists()
    again = run(command, segments[1])  # no marker any more: the full push, identical
    assert again.returncode == 0 and "already archived (identical)" in again.stderr


def test_a_segment_gone_before_its_push_gets_no_marker(tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    segments = pg_wal(tmp_path, 3)
    archive = wal.WalArchive(LocalStorage(repo))
    wal.push(archive, segments[0])
    segments[2].unlink()  # gone before it could be pushed: the server's own call will tell
    assert wal_ahead.push_ahead(archive, segments[0]) == [segments[1].name]
    assert sorted(p.name for p in (repo / wal_ahead.MARKERS).iterdir()) == [segments[1].name]


def test_stale_markers_are_dropped(tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    segments = pg_wal(tmp_path, 2)
    markers = repo / wal_ahead.MARKERS
    markers.mkdir(parents=True)
    old = markers / "0000000100000000000000FF"
    old.touch()
    stale = time.time() - wal_ahead.STALE_S - 60
    os.utime(old, (stale, stale))
    wal_ahead.push_ahead(wal.WalArchive(LocalStorage(repo)), segments[0])
    assert not old.exists() and (markers / segments[1].name).exists()


def test_the_server_settings_without_ahead_push_one_file(tmp_path: Path) -> None:
    plain = pitr_setup.server_settings("safehold", tmp_path, ahead=False)["archive_command"]
    assert plain == f"safehold wal-push --backup-dir {tmp_path} --ahead 0 %p"
    marked = pitr_setup.server_settings("safehold", tmp_path)["archive_command"]
    assert marked.startswith(f"if rm {tmp_path}/wal/.ahead/%f 2>/dev/null; then exit 0; else ")


def mark_ready(folder: Path, after: Path, count: int) -> list[Path]:
    """What the server does while archiving waits: more segments, each marked ready."""
    name, made = after.name, []
    for _ in range(count):
        name = wal.next_segment(name)
        path = folder / name
        path.write_bytes(os.urandom(1 << 16) + bytes((16 << 20) - (1 << 16)))
        (folder / "archive_status" / f"{name}.ready").touch()
        made.append(path)
    return made


def test_the_push_also_takes_segments_marked_ready_while_it_runs(tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    segments = pg_wal(tmp_path, 10)
    markers = repo / wal_ahead.MARKERS
    later: list[Path] = []

    def server() -> None:  # marks two more once the push has acknowledged its first segment
        while not (markers.is_dir() and any(markers.iterdir())):
            time.sleep(0.005)
        later.extend(mark_ready(segments[0].parent, segments[-1], 2))

    writer = threading.Thread(target=server)
    writer.start()
    result, marked = wal_ahead.push(wal.WalArchive(LocalStorage(repo)), segments[0])
    writer.join()
    assert result.name == segments[0].name and not result.already
    assert marked == [p.name for p in segments[1:] + later]
    assert wal.archived(LocalStorage(repo)) == [p.name for p in segments + later]


def test_the_limit_bounds_the_segments_pushed_ahead(tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    segments = pg_wal(tmp_path, 6)
    _, marked = wal_ahead.push(wal.WalArchive(LocalStorage(repo)), segments[0], limit=2)
    assert marked == [segments[1].name, segments[2].name]
    assert wal.archived(LocalStorage(repo)) == [p.name for p in segments[:3]]
    _, none = wal_ahead.push(wal.WalArchive(LocalStorage(repo)), segments[3], limit=0)
    assert none == [] and not (repo / wal_ahead.MARKERS / segments[4].name).exists()


def test_a_failing_own_segment_raises_and_stops_pushing_ahead(tmp_path: Path) -> None:
    repo = tmp_path / "backups"
    segments = pg_wal(tmp_path, 12)
    other = tmp_path / "other" / segments[0].name
    other.parent.mkdir()
    other.write_bytes(os.urandom(1 << 16))
    archive = wal.WalArchive(LocalStorage(repo))
    wal.push(archive, other)  # another cluster's file of the same name is archived
    with pytest.raises(IntegrityError, match="different content"):
        wal_ahead.push(archive, segments[0])
    # the ones already queued finish (each durable before its marker), no more are started
    marked = sorted(p.name for p in (repo / wal_ahead.MARKERS).iterdir())
    assert len(marked) <= wal_ahead.WORKERS + 1
    assert wal.archived(LocalStorage(repo)) == sorted([segments[0].name, *marked])
