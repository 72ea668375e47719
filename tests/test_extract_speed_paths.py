"""The fast paths of a volume restore (issue 13) fail and order things as the one-thread
extraction did: the read-ahead thread that reads, hashes and decompresses (its errors, its end,
a truncated or damaged stream: the same IntegrityError), and the threads that create the files
(their errors, replaced members and hardlinks to them, the name filter's look-ups on disk).
Trees are compared with what GNU tar extracts from the same archive (run as root).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.compress.gzip import open_decompressor
from safehold.compress.threaded import CHUNK, ReadAhead
from safehold.errors import IntegrityError, RestoreError
from safehold.model import Event
from safehold.operations.volumes.extract import extract_tree, remove_tree
from safehold.operations.volumes.folder import backup_tree, restore_tree
from safehold.sources.tar import jobs as extract_jobs
from safehold.sources.tar.headers import header
from safehold.storage import LocalStorage

from .conftest import ROOT
from .test_tree import EVIL, backup, beside, evil_archive, make_tree, snapshot

MiB = 1 << 20


def our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("safehold-")]


# ---- the read-ahead thread ----------------------------------------------------------------


class Failing:
    """``good`` bytes in pieces of 100,000, then ``error`` raised from read."""

    def __init__(self, good: bytes, error: BaseException) -> None:
        self._good = io.BytesIO(good)
        self._error = error

    def read(self, size: int = -1) -> bytes:
        data = self._good.read(min(size, 100_000))
        if not data:
            raise self._error
        return data


class Endless:
    def __init__(self) -> None:
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        return b"z" * size


def test_read_ahead_gives_every_byte_in_order_then_the_end() -> None:
    data = os.urandom(3 * CHUNK + 5)
    got = []
    with ReadAhead(io.BytesIO(data), depth=2) as ahead:
        for size in (1, 511, CHUNK, 7, 3 * CHUNK):
            got.append(ahead.read(size))
        while piece := ahead.read(CHUNK):
            got.append(piece)
        assert ahead.read(CHUNK) == ahead.read(1) == b""  # the end, again and again
    assert b"".join(got) == data
    assert [len(p) for p in got[:3]] == [1, 511, CHUNK - 512]  # one chunk at a time
    assert our_threads() == []


def test_read_ahead_raises_the_sources_error_after_the_bytes_before_it() -> None:
    good = os.urandom(250_000)
    with ReadAhead(Failing(good, ValueError("bad block")), chunk=64 * 1024) as ahead:
        seen = b""
        with pytest.raises(ValueError, match="bad block"):
            while True:
                seen += ahead.read(1000)
        assert seen == good
        with pytest.raises(ValueError, match="bad block"):  # and again: no silent end
            ahead.read(1)
    assert our_threads() == []


def test_closing_stops_the_thread_even_while_it_waits_for_room() -> None:
    source = Endless()
    with ReadAhead(source, chunk=1000, depth=2) as ahead:
        assert ahead.read(10) == b"z" * 10
        time.sleep(0.2)  # the queue is full: the thread waits to put the next chunk
    reads = source.reads
    time.sleep(0.2)
    assert source.reads == reads <= 5
    assert our_threads() == []


def test_readinto_fills_buffers_with_the_same_bytes() -> None:
    data = os.urandom(2 * CHUNK + 99)
    buffer = bytearray(300_000)
    got = bytearray()
    with ReadAhead(io.BytesIO(data)) as ahead:
        while count := ahead.readinto(memoryview(buffer)):
            got += buffer[:count]
    assert got == data


def test_finish_reads_to_the_end_and_hands_the_source_back() -> None:
    raw = io.BytesIO(os.urandom(5 * CHUNK))
    ahead = ReadAhead(raw)
    ahead.read(10)
    ahead.finish()
    assert raw.tell() == len(raw.getvalue())
    assert our_threads() == []


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_damaged_stream_is_the_same_integrity_error_through_the_thread(
    tmp_path: Path, kind: str
) -> None:
    make_tree(tmp_path / "source")
    data = backup(tmp_path / "source", kind)
    middle = len(data) // 2
    flipped = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
    target = tmp_path / "volume"
    target.mkdir()
    (target / "keep.txt").write_text("precious\n")
    around = beside(tmp_path)
    for broken in (data[:middle], data[: len(data) - 3], flipped, b"not compressed at all"):
        said = []
        for threaded in (False, True):
            stream = open_decompressor(kind, io.BytesIO(broken))
            try:
                with ReadAhead(stream) if threaded else contextlib.nullcontext(stream) as source:
                    extract_tree(source, tmp_path / "out")
            except IntegrityError as exc:
                assert "damaged" in exc.message
                said.append(exc.message)
                assert beside(tmp_path) == around
            else:  # zstd frames carry no checksum here: the manifest's sha256 catches that
                said.append("restored")
                remove_tree(tmp_path / "out")
        assert said[0] == said[1]
        if broken is not flipped and broken[:-3] != data[:-6]:
            assert said[0] != "restored"
    assert our_threads() == []


# ---- through restore_tree: hashing, progress, cleanup ---------------------------------------


@pytest.fixture(params=["gzip", "zstd"])
def backed_up(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[LocalStorage, Path, str]]:
    make_tree(tmp_path / "source")
    storage = LocalStorage(tmp_path / "repo")
    manifest = backup_tree(tmp_path / "source", "appdata", storage, compression=request.param)
    yield storage, storage.path(manifest.artifact), manifest.artifact


def test_progress_is_told_on_the_restoring_thread_up_to_the_whole_file(
    tmp_path: Path, backed_up: tuple[LocalStorage, Path, str]
) -> None:
    storage, path, name = backed_up
    told: list[tuple[Event, str]] = []
    restore_tree(
        storage,
        name,
        tmp_path / "restored",
        sink=lambda e: told.append((e, threading.current_thread().name)),
    )
    progress = [(e, who) for e, who in told if e.kind == "progress"]
    assert progress and {who for _, who in told} == {threading.current_thread().name}
    assert progress[-1][0].data["final"] and progress[-1][0].data["done"] == path.stat().st_size
    assert snapshot(tmp_path / "restored") == snapshot(tmp_path / "source")


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_backup_is_refused_with_its_digest_and_leaves_no_thread(
    tmp_path: Path, backed_up: tuple[LocalStorage, Path, str], damage: str
) -> None:
    storage, path, name = backed_up
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(
        data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        if damage == "flipped"
        else data[:middle]
    )
    target = tmp_path / "volume"
    target.mkdir()
    (target / "keep.txt").write_text("precious\n")
    before = snapshot(target)
    with pytest.raises(IntegrityError, match="sha256" if damage == "flipped" else "bytes on disk"):
        restore_tree(storage, name, target)
    assert snapshot(target) == before
    assert our_threads() == []


# ---- the file-creating threads ---------------------------------------------------------------


def gnu_tar(archive: bytes, target: Path) -> None:
    target.mkdir()
    subprocess.run(
        ["tar", "--numeric-owner", "-xpf", "-", "-C", str(target)], input=archive, check=True
    )


def tricky_archive() -> bytes:
    """Several batches of files, big and small; members replaced later (a file by a file, a
    symlink by a file, a file by a folder) with hardlinks made to the first version; members
    before their folder; folders listed after their content."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:

        def add(
            name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = ""
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = kind, link, 1_500_000_000 + len(name)
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o640
            info.uid, info.gid = 1000 + len(name) % 7, 2000
            tar.addfile(info, io.BytesIO(data))

        add("./", tarfile.DIRTYPE)
        add("./late/deep/first.txt", data=b"before its folders\n")
        for n in range(700):
            size = (3 * MiB + n) if n % 150 == 0 else n * 37 % 5000
            add(f"./many/d{n % 9}/f{n:04d}", data=os.urandom(size))
        add("./many/d1/f0001", data=b"second version\n")
        add("./h1", tarfile.LNKTYPE, link="./many/d2/f0002")
        add("./many/d2/f0002", data=b"replaced after a hardlink was made to it\n")
        add("./s", tarfile.SYMTYPE, link="many/d3")
        add("./s", data=b"a file now\n")
        add("./x", data=b"was a file\n")
        add("./x", tarfile.DIRTYPE)
        add("./x/in", data=b"inside\n")
        add("./h2", tarfile.LNKTYPE, link="./many/d4/f0004")
        add("./many/d5/link", tarfile.SYMTYPE, link="f0014")  # no "..": tar delays those
        for folder in ("./late", "./late/deep", "./many", *(f"./many/d{n}" for n in range(9))):
            add(folder, tarfile.DIRTYPE)  # after their content: their mtimes are set last
    return buffer.getvalue()


def test_threads_give_what_gnu_tar_gives(tmp_path: Path) -> None:
    archive = tricky_archive()
    gnu_tar(archive, tmp_path / "gnu")
    facts = extract_tree(io.BytesIO(archive), tmp_path / "ours")
    assert snapshot(tmp_path / "ours") == snapshot(tmp_path / "gnu")
    assert (facts.files, facts.hardlinks, facts.symlinks) == (
        706,
        2,
        2,
    )  # every file member, replaced ones too


@pytest.fixture
def always_maybe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name filter of 8 bits: every name seems made already, so every member takes the path
    that waits for the threads and asks the disk."""
    monkeypatch.setattr(extract_jobs.Names, "BITS", 8)


@pytest.mark.usefixtures("always_maybe")
def test_a_name_filter_that_always_says_maybe_changes_nothing(tmp_path: Path) -> None:
    archive = tricky_archive()
    gnu_tar(archive, tmp_path / "gnu")
    extract_tree(io.BytesIO(archive), tmp_path / "ours")
    assert snapshot(tmp_path / "ours") == snapshot(tmp_path / "gnu")


@pytest.mark.usefixtures("always_maybe")
@pytest.mark.parametrize("case", sorted(EVIL))
def test_unsafe_archives_are_refused_whatever_the_filter_says(tmp_path: Path, case: str) -> None:
    target = tmp_path / "volume"
    (target / "sub").mkdir(parents=True)
    (target / "keep.txt").write_text("precious\n")
    before, around = snapshot(target), beside(tmp_path)
    with pytest.raises(IntegrityError) as caught:
        extract_tree(io.BytesIO(evil_archive(*EVIL[case])), target)
    assert repr(EVIL[case][-1][0].name) in caught.value.message
    assert snapshot(target) == before
    assert beside(tmp_path) == around


def test_an_error_on_a_creating_thread_is_a_restore_error_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fchmod

    def fchmod(fd: int, mode: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/f0350"):
            raise OSError(errno.EIO, "Input/output error")
        real(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod)
    target = tmp_path / "volume"
    target.mkdir()
    (target / "keep.txt").write_text("precious\n")
    before, around = snapshot(target), beside(tmp_path)
    with pytest.raises(RestoreError, match="Input/output error"):
        extract_tree(io.BytesIO(tricky_archive()), target)
    assert snapshot(target) == before
    assert beside(tmp_path) == around
    assert our_threads() == []


def test_memory_stays_bounded_for_many_small_files(tmp_path: Path) -> None:
    """File data waits in the threads' queue up to a bound, not the whole archive."""
    script = textwrap.dedent(
        """
        import io, sys, tarfile
        from pathlib import Path
        from safehold.compress.threaded import ReadAhead
        from safehold.operations.volumes.extract import extract_tree

        def status_mb(key):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024

        class Archive:  # 1,200 files of 200 kB made on the fly, never all in memory
            def __init__(self):
                self.members = iter(range(1200))
                self.buffer = b""
            def read(self, size=-1):
                while len(self.buffer) < size and self.members is not None:
                    n = next(self.members, None)
                    if n is None:
                        self.buffer += b"\\0" * 1024  # the end-of-archive blocks
                        self.members = None
                        break
                    info = tarfile.TarInfo(f"./f{n}")
                    info.size = 200_000
                    data = bytes([n % 251]) * info.size
                    self.buffer += info.tobuf(tarfile.GNU_FORMAT) + data + b"\\0" * (
                        -info.size % 512
                    )
                out, self.buffer = self.buffer[:size], self.buffer[size:]
                return out

        Path("/proc/self/clear_refs").write_text("5")
        base = status_mb("VmRSS")
        with ReadAhead(Archive()) as stream:
            facts = extract_tree(stream, Path(sys.argv[1]) / "out")
        print(facts.files, facts.bytes, status_mb("VmHWM") - base)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    files, size, growth = result.stdout.split()
    assert (int(files), int(size)) == (1200, 1200 * 200_000)
    assert float(growth) < 80, result.stdout


# ---- the header fast path ----------------------------------------------------------------------


def parsed(parse: object, block: bytes) -> object:
    assert callable(parse)
    try:
        info = parse(block)
    except tarfile.HeaderError as exc:
        return type(exc).__name__
    return {slot: getattr(info, slot, None) for slot in tarfile.TarInfo.__slots__}


def frombuf(block: bytes) -> tarfile.TarInfo:
    return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")


def mangled(block: bytes, rng: random.Random) -> Iterator[bytes]:
    """The block with a byte changed; with base-256, blank and spaced numbers; with a byte
    above 127 and the checksum that signed-char tars write."""
    flipped = bytearray(block)
    flipped[rng.randrange(512)] ^= 1 << rng.randrange(8)
    yield bytes(flipped)
    for start, width in ((100, 8), (108, 8), (124, 12), (136, 12), (329, 8)):
        for field in (b"\x80" + bytes(width - 1), b" " * width, b" 17 \0".ljust(width, b"\0")):
            yield block[:start] + field + block[start + width :]
    high = bytearray(block)
    high[rng.randrange(1, 100)] = 0xE9
    signed = 256 + sum(b - 256 if b > 127 else b for b in high[:148] + high[156:])
    high[148:156] = b"%06o\0 " % (signed & 0o777777)
    yield bytes(high)


def test_the_header_fast_path_reads_what_frombuf_reads(tmp_path: Path) -> None:
    make_tree(tmp_path / "source")
    archives = []
    for form in ("gnu", "oldgnu", "v7", "ustar", "posix"):
        out = tmp_path / f"{form}.tar"
        sparse = ["--sparse"] if form in ("gnu", "oldgnu", "posix") else []
        done = subprocess.run(
            ["tar", f"--format={form}", *sparse, "-cf", str(out), "-C", str(tmp_path), "source"],
            capture_output=True,
        )
        assert done.returncode == 0 or form in ("v7", "ustar")  # some names do not fit: skipped
        archives.append(out.read_bytes())
    archives += [tricky_archive()[: 64 * 512]]
    rng = random.Random(13)
    compared = 0
    for archive in archives:
        for start in range(0, len(archive), 512):
            block = archive[start : start + 512]
            if len(block) < 512 or not any(block):
                continue
            is_header = isinstance(parsed(frombuf, block), dict)  # else file data: as it is
            for candidate in (block, *mangled(block, rng)) if is_header else (block,):
                if any(candidate):
                    assert parsed(header, candidate) == parsed(frombuf, candidate), candidate
                    compared += 1
    assert compared > 3000
