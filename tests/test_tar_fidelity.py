"""Archives from any tar restore as GNU tar extracts them (run as root, real tools only).

Each archive is made by the tool an operator would use (GNU tar in its default, pax and sparse
forms, busybox tar, bsdtar), extracted once by GNU tar (``--numeric-owner -xpf``, as root,
the reference) and once by ``extract_tree``; the two trees must agree in content, modes, numeric
owners, links, allocated blocks (holes stay holes) and mtimes to the nanosecond. Then what
safehold does on purpose differently: NUL bytes in names and setuid bits from foreign archives,
and archives bigger than the disk (on a small tmpfs).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold.errors import ConfigError, IntegrityError, StorageFull
from safehold.model import Event
from safehold.operations.volumes.extract import extract_tree
from safehold.sinks.log import LogSink
from safehold.sources.tar.tree import write_tree

MiB = 1 << 20
pytestmark = pytest.mark.slow


LONG = "a-rather-long-folder-name-" * 3 + "/" + "and-a-long-file-name-" * 4  # > 100, > 155
NS = 1_700_000_000_123_456_789

Tree = dict[str, tuple[object, ...]]


def tool(*argv: str) -> list[str]:
    """The command, or a failure (never a skip) when the tool is not installed."""
    if shutil.which(argv[0]) is None:
        pytest.fail(f"{argv[0]} is missing: run scripts/install-deps.sh")
    return list(argv)


def run(*argv: str, cwd: Path | None = None) -> None:
    subprocess.run(tool(*argv), check=True, cwd=cwd, capture_output=True)


def make_tree(root: Path) -> None:
    root.mkdir()
    (root / "docs").mkdir(mode=0o750)
    (root / "docs/readme.txt").write_bytes(b"hello\n")
    (root / "docs/empty").write_bytes(b"")
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho hi\n" * 100)
    os.chmod(root / "bin/tool", 0o755)  # noqa: S103  # the modes are what is tested
    os.link(root / "bin/tool", root / "bin/tool-again")
    (root / "shared").mkdir()
    os.chmod(root / "shared", 0o2775)  # noqa: S103  # setgid folder: kept by every path
    os.symlink("../docs/readme.txt", root / "bin/readme")
    os.symlink("docs", root / "docs-link")
    (root / LONG).parent.mkdir(parents=True)
    (root / LONG).write_bytes(os.urandom(3000))
    (root / "empty-dir").mkdir(mode=0o700)
    os.chown(root / "docs/readme.txt", 1234, 5678)
    os.lchown(root / "bin/readme", 4321, 8765)
    with open(root / f"{LONG}.sparse", "wb") as fh:  # a long name: pax 0.1 renames it
        for offset in (0, 5 * MiB, 100 * MiB):
            fh.seek(offset)
            fh.write(os.urandom(70_000))
        fh.truncate(256 * MiB)  # ends in a hole
    for path in sorted(root.rglob("*"), reverse=True):  # deepest first, folders after
        os.utime(path, ns=(NS, NS + len(path.name)), follow_symlinks=False)
    os.utime(root, ns=(NS, NS))


def snapshot(root: Path) -> Tree:
    out: Tree = {}
    groups: dict[int, list[str]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        rel = os.path.relpath(path, root)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            content: object = "dir"
        elif stat.S_ISLNK(st.st_mode):
            content = ("link", os.readlink(path))
        else:
            # Whether the file has holes, not its block count: a fully written 256 MiB file
            # takes 524288 blocks or a few more, by how fragmented the file system is.
            holes = st.st_blocks * 512 < st.st_size
            content = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), holes)
            groups.setdefault(st.st_ino, []).append(rel)
        out[rel] = (content, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    for names in groups.values():
        for name in names:
            out[name] += (tuple(names),)
    return out


def gnu_extract(archive: Path, into: Path) -> Tree:
    """GNU tar's extraction. --delay-directory-restore: bsdtar lists a folder's files after
    other folders (./docs/, ./bin/, ./docs/r), and GNU tar would otherwise set ./docs's mtime
    on leaving it and then change it by adding r; extract_tree sets folders last anyway."""
    into.mkdir()
    run(
        "tar", "--numeric-owner", "--delay-directory-restore", "-xpf", str(archive), "-C", str(into)
    )
    return snapshot(into)


ARCHIVERS = {
    "gnu-default": ["tar", "-cf", "{out}", "-C", "{src}", "."],
    "gnu-sparse": ["tar", "--sparse", "--format=gnu", "-cf", "{out}", "-C", "{src}", "."],
    "posix": ["tar", "--format=posix", "-cf", "{out}", "-C", "{src}", "."],
    **{
        f"posix-sparse-{v}": [
            "tar", "--format=posix", "--sparse", f"--sparse-version={v}",
            "-cf", "{out}", "-C", "{src}", ".",
        ]
        for v in ("0.0", "0.1", "1.0")
    },
    "busybox": ["busybox", "tar", "-cf", "{out}", "."],
    "bsdtar": ["bsdtar", "-cf", "{out}", "-C", "{src}", "."],
    "bsdtar-gnutar": ["bsdtar", "--format=gnutar", "-cf", "{out}", "-C", "{src}", "."],
}  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fidelity") / "src"
    make_tree(root)
    return root


@pytest.mark.parametrize("maker", sorted(ARCHIVERS))
def test_restore_matches_gnu_tar(maker: str, source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    argv = [part.format(out=archive, src=source) for part in ARCHIVERS[maker]]
    run(*argv, cwd=source)
    expected = gnu_extract(archive, tmp_path / "gnu")
    events: list[Event] = []
    with archive.open("rb") as stream:
        facts = extract_tree(stream, tmp_path / "ours", events=events.append)
    assert snapshot(tmp_path / "ours") == expected
    assert facts.files == 5 and facts.hardlinks == 1 and facts.symlinks == 2
    assert [e for e in events if e.level == "warning"] == []
    sparse = os.lstat(tmp_path / "ours" / f"{LONG}.sparse")
    if "sparse" in maker or maker == "bsdtar":  # bsdtar finds holes by itself
        assert sparse.st_blocks * 512 < 2 * MiB  # 210 kB of data, not 256 MiB
    if maker.startswith("posix"):  # pax: mtimes to the nanosecond
        assert os.lstat(tmp_path / "ours/docs/readme.txt").st_mtime_ns == NS + len("readme.txt")


def test_backup_of_sparse_file_stays_sparse(source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "ours.tar"
    with archive.open("wb") as out:
        facts = write_tree(source, out)
    assert facts.bytes == sum(
        p.stat().st_size for p in source.rglob("*") if p.is_file() and not p.is_symlink()
    ) - len(b"#!/bin/sh\necho hi\n" * 100)  # the hardlink's bytes count once
    assert archive.stat().st_size < 2 * MiB
    with tarfile.open(archive) as tar:
        assert tar.getmember(f"./{LONG}.sparse").type == tarfile.GNUTYPE_SPARSE
    by_gnu = gnu_extract(archive, tmp_path / "gnu")
    original = snapshot(source)
    whole_seconds = {
        k: (*v[:4], int(str(v[4])) // 10**9 * 10**9, *v[5:]) for k, v in original.items()
    }
    assert by_gnu == whole_seconds  # tar -xf: identical, and as sparse as the source
    with archive.open("rb") as stream:
        extract_tree(stream, tmp_path / "ours")
    assert snapshot(tmp_path / "ours") == by_gnu


def handmade(*parts: bytes) -> bytes:
    return b"".join(parts) + bytes(1024)


def pax(records: dict[str, str], kind: bytes = tarfile.XHDTYPE) -> bytes:
    data = b""
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        data += str(length).encode() + body
    info = tarfile.TarInfo("./PaxHeaders/x")
    info.type, info.size = kind, len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)


def long_name(name: str) -> bytes:
    data = name.encode() + b"\0"
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, len(data)
    return info.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512)


def plain(name: str, data: bytes = b"x") -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1000, 0o640
    return info.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512)


REPEATED = {
    # tarfile keeps the first of two pax headers; GNU tar only the last, whole
    "two-pax": handmade(
        pax({"path": "first", "mtime": "5.5"}), pax({"path": "second"}), plain("p")
    ),
    "two-long-names": handmade(long_name("first"), long_name("second"), plain("p")),
    "pax-then-long": handmade(pax({"path": "by-pax"}), long_name("by-gnu"), plain("p")),
    "long-then-pax": handmade(long_name("by-gnu"), pax({"path": "by-pax"}), plain("p")),
    "global": handmade(
        pax({"mtime": "77.25", "uid": "1234"}, tarfile.XGLTYPE),
        plain("a"),
        pax({"path": "b2", "mtime": "-1.5"}),
        plain("b"),
    ),
}


@pytest.mark.parametrize("case", sorted(REPEATED))
def test_repeated_headers_as_gnu_tar(case: str, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(REPEATED[case])
    expected = gnu_extract(archive, tmp_path / "gnu")
    with archive.open("rb") as stream:
        extract_tree(stream, tmp_path / "ours")
    found = snapshot(tmp_path / "ours")
    # the root is not in these archives: GNU tar and extract_tree leave it as made
    assert {k: v for k, v in found.items() if k != "."} == {
        k: v for k, v in expected.items() if k != "."
    }
    assert len(found) == len(expected) > 1


def test_nul_byte_in_a_name_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "kept").write_bytes(b"old")
    before = snapshot(target)
    archive = handmade(plain("./ok"), pax({"path": "evil\0/../../x"}), plain("p"))
    (tmp_path / "a.tar").write_bytes(archive)
    with pytest.raises(IntegrityError, match="NUL byte in its name") as caught:
        extract_tree((tmp_path / "a.tar").open("rb"), target)
    assert caught.value.hint and "nothing was changed" in caught.value.hint
    assert snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ["a.tar", "target"]


def test_setuid_bits_from_a_foreign_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "group").mkdir(parents=True)
    (src / "su").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "su", 0o4755)  # noqa: S103
    (src / "sg").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "sg", 0o2711)  # noqa: S103
    os.chmod(src / "group", 0o2770)  # noqa: S103
    run("tar", "-cf", str(tmp_path / "a.tar"), "-C", str(src), ".")
    gnu = gnu_extract(tmp_path / "a.tar", tmp_path / "gnu")
    events: list[Event] = []
    with (tmp_path / "a.tar").open("rb") as stream:
        extract_tree(stream, tmp_path / "dropped", events=events.append, keep_setuid=False)
    dropped = tmp_path / "dropped"
    assert stat.S_IMODE(os.lstat(dropped / "su").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(dropped / "sg").st_mode) == 0o711
    assert stat.S_IMODE(os.lstat(dropped / "group").st_mode) == 0o2770  # a folder keeps setgid
    warned = sorted(e.data["path"] for e in events if e.level == "warning")
    assert warned == ["./sg", "./su"]
    assert all("--keep-setuid" in e.message for e in events if e.level == "warning")
    with (tmp_path / "a.tar").open("rb") as stream:
        extract_tree(stream, tmp_path / "kept", keep_setuid=True)
    assert snapshot(tmp_path / "kept") == gnu  # as GNU tar run as root


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (we run as root), unmounted whatever the test did."""
    mount = tmp_path / "small"
    mount.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount))
    try:
        yield mount
    finally:
        run("umount", str(mount))


