"""One lock per repository: a live holder blocks, a dead one never does and is reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safehold.errors import LockBusy
from safehold.lock import repository_lock

HOLDER = """
import sys, time
from pathlib import Path
from safehold.lock import repository_lock
with repository_lock(Path(sys.argv[1]), exclusive=True, timeout=5, purpose="test holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def hold(root: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_clearly_naming_the_holder(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    try:
        started = time.monotonic()
        with (
            pytest.raises(LockBusy) as caught,
            repository_lock(tmp_path, exclusive=True, timeout=0.5, purpose="second"),
        ):
            pass
        assert time.monotonic() - started >= 0.5  # it waited before giving up
        assert f"pid {holder.pid}" in caught.value.message
        assert "test holder" in caught.value.message
        with (
            pytest.raises(LockBusy),
            repository_lock(tmp_path, exclusive=False, timeout=0.2, purpose="reader"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_is_free_and_reported_stale(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with repository_lock(tmp_path, exclusive=True, timeout=0, purpose="after") as info:
        assert info.stale_pid == holder.pid


def test_readers_share_and_clean_exit_leaves_no_stale_record(tmp_path: Path) -> None:
    with (
        repository_lock(tmp_path, exclusive=False, timeout=0, purpose="r1"),
        repository_lock(tmp_path, exclusive=False, timeout=0, purpose="r2"),
    ):
        pass
    with repository_lock(tmp_path, exclusive=True, timeout=0, purpose="w") as info:
        assert info.stale_pid is None
    with repository_lock(tmp_path, exclusive=True, timeout=0, purpose="w2") as info:
        assert info.previous is None  # a clean release clears the holder record
