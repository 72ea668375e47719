"""Data offsets of pg_dump custom archives (issue 13): safehold fills in what pg_dump leaves
unset when it writes to a pipe -- exactly what pg_dump writes when it can seek -- and refuses
what it does not understand, leaving the file as it is. Backups made by pg_dump into the
repository file carry the offsets and a checksum of those final bytes; restores of zstd,
encrypted and older gzip backups fill them in their verified copy; a backup restored in place
is hashed beside pg_restore and refused before the swap when it is damaged."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
import subprocess
from pathlib import Path

import blake3
import pytest

from safehold import catalog
from safehold.crypto import EncryptionKey, generate_keypair, load_decryption_key
from safehold.errors import IntegrityError, StorageFull
from safehold.model import Event, Manifest
from safehold.operations import journal
from safehold.operations.database.backup import BackupOptions, backup_database
from safehold.operations.database.restore import RestoreOptions, restore_database
from safehold.sources import pg_custom_toc as toc_mod
from safehold.sources.postgres import PgTarget, connect
from safehold.storage import LocalStorage

from .conftest import databases, execute, fingerprint
from .mounts import tmpfs
from .test_backup_restore import mutate


def tool_env(target: PgTarget) -> dict[str, str]:
    return {**os.environ, **target.env(), "LC_MESSAGES": "C"}


def pg_dump_piped(target: PgTarget, out: Path, *args: str) -> Path:
    """``pg_dump -Fc | cat > out``: written to a pipe, so without data offsets."""
    made = subprocess.run(
        ["pg_dump", "-Fc", *args, target.dbname], env=tool_env(target), capture_output=True
    )
    assert made.returncode == 0, made.stderr
    out.write_bytes(made.stdout)
    return out


def pg_dump_file(target: PgTarget, out: Path, *args: str) -> Path:
    """``pg_dump -Fc -f out``: pg_dump seeks back and writes the offsets itself."""
    argv = ["pg_dump", "-Fc", *args, "--file", str(out), target.dbname]
    subprocess.run(argv, env=tool_env(target), check=True, capture_output=True)
    return out


def listing(archive: Path) -> list[str]:
    out = subprocess.run(["pg_restore", "--list", str(archive)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if not line.startswith("; Archive created")]


def offsets(archive: Path) -> dict[int, tuple[int, int]]:
    return {e.dump_id: (e.state, e.offset) for e in toc_mod.read_toc_of(archive).data_entries}


def large_objects(target: PgTarget, dbname: str | None = None) -> dict[int, str]:
    with connect(target, dbname, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1"
        ).fetchall()
    return {int(oid): str(digest) for oid, digest in rows}


def awkward_content(target: PgTarget, large: bool = True) -> None:
    """Large objects whose bytes look like block ends and headers (zero runs, then a block
    type and an id), and COPY text holding the control bytes the block search looks for."""
    if large:
        execute(target, "SELECT lo_from_bytea(0, '\\x00000000000103000000000000000000'::bytea)")
        execute(target, "SELECT lo_from_bytea(0, convert_to(repeat('payload ', 40000), 'UTF8'))")
    execute(target, "CREATE TABLE app.odd (t text)")
    execute(
        target, "INSERT INTO app.odd SELECT chr(1) || chr(3) || g FROM generate_series(1, 500) g"
    )


@pytest.mark.parametrize("level", ["gzip", "none"])
def test_filled_offsets_are_the_ones_pg_dump_writes_and_restore_the_same_database(
    db: PgTarget, tmp_path: Path, level: str
) -> None:
    awkward_content(db)
    args = [] if level == "gzip" else ["-Z0"]
    own = pg_dump_file(db, tmp_path / "own.dump", *args)
    piped = pg_dump_piped(db, tmp_path / "piped.dump", *args)
    before = piped.read_bytes()
    toc = toc_mod.read_toc_of(piped)
    assert toc.offsets_missing and toc.compression == (1 if level == "gzip" else 0)
    listed = listing(piped)

    fixed = toc_mod.fix(piped)

    assert fixed.written == fixed.blocks == len(toc.data_entries) >= 6
    assert {e.desc for e in toc.data_entries} == {"TABLE DATA", "BLOBS"}
    assert offsets(piped) == offsets(own)
    assert all(state == toc_mod.POS_SET for state, _ in offsets(piped).values())
    after = piped.read_bytes()
    assert len(after) == len(before)
    fields = [range(e.field_at, e.field_at + 1 + toc.off_size) for e in toc.entries]
    changed = [i for i in range(toc.data_start) if before[i] != after[i]]
    assert changed and all(any(i in f for f in fields) for i in changed)
    assert after[toc.data_start :] == before[toc.data_start :]
    assert listing(piped) == listed

    copy = f"{db.dbname}_fixed"
    execute(db, f"CREATE DATABASE {copy}", "postgres")
    restored = subprocess.run(
        ["pg_restore", "-j2", "--exit-on-error", "--dbname", copy, str(piped)],
        env=tool_env(db),
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(db, copy) == fingerprint(db)
    assert large_objects(db, copy) == large_objects(db)


def test_the_block_search_while_unpacking_agrees_with_the_chunk_walk(
    db: PgTarget, tmp_path: Path
) -> None:
    """Uncompressed table data is found by a search for each block's end as the bytes go by;
    the walk over every chunk (what ``fix`` does) must find the very same blocks, wherever the
    pieces are cut. Large objects or compressed data: the search declines and says why."""
    awkward_content(db)
    data = pg_dump_piped(db, tmp_path / "tables.dump", "-Z0", "--no-blobs").read_bytes()
    walked = toc_mod.block_positions(data, toc_mod.read_toc(data))
    assert len(walked) >= 5
    for cuts in ([1 << 20], [4093], [1, 5, 6, 7, 11, 64]):
        finder, pos = toc_mod.BlockFinder(), 0
        for size in itertools.cycle(cuts):
            if pos >= len(data):
                break
            finder.feed(data[pos : pos + size])
            pos += size
        found = finder.result()
        assert found is not None and found[1] == walked, (cuts, finder.failed)
    for start in walked.values():
        for cut in range(start - 7, start + 8):
            finder = toc_mod.BlockFinder()
            for piece in (data[:cut], data[cut : cut + 3], data[cut + 3 :]):
                finder.feed(piece)
            assert (found := finder.result()) is not None and found[1] == walked, cut
    finder = toc_mod.BlockFinder()
    finder.feed(data[:-1])
    assert finder.result() is None  # cut short: the last block does not end the stream
    for args in (["-Z0"], []):
        finder = toc_mod.BlockFinder()
        finder.feed(pg_dump_piped(db, tmp_path / "other.dump", *args).read_bytes())
        assert finder.result() is None
        assert "compressed data or large objects" in str(finder.failed)


def test_what_it_does_not_understand_is_refused_and_left_as_it_is(
    db: PgTarget, tmp_path: Path
) -> None:
    piped = pg_dump_piped(db, tmp_path / "piped.dump")
    whole = piped.read_bytes()
    data_start = toc_mod.read_toc_of(piped).data_start
    cases = {
        "empty": b"",
        "plain SQL": b"-- PostgreSQL database dump\nSELECT 1;\n",
        "cut in the data": whole[: (data_start + len(whole)) // 2],
        "cut in the TOC": whole[: data_start // 2],
        "newer version": whole[:6] + bytes([99]) + whole[7:],
        "a wrong block": whole[:data_start] + b"\x07" + whole[data_start + 1 :],
    }
    for what, content in cases.items():
        path = tmp_path / what.replace(" ", "-")
        path.write_bytes(content)
        with pytest.raises(toc_mod.NotUnderstood):
            toc_mod.fix(path)
        assert path.read_bytes() == content, what
    tar = pg_dump_file(db, tmp_path / "tar.dump", "-Ft")
    with pytest.raises(toc_mod.NotUnderstood, match="PGDMP"):
        toc_mod.fix(tar)

    own = pg_dump_file(db, tmp_path / "own.dump")
    kept = own.read_bytes()
    assert toc_mod.fix(own).written == 0 and own.read_bytes() == kept


def test_a_gzip_backup_has_the_offsets_and_the_checksum_of_its_final_bytes(
    db: PgTarget, repo: LocalStorage
) -> None:
    manifest = backup_database(db, repo)

    path = repo.path(manifest.artifact)
    assert all(state == toc_mod.POS_SET for state, _ in offsets(path).values())
    content = path.read_bytes()
    assert manifest.sha256 == hashlib.sha256(content).hexdigest()
    assert manifest.size == len(content) == manifest.facts["dump_bytes"]
    assert not [p.name for p in repo.root.iterdir() if "partial" in p.name]


def as_older_gzip(db: PgTarget, repo: LocalStorage, manifest: Manifest) -> None:
    """The artifact as safehold wrote it before pg_dump wrote the file itself: piped."""
    path = pg_dump_piped(db, repo.path(manifest.artifact))
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()  # and no BLAKE3: older manifests lack it
    older = dataclasses.replace(manifest, sha256=digest, size=len(data), blake3=None)
    catalog.write_manifest(repo, older)


@pytest.mark.parametrize("kind", ["zstd", "zstd with large objects", "encrypted", "older gzip"])
def test_restores_fill_in_the_offsets_of_backups_written_through_a_pipe(
    db: PgTarget, repo: LocalStorage, tmp_path: Path, kind: str
) -> None:
    options = BackupOptions()
    key = None
    if kind.startswith("zstd"):
        options = BackupOptions(compression="zstd")
    if kind == "zstd with large objects":  # found after the unpacking, by the chunk walk
        awkward_content(db)
    if kind == "encrypted":
        public = generate_keypair(tmp_path / "id.txt")
        options = BackupOptions(encryption=EncryptionKey(recipients=(public,)))
        key = load_decryption_key(identity_file=tmp_path / "id.txt")
    manifest = backup_database(db, repo, options)
    if kind == "older gzip":
        as_older_gzip(db, repo, manifest)
    stored = repo.path(manifest.artifact).read_bytes()
    before, objects = fingerprint(db), large_objects(db)
    mutate(db)
    events: list[Event] = []

    restore_database(db, repo, "latest", RestoreOptions(decryption=key), sink=events.append)

    assert fingerprint(db) == before
    assert large_objects(db) == objects
    assert any("filled in" in e.message and "data offsets" in e.message for e in events)
    assert repo.path(manifest.artifact).read_bytes() == stored  # only the copy was changed
    assert journal.entries(repo) == []
    assert not list(repo.path(".safehold/tmp").iterdir())


@pytest.mark.parametrize(
    ("kind", "where"),
    [("gzip", "data"), ("gzip", "toc"), ("zstd", "data"), ("older gzip", "data")],
)
def test_a_damaged_backup_is_refused_before_the_swap(
    db: PgTarget, repo: LocalStorage, kind: str, where: str
) -> None:
    """The checksum (the manifest's BLAKE3, or the sha256 of an older manifest) is checked
    before pg_restore runs any SQL (it is computed beside createdb and the TOC's reading): a
    damaged file never reaches the live database, and the checksum is what the error says."""
    manifest = backup_database(
        db, repo, BackupOptions(compression="zstd" if kind == "zstd" else "gzip")
    )
    if kind == "older gzip":
        as_older_gzip(db, repo, manifest)
    path = repo.path(manifest.artifact)
    data = bytearray(path.read_bytes())
    at = len(data) * 3 // 4 if where == "data" else toc_mod.read_toc_of(path).data_start // 2
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    mutate(db)
    live = fingerprint(db)

    algorithm = "sha256" if kind == "older gzip" else "blake3"  # what the manifest has
    with pytest.raises(IntegrityError, match=f"is damaged: {algorithm}"):
        restore_database(db, repo, manifest.artifact, RestoreOptions(drop_previous=True))

    assert fingerprint(db) == live
    assert not [d for d in databases(db) if "staging" in d or "pre_restore" in d]
    assert journal.entries(repo) == []
    assert not list(repo.path(".safehold/tmp").glob("*"))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_the_restore_checks_the_blake3_the_backup_recorded(
    db: PgTarget, repo: LocalStorage, compression: str
) -> None:
    """A database backup records the BLAKE3 of its bytes beside their sha256, and a restore
    gates pg_restore on it: a manifest whose BLAKE3 is wrong (its sha256 right) is refused."""
    manifest = backup_database(db, repo, BackupOptions(compression=compression))  # type: ignore[arg-type]
    data = repo.path(manifest.artifact).read_bytes()
    assert manifest.blake3 == blake3.blake3(data).hexdigest()
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    catalog.write_manifest(repo, dataclasses.replace(manifest, blake3="0" * 64))
    mutate(db)
    live = fingerprint(db)

    with pytest.raises(IntegrityError, match="is damaged: blake3"):
        restore_database(db, repo, manifest.artifact, RestoreOptions(drop_previous=True))

    assert fingerprint(db) == live
    assert not [d for d in databases(db) if "staging" in d or "pre_restore" in d]
    assert journal.entries(repo) == []


def test_a_zstd_backup_records_the_offsets_pg_dump_writes_when_it_can_seek(
    db: PgTarget, repo: LocalStorage, tmp_path: Path
) -> None:
    """The offsets found as the piped dump goes by are those pg_dump itself writes into a file
    of the same dump; a restore writes them into its copy, and one that does not point at its
    block is not used: the blocks are looked for instead, and the restore is the same."""
    awkward_content(db, large=False)
    manifest = backup_database(db, repo, BackupOptions(compression="zstd"))
    own = pg_dump_file(db, tmp_path / "own.dump", "-Z0")
    assert {int(k): v for k, v in manifest.facts["data_offsets"].items()} == {
        dump_id: offset for dump_id, (_, offset) in offsets(own).items()
    }
    before = fingerprint(db)
    for shift, said in ((0, None), (1, "recorded data offsets not used")):
        shifted = {k: v + shift for k, v in manifest.facts["data_offsets"].items()}
        facts = {**manifest.facts, "data_offsets": shifted}
        catalog.write_manifest(repo, dataclasses.replace(manifest, facts=facts))
        mutate(db)
        events: list[Event] = []

        options = RestoreOptions(drop_previous=True)  # two restores may share a second
        restore_database(db, repo, manifest.artifact, options, sink=events.append)

        assert fingerprint(db) == before
        messages = [e.message for e in events]
        assert any(m.startswith("filled in") for m in messages), messages
        assert (said is None) != any(m.startswith(said or "-") for m in messages), messages


def test_a_full_disk_while_pg_dump_writes_is_a_storage_error(
    db: PgTarget, repo: LocalStorage
) -> None:
    execute(
        db,
        "CREATE TABLE app.big AS SELECT g, md5(g::text) || md5((-g)::text) AS t "
        "FROM generate_series(1, 100000) g",
    )  # fmt: skip  (6 MB of hex: about 3 MB once gzipped)
    with tmpfs(repo.root, "1m"):
        full = f"no space left on the device holding {re.escape(str(repo.root))}"
        with pytest.raises(StorageFull, match=full):
            backup_database(db, repo)
        names = [p.name for p in repo.root.rglob("*") if p.is_file()]
        assert not [n for n in names if n.startswith(("db_", ".db_")) or "partial" in n], names