def gzipped_tar(tmp_path: Path, sizes: dict[str, int]) -> Path:
    src = tmp_path / "bomb-src"
    src.mkdir()
    for name, size in sizes.items():
        with open(src / name, "wb") as fh:
            fh.truncate(size)  # zeros: a few kB once compressed
    archive = tmp_path / "bomb.tar.gz"
    run("tar", "-czf", str(archive), "-C", str(src), ".")
    assert archive.stat().st_size < 200_000
    return archive


@pytest.mark.parametrize(
    "sizes",
    [{"huge": 64 * MiB}, {"a": 3 * MiB, "b": 3 * MiB, "c": 3 * MiB}],
    ids=["one-huge-file", "files-adding-up"],
)
def test_archive_bigger_than_the_disk_is_refused(
    sizes: dict[str, int], small_fs: Path, tmp_path: Path
) -> None:
    target = small_fs / "volume"
    target.mkdir()
    (target / "current").write_bytes(b"live data")
    before = snapshot(target)
    archive = gzipped_tar(tmp_path, sizes)
    with gzip.open(archive, "rb") as stream, pytest.raises(StorageFull) as caught:
        extract_tree(stream, target)
    assert "only" in caught.value.message and "are free" in caught.value.message
    assert snapshot(target) == before
    assert os.listdir(small_fs) == ["volume"]  # no staging folder left
    assert shutil.disk_usage(small_fs).used < MiB


