"""Folder backups: tree -> tar -> gzip/zstd -> safe extraction, on real files (run as root).

Trees are compared byte for byte with modes, numeric owners, whole-second mtimes (what a
GNU-format header keeps), symlink targets and hardlink groups; GNU tar reads the archives;
every kind of malicious archive is refused with the target left exactly as it was.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from safehold.compress.gzip import BLOCK, GzipWriter, open_compressor, open_decompressor
from safehold.errors import IntegrityError, UsageError
from safehold.model import Event
from safehold.operations.volumes.extract import ExtractFacts, extract_tree
from safehold.sources.tar.tree import TreeFacts, write_tree

from . import tree_support
from .conftest import ROOT
from .tree_support import gnu_extract

Snapshot = tree_support.Tree
MiB = 1 << 20


# ---- helpers ------------------------------------------------------------------------------


def snapshot(root: Path) -> Snapshot:
    """Every entry below root (and root itself, as '.'), without following symlinks."""
    return tree_support.snapshot(root)


def backup(root: Path, kind: str = "gzip", events: list[Event] | None = None) -> bytes:
    buffer = io.BytesIO()
    compressor = open_compressor(kind, buffer)
    facts = write_tree(root, compressor, events=(events.append if events is not None else _drop))
    compressor.finish()
    assert isinstance(facts, TreeFacts)
    return buffer.getvalue()


def restore(data: bytes, target: Path, kind: str = "gzip") -> ExtractFacts:
    return extract_tree(open_decompressor(kind, io.BytesIO(data)), target)


def beside(root: Path) -> Snapshot:
    """Everything in ``root`` but root's own entry, whose mtime staging folders change."""
    return {name: entry for name, entry in snapshot(root).items() if name != "."}


def _drop(event: Event) -> None:
    return None


def make_tree(root: Path) -> None:
    """Everything a volume can hold that tar keeps, with owners, modes and old mtimes."""
    tree_support.make_tree(
        root,
        _own_files,
        long_text="long names need GNU extensions\n",
        steps=(7_000_000_000, 3_000_000_000),
    )


def _own_files(root: Path) -> None:
    (root / "docs" / "block.bin").write_bytes(b"x" * 512)
    (root / "docs" / "deep" / "exact.bin").write_bytes(os.urandom(MiB))


def _walk(root: Path) -> list[tuple[Path, list[str], list[str]]]:
    return [(Path(p), d, d + f) for p, d, f in os.walk(root)]


# ---- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_round_trip_keeps_content_modes_owners_times_and_links(tmp_path: Path, kind: str) -> None:
    source = tmp_path / "source"
    make_tree(source)
    events: list[Event] = []
    data = backup(source, kind, events)
    target = tmp_path / "restored"  # does not exist yet: created by the restore
    facts = restore(data, target, kind)

    assert not events
    before, after = snapshot(source), snapshot(target)
    assert after == before
    assert after["./docs/a.txt"][1:4] == (0o644, 65534, 65534)
    assert after["./tool"][1] == 0o4755  # set-uid survives the chown
    assert after["./link-dir"][0] == ("link", "docs")
    assert os.lstat(target / "hard-a").st_ino == os.lstat(target / "docs/a.txt").st_ino
    regular = _regular_names(source)
    assert facts.files == len(regular) == 10 and facts.hardlinks == 2 and facts.symlinks == 4
    assert facts.bytes == sum(len((source / n).read_bytes()) for n in regular)
    assert not [p for p in tmp_path.iterdir() if "safehold" in p.name]


def _regular_names(root: Path) -> set[str]:
    seen: dict[int, str] = {}
    for path, _, names in _walk(root):
        for name in names:
            st = os.lstat(path / name)
            if stat.S_ISREG(st.st_mode):
                seen.setdefault(st.st_ino, str((path / name).relative_to(root)))
    return set(seen.values())


def test_facts_match_between_backup_and_restore(tmp_path: Path) -> None:
    make_tree(tmp_path / "source")
    buffer = io.BytesIO()
    tree_facts = write_tree(tmp_path / "source", buffer)
    restored = extract_tree(io.BytesIO(buffer.getvalue()), tmp_path / "restored")
    shared = {k: v for k, v in tree_facts.to_json().items() if k in restored.to_json()}
    assert shared == restored.to_json()
    assert tree_facts.dirs == 7  # ./ docs docs/deep empty locked dd..d dd..d/ee..e
    assert len(buffer.getvalue()) % tarfile.RECORDSIZE == 0


