"""One chunk-store operation in a process of its own, so GNU time measures its peak memory.

    python -m bench._dedup_child init REPO KEYS
    python -m bench._dedup_child backup REPO KEYS SRC TARGET
    python -m bench._dedup_child restore REPO KEYS TARGET DEST [INCLUDE]
    python -m bench._dedup_child stream REPO KEYS TARGET < dump
    python -m bench._dedup_child export REPO KEYS TARGET OUT

KEYS is a folder holding the backup host's id key (``id.key``), the age identity
(``identity.txt``) and the host's cache (``cache/``). Backups open the store as the backup host
does: with the id key and the public recipient only. Restores open it as a restore host does:
with the identity alone (the id key comes from the repository).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from safehold.chunkstore import ChunkStore, HostKey
from safehold.chunkstore.trees import backup_stream, backup_tree, export_stream, restore_tree
from safehold.crypto.keys import (
    DecryptionKey,
    EncryptionKey,
    generate_keypair,
    load_decryption_key,
)
from safehold.storage import LocalStorage


def _backup_host(repo: Path, keys: Path) -> ChunkStore:
    return ChunkStore.open(
        LocalStorage(repo),
        host_key=HostKey.load(keys / "id.key"),
        encryption=EncryptionKey(recipients=_identity(keys).recipients),
        cache_dir=keys / "cache",
    )


class _Clear:
    """Stands in for the age writer of packs when SAFEHOLD_BENCH_PLAIN is set: a measurement of
    what encryption costs (the bench's "plain" column), never a mode of the product."""

    def __init__(self, out: Any, _key: object) -> None:
        self._out = out

    def __enter__(self) -> _Clear:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def write(self, data: bytes | memoryview) -> int:
        self._out.write(data)
        return len(data)

    def finish(self) -> None:
        return None


def _plain_packs() -> None:
    from safehold.chunkstore import packs

    # The module's own names, so write_pack and fetch_pack use these instead.
    packs.__dict__.update(AgeWriter=_Clear, open_age=lambda data, _key: data)


def main(argv: list[str]) -> int:
    if os.environ.get("SAFEHOLD_BENCH_PLAIN"):
        _plain_packs()
    command, repo, keys, *rest = argv
    repo_path, keys_path = Path(repo), Path(keys)
    if command == "init":
        keys_path.mkdir(parents=True, exist_ok=True)
        recipient = generate_keypair(keys_path / "identity.txt")
        host_key = HostKey.generate(keys_path / "id.key")
        ChunkStore.init(LocalStorage(repo_path), host_key, EncryptionKey(recipients=(recipient,)))
        return 0
    if command == "backup":
        source, target = rest
        store = _backup_host(repo_path, keys_path)
        info = backup_tree(store, Path(source), target, cache_dir=keys_path / "files")
        print(json.dumps({"snapshot": info.id}))
        return 0
    if command == "stream":
        (target,) = rest
        store = _backup_host(repo_path, keys_path)
        info = backup_stream(store, sys.stdin.buffer, target, {"tool": "pg_dump -Fc -Z0"})
        print(json.dumps({"snapshot": info.id}))
        return 0
    if command == "restore":
        target, dest, *include = rest
        store = _restore_host(repo_path, keys_path)
        newest = store.snapshots(target)[-1]
        facts = restore_tree(store, newest.id, Path(dest), include=include[0] if include else None)
        print(json.dumps(facts.to_json()))
        return 0
    if command == "export":
        target, out = rest
        store = _restore_host(repo_path, keys_path)
        with Path(out).open("wb") as sink:
            export_stream(store, store.snapshots(target)[-1].id, sink)
        return 0
    raise SystemExit(f"unknown command {command!r}")


def _restore_host(repo: Path, keys: Path) -> ChunkStore:
    return ChunkStore.open(LocalStorage(repo), decryption=_identity(keys))


def _identity(keys: Path) -> DecryptionKey:
    key = load_decryption_key(keys / "identity.txt", None, None, None)
    assert key is not None
    return key


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
