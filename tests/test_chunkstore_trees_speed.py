"""``restore --include`` of one small file from a 2 GiB snapshot: well under a second, reading
only the packs that hold its tree blob and its data (counted on a real local storage)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import blake3

from safehold.chunkstore import ChunkStore, HostKey
from safehold.chunkstore.trees import backup_tree, list_tree, restore_tree
from safehold.crypto import DecryptionKey, EncryptionKey
from safehold.crypto.keys import generate_keypair
from safehold.storage import LocalStorage

from .mounts import tmpfs

MiB = 1 << 20


class CountingStorage(LocalStorage):
    """A local storage that counts the packs read through it."""

    packs_read = 0

    def read_bytes(self, key: str) -> bytes:
        if key.startswith("chunks/packs/"):
            self.packs_read += 1
        return super().read_bytes(key)


def test_include_of_one_small_file_from_a_2_gib_snapshot_is_fast(tmp_path: Path) -> None:
    recipient = generate_keypair(tmp_path / "identity.txt")
    identity = (tmp_path / "identity.txt").read_text().splitlines()[-1]
    storage = CountingStorage(tmp_path / "repo")
    host = HostKey.generate(tmp_path / "id-key")
    ChunkStore.init(storage, host, EncryptionKey(recipients=(recipient,)))  # real sizes
    try:
        with tmpfs(tmp_path / "src", size="2200m") as source:
            for number in range(32):  # 32 x 64 MiB that nothing compresses or dedups
                folder = source / f"part{number:02}"
                folder.mkdir()
                data = blake3.blake3(b"%d" % number).digest(length=64 * MiB)
                (folder / "big.bin").write_bytes(data)
                for small in range(40):
                    (folder / f"note{small}.txt").write_text(f"note {number}/{small}\n" * 9)
            backup = ChunkStore.open(storage, host_key=host)
            info = backup_tree(backup, source, "big")
        assert info.stats["bytes"] > 2048 * MiB and info.stats["new_packs"] > 100

        storage.packs_read = 0
        started = time.perf_counter()
        restorer = ChunkStore.open(storage, decryption=DecryptionKey(identities=(identity,)))
        facts = restore_tree(restorer, info.id, tmp_path / "one", include="part17/note33.txt")
        took = time.perf_counter() - started
        restored = tmp_path / "one" / "part17" / "note33.txt"
        assert restored.read_text() == "note 17/33\n" * 9 and facts.files == 1
        assert took < 1.0, f"include took {took:.2f} s"  # issue 16: under 1 s
        assert storage.packs_read <= 2  # the tree blob's pack and the file's

        started = time.perf_counter()
        listed = list_tree(restorer, info.id, "part05", recursive=False)
        assert time.perf_counter() - started < 1.0
        assert len(listed) == 42 and listed[1]["path"] == "part05/big.bin"
    finally:
        shutil.rmtree(tmp_path / "repo", ignore_errors=True)  # 2 GiB not left in /tmp