def test_headers_are_exactly_what_tarfile_writes(tmp_path: Path) -> None:
    make_tree(tmp_path / "source")
    data = backup(tmp_path / "source", "none")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
    assert len(members) == 23  # 7 folders, 10 files, 2 hardlinks, 4 symlinks
    for member in members:  # long names included: their ././@LongLink header comes first
        raw = data[member.offset : member.offset_data]
        assert raw == member.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"), member.name


def test_gnu_tar_lists_and_extracts_the_same_tree(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source)
    archive = tmp_path / "volume.tar.gz"
    archive.write_bytes(backup(source))

    subprocess.run(["gzip", "-t", str(archive)], check=True)
    listed = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, check=True)
    names = listed.stdout.decode("utf-8", "surrogateescape").splitlines()
    assert names[0] == "./"
    assert all(name.startswith("./") for name in names)
    gnu = subprocess.run(
        ["tar", "cf", "-", "-C", str(source), "."], capture_output=True, check=True
    )
    gnu_names = subprocess.run(
        ["tar", "tf", "-"], input=gnu.stdout, capture_output=True, check=True
    )
    assert sorted(names) == sorted(gnu_names.stdout.decode("utf-8", "surrogateescape").splitlines())

    by_gnu = gnu_extract(archive, tmp_path / "by-gnu-tar")
    by_safehold = tmp_path / "by-safehold"
    restore(archive.read_bytes(), by_safehold)
    assert snapshot(by_safehold) == snapshot(by_gnu) == snapshot(source)


def test_target_with_other_content_ends_up_holding_exactly_the_archive(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source)
    target = tmp_path / "volume"
    (target / "docs").mkdir(parents=True)
    (target / "docs" / "a.txt").write_text("old version\n")
    (target / "stale" / "ro").mkdir(parents=True)
    (target / "stale" / "ro" / "file").write_text("gone after restore\n")
    (target / "stale" / "ro").chmod(0o500)
    (target / ".hidden").write_text("also gone\n")
    inode = os.stat(target).st_ino

    restore(backup(source), target)

    assert snapshot(target) == snapshot(source)
    assert os.stat(target).st_ino == inode  # content swapped in; a mount of it stays valid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "volume"]


# ---- what the backup does with a live, changing tree ----------------------------------------


class HookSink:
    """A real sink that runs ``hook`` once, at the first write: the tree changes mid-backup."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self.buffer = io.BytesIO()
        self._hook: Callable[[], None] | None = hook

    def write(self, data: bytes | memoryview) -> int:
        hook, self._hook = self._hook, None
        if hook is not None:
            hook()
        return self.buffer.write(data)


def _backup_with_hook(root: Path, hook: Callable[[], None]) -> tuple[TreeFacts, bytes, list[Event]]:
    events: list[Event] = []
    sink = HookSink(hook)
    facts = write_tree(root, sink, events=events.append)
    return facts, sink.buffer.getvalue(), events


def _members(data: bytes) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            reader = tar.extractfile(member) if member.isreg() else None
            out[member.name] = reader.read() if reader else None
    return out


def test_entries_that_vanish_during_backup_are_skipped_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "live"
    root.mkdir()
    big = os.urandom(2 * MiB)  # its data fills the 1 MiB buffer: the first write happens here
    (root / "a-big").write_bytes(big)
    (root / "b-gone").write_text("deleted before it is read\n")
    (root / "c-dir").mkdir()
    (root / "c-dir" / "inner").write_text("x\n")
    (root / "d-stays").write_text("kept\n")

    def vanish() -> None:
        (root / "b-gone").unlink()
        (root / "c-dir" / "inner").unlink()
        (root / "c-dir").rmdir()

    facts, data, events = _backup_with_hook(root, vanish)

    assert [(e.level, e.data["path"], e.data["reason"]) for e in events] == [
        ("warning", "./b-gone", "vanished"),
        ("warning", "./c-dir", "vanished"),
    ]
    assert facts.skipped == 2 and facts.files == 2
    members = _members(data)
    assert list(members) == [".", "./a-big", "./d-stays"]  # tarfile drops the "/" of "./"
    assert members["./a-big"] == big and members["./d-stays"] == b"kept\n"


@pytest.mark.parametrize("change", ["shrink", "grow"])
def test_file_changing_while_read_keeps_its_header_size(tmp_path: Path, change: str) -> None:
    root = tmp_path / "live"
    root.mkdir()
    original = os.urandom(3 * MiB)
    (root / "a-changing").write_bytes(original)
    (root / "b-after").write_text("alignment intact\n")

    def modify() -> None:
        with (root / "a-changing").open("r+b") as handle:
            if change == "shrink":
                handle.truncate(MiB + MiB // 2)
            else:
                handle.seek(0, os.SEEK_END)
                handle.write(b"more" * 1000)

    facts, data, events = _backup_with_hook(root, modify)

    members = _members(data)
    expected = original if change == "grow" else original[: 3 * MiB // 2] + bytes(3 * MiB // 2)
    assert members["./a-changing"] == expected
    assert members["./b-after"] == b"alignment intact\n"
    assert facts.changed == 1
    assert [e.data["reason"] for e in events] == ["changed"]
    assert ("shrank" if change == "shrink" else "grew") in events[0].message


def test_special_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / "plain").write_text("kept\n")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock"))
    try:
        events: list[Event] = []
        data = backup(root, "none", events)
    finally:
        server.close()
    assert sorted(e.message.split()[1] for e in events) == ["device", "fifo", "socket"]
    assert {e.level for e in events} == {"warning"}
    assert list(_members(data)) == [".", "./plain"]


def test_backup_of_a_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the folder"):
        write_tree(tmp_path / "nope", io.BytesIO())
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        write_tree(tmp_path / "file", io.BytesIO())


# ---- refusing unsafe archives ------------------------------------------------------------------


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, data


def evil_archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """Harmless members first, so the refusal comes after real writes into staging."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in [
            _info("./", tarfile.DIRTYPE),
            _info("./sub", tarfile.DIRTYPE),
            _info("./good.txt", data=b"fine\n"),
            *members,
        ]:
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


