"""A tree restore killed halfway, and two at once into one folder: never a half tree at dest.

The restore runs in a child process, opened as a restore host does (the identity only), and is
killed while its staging folder fills; then the next restore into the same folder runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from safehold.chunkstore import ChunkStore
from safehold.chunkstore.trees import backup_tree, restore_tree
from safehold.errors import UsageError

from . import tree_support
from .test_chunkstore_trees import make_store

FILES = 3000  # small files: creating them is most of a restore's time, so a kill lands inside

CHILD = """
import sys
from pathlib import Path
from safehold import _proc
from safehold.chunkstore import ChunkStore
from safehold.chunkstore.trees import restore_tree
from safehold.crypto import DecryptionKey
from safehold.storage import LocalStorage
_proc.handle_interrupts()  # as the command line does: SIGTERM cleans up
repo, identity, snapshot, dest = sys.argv[1:]
store = ChunkStore.open(LocalStorage(Path(repo)), decryption=DecryptionKey(identities=(identity,)))
restore_tree(store, snapshot, Path(dest))
"""


def small_files(root: Path) -> None:
    for number in range(FILES):
        folder = root / f"d{number % 30:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{number:05d}.txt").write_bytes(os.urandom(2048) + str(number).encode())


def staged_files(dest: Path) -> int:
    return sum(
        len(files)
        for staging in dest.parent.glob(f".{dest.name}.safehold-restore-*")
        for _, _, files in os.walk(staging)
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_restore_leaves_no_half_tree_and_the_next_one_restores(
    tmp_path: Path, sig: signal.Signals
) -> None:
    store = make_store(tmp_path / "store")
    source = tmp_path / "source"
    small_files(source)
    snapshot_id = backup_tree(store, source, "t").id
    identity = (tmp_path / "store" / "identity.txt").read_text().splitlines()[-1]
    dest = tmp_path / "restored"
    argv = [sys.executable, "-c", CHILD, str(tmp_path / "store" / "repo"), identity]
    child = subprocess.Popen([*argv, snapshot_id, str(dest)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while staged_files(dest) < FILES // 10 and child.poll() is None:
        assert time.monotonic() < deadline, "the restore never started writing"
        time.sleep(0.005)
    assert child.poll() is None, "the restore ended before it could be killed"
    child.send_signal(sig)
    child.wait(30)
    assert child.returncode != 0
    assert not dest.exists()  # the tree is built aside and renamed in whole, or not at all
    if sig == signal.SIGTERM:  # cleaned up by the run itself
        assert staged_files(dest) == 0
    restore_tree(store, snapshot_id, dest)
    assert tree_support.snapshot(dest, exact=True) == tree_support.snapshot(source, exact=True)


def test_two_restores_into_one_folder_at_once(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    source = tmp_path / "source"
    small_files(source)
    snapshot_id = backup_tree(store, source, "t").id
    dest = tmp_path / "restored"
    outcomes: list[object] = []

    def run(reader: ChunkStore) -> None:
        try:
            outcomes.append(restore_tree(reader, snapshot_id, dest).files)
        except UsageError as exc:
            outcomes.append(exc)

    readers = [
        ChunkStore.open(store.storage, host_key=store.host_key, decryption=store.decryption)
        for _ in range(2)
    ]
    threads = [threading.Thread(target=run, args=(reader,)) for reader in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    restored = [o for o in outcomes if isinstance(o, int)]
    refused = [o for o in outcomes if isinstance(o, UsageError)]
    # One wins; the other is refused (before it starts, or at its rename), never a mix.
    assert restored == [FILES] and len(refused) == 1, outcomes
    assert "refusing to restore" in refused[0].message
    assert tree_support.snapshot(dest, exact=True) == tree_support.snapshot(source, exact=True)
    assert staged_files(dest) == 0