def test_a_manifest_byte_count_bigger_than_the_free_space_is_refused_before_any_write(
    small_fs: Path, tmp_path: Path
) -> None:
    """Each member would fit on its own (1 MiB each on an 8 MiB disk); the manifest's total
    says the whole cannot, so nothing is unpacked at all."""
    target = small_fs / "volume"
    target.mkdir()
    (target / "current").write_bytes(b"live data")
    before = snapshot(target)
    archive = gzipped_tar(tmp_path, {f"f{n}": MiB for n in range(12)})
    written: list[str] = []
    with gzip.open(archive, "rb") as stream, pytest.raises(StorageFull) as caught:
        extract_tree(
            stream, target, expected_bytes=12 * MiB, events=lambda e: written.append(e.message)
        )
    assert f"holds {12 * MiB} bytes of file data (its manifest)" in caught.value.message
    assert snapshot(target) == before
    assert os.listdir(small_fs) == ["volume"]
    assert shutil.disk_usage(small_fs).used < MiB


def test_an_archive_holding_more_than_its_manifest_records_is_refused_at_that_member(
    tmp_path: Path,
) -> None:
    """A manifest edited to a smaller count, or an archive swapped for a bigger one: the member
    that crosses the count is refused, not unpacked to the end and caught after."""
    target = tmp_path / "volume"
    target.mkdir()
    (target / "current").write_bytes(b"live data")
    before = snapshot(target)
    archive = gzipped_tar(tmp_path, {"a": 3 * MiB, "b": 3 * MiB, "c": 3 * MiB})
    with gzip.open(archive, "rb") as stream, pytest.raises(IntegrityError) as caught:
        extract_tree(stream, target, expected_bytes=5 * MiB)
    assert f"past the {5 * MiB} bytes of file data its manifest records" in caught.value.message
    assert "./b" in caught.value.message or "./c" in caught.value.message
    assert snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ["bomb-src", "bomb.tar.gz", "volume"]  # no staging


