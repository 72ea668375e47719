"""Exports out of the chunk store: a tree snapshot as the tar backup's ``.tar.gz`` (read by GNU
tar, byte for byte the archive ``write_tree`` makes of the same folder), and a stream snapshot
(a real ``pg_dump -Fc -Z0`` of the sandbox database) back byte for byte."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
from pathlib import Path

import pytest

from safehold.chunkstore import ChunkStore
from safehold.chunkstore.trees import (
    backup_stream,
    backup_tree,
    export_stream,
    export_tar_gz,
    restore_tree,
    stream_meta,
)
from safehold.errors import IntegrityError
from safehold.sources.postgres import PgTarget
from safehold.sources.tar.tree import write_tree

from .conftest import execute
from .test_chunkstore_trees import MiB, crafted, evil_file, make_store, make_tree, root_entry
from .test_chunkstore_trees import snapshot as tree_snapshot
from .tree_support import gnu_extract


@pytest.fixture
def store(tmp_path: Path) -> ChunkStore:
    return make_store(tmp_path / "store")


def seconds(tree: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    """The tree with mtimes in whole seconds: what a GNU-format tar header keeps."""
    return {k: (*v[:4], v[4] // 1_000_000_000, *v[5:]) for k, v in tree.items()}  # type: ignore[operator]


def test_export_is_the_tar_backup_and_gnu_tar_extracts_what_restore_makes(
    store: ChunkStore, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    make_tree(source)
    info = backup_tree(store, source, "vol")
    archive = tmp_path / "vol.tar.gz"
    with archive.open("wb") as out:
        facts = export_tar_gz(store, info.id, out)

    subprocess.run(["gzip", "-t", str(archive)], check=True)
    plain = gzip.decompress(archive.read_bytes())
    assert len(plain) == facts.archive and len(plain) % 10240 == 0
    direct = io.BytesIO()
    write_tree(source, direct)
    assert plain == direct.getvalue()  # header for header, byte for byte

    listed = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, check=True)
    names = listed.stdout.decode("utf-8", "surrogateescape").splitlines()
    assert names[0] == "./" and len(names) == facts.members == len(tree_snapshot(source))

    by_tar = gnu_extract(archive, tmp_path / "by-tar")
    restored = tmp_path / "restored"
    restore_tree(store, info.id, restored)
    assert seconds(tree_snapshot(by_tar)) == seconds(tree_snapshot(restored))
    assert tree_snapshot(restored) == tree_snapshot(source)  # and restore keeps nanoseconds
    assert os.lstat(by_tar / "sparse.img").st_blocks * 512 < 2 * MiB  # GNU tar kept the holes


def test_export_refuses_a_hostile_tree(store: ChunkStore, tmp_path: Path) -> None:
    snapshot_id = crafted(store, [root_entry(), evil_file("../escape")])
    sink = io.BytesIO()
    with pytest.raises(IntegrityError, match="climbs out"):
        export_tar_gz(store, snapshot_id, sink)
    assert sink.getvalue() == b""  # refused before the first byte


def dump(db: PgTarget, path: Path) -> bytes:
    subprocess.run(
        [db.tool("pg_dump"), "-Fc", "-Z0", "-f", str(path), db.dbname],
        env={**os.environ, **db.env()},
        check=True,
    )
    return path.read_bytes()


def test_a_dump_comes_back_byte_for_byte_and_pg_restore_reads_it(
    store: ChunkStore, db: PgTarget, tmp_path: Path
) -> None:
    execute(
        db,
        "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS hash, repeat('x', g % 300) AS pad "
        "FROM generate_series(1, 100000) AS g",
    )
    first = dump(db, tmp_path / "first.dump")
    with (tmp_path / "first.dump").open("rb") as reader:
        info = backup_stream(store, reader, "db", {"tool": "pg_dump -Fc -Z0"})
    assert info.kind == "stream" and info.stats["bytes"] == len(first) > 5 * MiB
    assert stream_meta(store, info.id) == {"tool": "pg_dump -Fc -Z0"}

    exported = tmp_path / "exported.dump"
    with exported.open("wb") as out:
        assert export_stream(store, info.id, out) == len(first)
    assert exported.read_bytes() == first
    listing = subprocess.run(
        [db.tool("pg_restore"), "--list", str(exported)], capture_output=True, check=True
    )
    assert b"TABLE DATA public bulk" in listing.stdout

    # One row changed: the next night's dump shares nearly all its chunks with this one.
    execute(db, "UPDATE bulk SET hash = 'changed' WHERE id = 50000")
    second = dump(db, tmp_path / "second.dump")
    with (tmp_path / "second.dump").open("rb") as reader:
        again = backup_stream(store, reader, "db", {})
    assert again.stats["new_bytes"] < len(second) // 10
    out_buffer = io.BytesIO()
    export_stream(store, again.id, out_buffer)
    assert out_buffer.getvalue() == second


def test_export_stream_refuses_a_tree_snapshot(store: ChunkStore, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    info = backup_tree(store, source, "vol")
    with pytest.raises(IntegrityError, match="not a stream"):
        export_stream(store, info.id, io.BytesIO())