EVIL = {
    "absolute path": [_info("/tmp/safehold-evil", data=b"pwned\n")],
    "dotdot": [_info("../escaped", data=b"pwned\n")],
    "nested dotdot": [_info("./sub/../../escaped", data=b"pwned\n")],
    "symlink to /etc": [_info("./etc", tarfile.SYMTYPE, "/etc")],
    "symlink climbing out": [_info("./sub/up", tarfile.SYMTYPE, "../../outside")],
    "symlink chain out": [
        _info("./sub/s", tarfile.SYMTYPE, ".."),  # harmless alone: points at the root
        _info("./p", tarfile.SYMTYPE, "sub/s/.."),  # lexically ./sub, really the parent
    ],
    "hardlink to /etc/passwd": [_info("./passwd", tarfile.LNKTYPE, "/etc/passwd")],
    "hardlink climbing out": [_info("./passwd", tarfile.LNKTYPE, "../../../../etc/passwd")],
    "hardlink to a later member": [_info("./h", tarfile.LNKTYPE, "./later")],
    "hardlink to a folder": [_info("./h", tarfile.LNKTYPE, "./sub")],
    "write through a symlink": [
        _info("./link", tarfile.SYMTYPE, "sub"),
        _info("./link/x", data=b"through the link\n"),
    ],
    "file replacing a folder": [_info("./sub", data=b"not a folder\n")],
    "device node": [_info("./null", tarfile.CHRTYPE)],
    "fifo": [_info("./pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(EVIL))
def test_unsafe_archives_are_refused_and_change_nothing(tmp_path: Path, case: str) -> None:
    target = tmp_path / "volume"
    (target / "sub").mkdir(parents=True)
    (target / "keep.txt").write_text("precious\n")
    (target / "sub" / "more.txt").write_text("also precious\n")
    before, around = snapshot(target), beside(tmp_path)
    bad_name = EVIL[case][-1][0].name

    with pytest.raises(IntegrityError) as caught:
        extract_tree(io.BytesIO(evil_archive(*EVIL[case])), target)

    assert repr(bad_name) in caught.value.message
    assert caught.value.hint and "nothing was changed" in caught.value.hint
    assert snapshot(target) == before
    assert beside(tmp_path) == around  # no staging left beside it, nothing escaped
    assert not Path("/tmp/safehold-evil").exists()


def test_members_may_come_before_their_folder(tmp_path: Path) -> None:
    folder = _info("./a", tarfile.DIRTYPE)[0]
    folder.mode, folder.mtime = 0o700, 1_500_000_000
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        deep, data = _info("./a/b/c", data=b"deep\n")  # its folders are not made yet
        tar.addfile(deep, io.BytesIO(data))
        tar.addfile(folder)
    facts = extract_tree(io.BytesIO(buffer.getvalue()), tmp_path / "out")
    assert (tmp_path / "out" / "a" / "b" / "c").read_bytes() == b"deep\n"
    st = os.stat(tmp_path / "out" / "a")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o700, 1_500_000_000)
    assert (facts.files, facts.dirs) == (1, 1)  # a/b was never listed: not counted


def test_damaged_archive_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source)
    data = backup(source)
    target = tmp_path / "volume"
    target.mkdir()
    (target / "keep.txt").write_text("precious\n")
    around = beside(tmp_path)
    for broken in (data[: len(data) // 2], data[:100] + b"\0" * 50 + data[150:], b"not an archive"):
        with pytest.raises(IntegrityError, match="damaged"):
            restore(broken, target)
        assert beside(tmp_path) == around


def test_before_swap_can_veto_after_the_whole_stream_was_read(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_tree(source)
    target = tmp_path / "volume"
    target.mkdir()
    (target / "keep.txt").write_text("precious\n")
    around = beside(tmp_path)
    seen: list[ExtractFacts] = []

    def veto(facts: ExtractFacts) -> None:
        seen.append(facts)
        raise IntegrityError("sha256 does not match the manifest")

    stream = io.BytesIO(backup(source, "none"))
    with pytest.raises(IntegrityError, match="sha256"):
        extract_tree(stream, target, before_swap=veto)
    assert stream.tell() == len(stream.getvalue())  # drained: a hashing reader saw every byte
    assert seen and seen[0].files == 10
    assert beside(tmp_path) == around


# ---- the gzip writer and bounded memory -------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 3])
def test_gzip_writer_output_is_one_standard_gzip_member(tmp_path: Path, threads: int) -> None:
    import gzip  # stdlib reader on purpose: the output must not need ISA-L to be read

    for size in (0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + BLOCK // 2):
        payload = (os.urandom(size // 3) + b"compressible " * size)[:size]
        buffer = io.BytesIO()
        writer = GzipWriter(buffer, threads=threads)
        for start in range(0, size, 300_001):  # writes that do not line up with blocks
            writer.write(memoryview(payload)[start : start + 300_001])
        writer.finish()
        assert gzip.decompress(buffer.getvalue()) == payload
        path = tmp_path / f"{size}.gz"
        path.write_bytes(buffer.getvalue())
        subprocess.run(["gzip", "-t", str(path)], check=True)


def test_memory_stays_bounded_for_a_300_mb_file(tmp_path: Path) -> None:
    big = tmp_path / "tree" / "big.img"
    big.parent.mkdir()
    with big.open("wb") as handle:
        handle.truncate(300 * MiB)  # sparse: reads as zeros without using the disk
        handle.seek(150 * MiB)
        handle.write(os.urandom(4 * MiB))
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from safehold.compress.gzip import open_compressor, open_decompressor
        from safehold.operations.volumes.extract import extract_tree
        from safehold.sources.tar.tree import write_tree

        def status_mb(key):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024

        # ru_maxrss would carry the forking pytest's peak across exec; VmHWM is this
        # process's own peak, and "5" resets it to the current RSS.
        Path("/proc/self/clear_refs").write_text("5")
        base = status_mb("VmRSS")
        tmp = Path(sys.argv[1])
        with (tmp / "out.tar.gz").open("wb") as out:
            gz = open_compressor("gzip", out)
            facts = write_tree(tmp / "tree", gz)
            gz.finish()
        after_backup = status_mb("VmHWM")
        with (tmp / "out.tar.gz").open("rb") as source:
            restored = extract_tree(open_decompressor("gzip", source), tmp / "restored")
        after_restore = status_mb("VmHWM")
        held = bytearray(120 << 20)  # proves the measure sees growth: must exceed the limit
        held[::4096] = b"x" * len(held[::4096])
        print(facts.bytes, restored.bytes, after_backup - base, after_restore - base,
              status_mb("VmHWM") - base)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    backed, restored, backup_growth, total_growth, control = result.stdout.split()
    assert int(backed) == int(restored) == 300 * MiB
    assert float(backup_growth) < 100, result.stdout
    assert float(total_growth) < 100, result.stdout
    assert float(control) > 100, result.stdout
    assert (tmp_path / "restored" / "big.img").stat().st_size == 300 * MiB