def test_sparse_member_bigger_than_the_disk_fits(small_fs: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "image", "wb") as fh:
        fh.write(b"boot")
        fh.truncate(1 << 30)  # 1 GiB apparent on an 8 MiB disk: a hole, not a bomb
    run("tar", "--sparse", "-cf", str(tmp_path / "a.tar"), "-C", str(src), ".")
    with (tmp_path / "a.tar").open("rb") as stream:
        extract_tree(stream, small_fs / "volume")
    restored = small_fs / "volume/image"
    assert restored.stat().st_size == 1 << 30
    with restored.open("rb") as fh:
        assert fh.read(8) == b"boot\0\0\0\0"


def test_log_file_is_private_and_not_followed(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        sink = LogSink(None, tmp_path / "logs/deep/safehold.log")
        sink(Event("backup", "hello"))
        sink.close()
    finally:
        os.umask(old)
    for folder in (tmp_path / "logs", tmp_path / "logs/deep"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    log = tmp_path / "logs/deep/safehold.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert log.read_text().endswith("INFO    backup: hello\n")

    secret = tmp_path / "elsewhere"
    secret.write_text("precious\n")
    planted = tmp_path / "logs/planted.log"
    planted.symlink_to(secret)
    with pytest.raises(ConfigError, match="is a symlink"):
        LogSink(None, planted)
    assert secret.read_text() == "precious\n"

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by others"):
        LogSink(None, shared / "s.log")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o755)
    os.chown(foreign, 1234, 1234)
    with pytest.raises(ConfigError, match="belongs to uid 1234"):
        LogSink(None, foreign / "sub/s.log")
    assert os.listdir(shared) == [] and os.listdir(foreign) == []


def test_a_restore_reads_the_byte_count_from_the_manifest(tmp_path: Path) -> None:
    """End to end: restore_tree hands the manifest's byte count to the extraction, so a
    manifest that records fewer bytes than the archive holds stops it at that member."""
    from safehold.operations.volumes.folder import backup_tree, restore_tree
    from safehold.storage import LocalStorage

    from .test_verify import edit_manifest

    repo = LocalStorage(tmp_path / "repo")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("a", "b", "c"):
        (source / name).write_bytes(os.urandom(64 * 1024))
    artifact = backup_tree(source, "appdata", repo).artifact
    edit_manifest(repo, artifact, bytes=100 * 1024)
    target = tmp_path / "target"
    target.mkdir()
    (target / "current").write_bytes(b"live data")
    before = snapshot(target)

    with pytest.raises(IntegrityError) as caught:
        restore_tree(repo, artifact, target, target_name="appdata")

    assert f"past the {100 * 1024} bytes of file data its manifest records" in (
        caught.value.message
    )
    assert snapshot(target) == before
