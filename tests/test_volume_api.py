"""Volumes through the Docker engine's API (helper containers), on the private engine.

Nothing is mocked. The tests run as root on the engine's host, so each result is checked
against the volume's folder itself: what ``write_tree`` makes of the mountpoint, and an
``lstat`` walk of it (types, modes, numeric owners, mtimes, content, link targets, which names
share an inode).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.errors import APIError, ImageNotFound
from docker.models.images import Image
from docker.models.volumes import Volume

from safehold.errors import IntegrityError, RestoreError, TargetInUse, UsageError
from safehold.model import Event
from safehold.operations.volumes.api import read_volume_tar, replace_volume_content
from safehold.operations.volumes.extract import ExtractFacts, extract_tree
from safehold.sandbox.dockerd import SandboxDockerd
from safehold.sources.docker.helper_image import BUSYBOX_TAG, EMPTY_TAG, HELPER_LABEL
from safehold.sources.tar.tree import write_tree

from .conftest import ROOT, run_in

LONG = "x" * 120
MiB = 1 << 20
# Owners, set-id bits, hardlinks (one of them set-uid), symlinks (one pointing up), empty
# folders, names longer than 100 bytes, non-ASCII and control characters, a 3 MB file that
# spans many chunks of the engine's stream, and a fifo, a device and a hardlink to the fifo.
FILL = f"""
set -e
cd /data
mkdir -p a/b/c empty/inner 'sp ace' setgid
printf 'alpha\\n' > a/f
ln a/f a/g
ln -s f a/s
ln -s ../../a a/b/up
chown 1234:5678 a/f
chmod 4755 a/f
printf x > "$(printf 'ü-\\001name')"
mkdir -p "deep/{LONG}/{LONG}"
printf long > "deep/{LONG}/{LONG}/{LONG}.txt"
ln -s "{LONG}" "deep/{LONG}/link-{LONG}"
i=0; while [ $i -lt 3000 ]; do printf '%01000d' $i; i=$((i+1)); done > big.bin
chmod 2750 setgid
chown 99:98 empty/inner
chown -h 42:43 a/s
mkfifo fifo
mknod dev c 1 3
ln fifo fifo2
touch -d '2001-02-03 04:05:06' a/f a/b/c
touch -h -d '2002-02-03 04:05:06' a/s
touch -d '2003-02-03 04:05:06' a
chown 7:8 /data
chmod 750 /data
"""
Snapshot = dict[str, tuple[object, ...]]


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | memoryview) -> int:
        self.data += data
        return len(data)


@pytest.fixture(scope="module", autouse=True)
def drop_helper_images(client: docker.DockerClient) -> Iterator[None]:
    """The shared engine's other tests expect only the sandbox's own image."""
    yield
    for tag in (EMPTY_TAG, BUSYBOX_TAG):
        with contextlib.suppress(ImageNotFound, APIError):
            client.images.remove(tag)


@pytest.fixture
def other(client: docker.DockerClient) -> Iterator[Volume]:
    created = client.volumes.create(name=f"safehold-vol-{secrets.token_hex(4)}")
    try:
        yield created
    finally:
        created.remove(force=True)


def mountpoint(volume: Volume) -> Path:
    return Path(str(volume.attrs["Mountpoint"]))


def helpers(client: docker.DockerClient) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"{HELPER_LABEL}=true"})
    return [str(container.name) for container in found]


def snapshot(root: Path) -> Snapshot:
    """Relative path -> (type, mode, uid, gid, mtime s, sha256 or link target, first name of
    its inode if it has several); the root is '.'."""
    entries: Snapshot = {}
    inodes: dict[tuple[int, int], str] = {}
    for folder, dirs, files in os.walk(root):
        names = [*dirs, *files] + (["."] if Path(folder) == root else [])
        for name in names:
            path = root if name == "." else Path(folder) / name
            rel = "." if name == "." else str(path.relative_to(root))
            st = path.lstat()
            body: object = None
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(path.read_bytes()).hexdigest()
            group = inodes.setdefault((st.st_dev, st.st_ino), rel) if st.st_nlink > 1 else None
            kind, mode = stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)
            entries[rel] = (kind, mode, st.st_uid, st.st_gid, st.st_mtime_ns // 10**9, body)
            entries[rel] += (group if not stat.S_ISDIR(st.st_mode) else None,)
    return entries


def members(data: bytes) -> list[tuple[object, ...]]:
    """Every member as tar sees it: name, type, mode, owner, mtime, size, link, content."""
    found: list[tuple[object, ...]] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as tar:  # fmt: skip
        for m in tar:
            reader = tar.extractfile(m) if m.isreg() else None
            body = hashlib.sha256(reader.read()).hexdigest() if reader else None
            found.append((m.name, m.type, m.mode, m.uid, m.gid, m.mtime, m.size, m.linkname, body))
    return found


def direct(root: Path) -> tuple[bytes, object]:
    sink = Collect()
    facts = write_tree(root, sink)
    return bytes(sink.data), facts


def filled(client: docker.DockerClient, image: Image, volume: Volume) -> Path:
    run_in(client, image, str(volume.name), FILL)
    return mountpoint(volume)


def test_read_gives_exactly_what_write_tree_gives(
    client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    root = filled(client, image, volume)
    events: list[Event] = []
    sink = Collect()
    facts = read_volume_tar(client, str(volume.name), sink, events=events.append)
    expected, expected_facts = direct(root)

    api = members(bytes(sink.data))
    assert api == members(expected)  # entry by entry first: a readable diff if it fails
    assert bytes(sink.data) == expected  # then byte for byte: the same GNU headers
    assert facts == expected_facts
    assert (facts.files, facts.dirs, facts.symlinks, facts.hardlinks) == (4, 11, 3, 1)
    assert (facts.bytes, facts.skipped, facts.changed) == (3_000_000 + 6 + 1 + 4, 3, 0)
    by_name = {m[0]: m for m in api}
    assert api[0][:5] == (".", tarfile.DIRTYPE, 0o750, 7, 8)
    assert by_name["./a/f"][2:5] == (0o4755, 1234, 5678)
    assert by_name["./a/g"][1] == tarfile.LNKTYPE and by_name["./a/g"][7] == "./a/f"
    assert by_name["./a/s"][1:5] == (tarfile.SYMTYPE, 0o777, 42, 43)
    assert by_name["./a/s"][7] == "f" and by_name["./a/b/up"][7] == "../../a"
    assert by_name["./empty/inner"][1:5] == (tarfile.DIRTYPE, 0o755, 99, 98)
    assert by_name["./setgid"][2] == 0o2750
    assert by_name[f"./deep/{LONG}/{LONG}/{LONG}.txt"][6] == 4
    assert "./ü-\x01name" in by_name
    assert not {"./fifo", "./fifo2", "./dev"} & set(by_name)
    skipped = sorted(e.data["path"] for e in events if e.level == "warning")
    assert skipped == ["./dev", "./fifo", "./fifo2"]
    assert helpers(client) == []


def test_gnu_tar_lists_the_api_archive_with_dot_names(
    client: docker.DockerClient, image: Image, volume: Volume, tmp_path: Path
) -> None:
    filled(client, image, volume)
    archive = tmp_path / "volume.tar"
    with archive.open("wb") as out:
        read_volume_tar(client, str(volume.name), out)
    listing = subprocess.run(
        ["tar", "--numeric-owner", "-tvf", str(archive)], capture_output=True, check=True
    ).stdout.decode("utf-8", "surrogateescape")
    lines = listing.splitlines()
    names = subprocess.run(["tar", "-tf", str(archive)], capture_output=True, check=True)
    listed = names.stdout.decode("utf-8", "surrogateescape").splitlines()
    assert listed[0] == "./"
    assert all(name.startswith("./") for name in listed)
    assert {"./a/", "./a/f", "./empty/inner/", "./big.bin"} <= set(listed)
    assert any(line.startswith("-rwsr-xr-x 1234/5678") and line.endswith(" ./a/f")
               for line in lines)  # fmt: skip
    assert any(line.endswith("./a/g link to ./a/f") for line in lines)
    assert any(line.startswith("lrwxrwxrwx 42/43") and line.endswith("./a/s -> f")
               for line in lines)  # fmt: skip


def test_round_trip_restores_every_entry_and_nothing_else(
    client: docker.DockerClient, image: Image, volume: Volume, other: Volume
) -> None:
    source = filled(client, image, volume)
    target = mountpoint(other)
    (target / "a").mkdir()
    (target / "a" / "f").write_text("old content of a file the archive also has")
    (target / "stale-dir" / "deeper").mkdir(parents=True)
    (target / "stale.txt").write_text("not in the archive")
    (target / ".hidden").write_text("hidden, not in the archive")
    (target / "..dots").write_text("also not")
    (target / "new\nline").write_text("nor this")
    sink = Collect()
    read = read_volume_tar(client, str(volume.name), sink)

    facts = replace_volume_content(client, str(other.name), io.BytesIO(bytes(sink.data)))

    special = {"fifo", "fifo2", "dev"}
    assert snapshot(target) == {k: v for k, v in snapshot(source).items() if k not in special}
    assert direct(target)[0] == bytes(sink.data)
    got = (facts.files, facts.dirs, facts.symlinks, facts.hardlinks, facts.bytes)
    assert got == (read.files, read.dirs, read.symlinks, read.hardlinks, read.bytes)
    assert not [name for name in os.listdir(target) if name.startswith(".safehold-")]
    assert helpers(client) == []


def test_files_not_in_the_archive_are_gone(client: docker.DockerClient, volume: Volume) -> None:
    root = mountpoint(volume)
    for name in ("old.txt", ".hidden", "..dots", "-dash", "new\nline", "*"):
        (root / name).write_text(name)
    (root / "olddir" / "sub").mkdir(parents=True)
    os.symlink("old.txt", root / "oldlink")
    archive = tar_of(member("./", tarfile.DIRTYPE, mode=0o711), member("./keep.txt", data=b"k"))
    replace_volume_content(client, str(volume.name), io.BytesIO(archive))
    assert sorted(os.listdir(root)) == ["keep.txt"]
    assert (root / "keep.txt").read_bytes() == b"k"
    assert stat.S_IMODE(root.stat().st_mode) == 0o711
    assert root.stat().st_mtime == 1_600_000_000
    assert helpers(client) == []


def test_result_matches_extract_tree_for_a_foreign_archive(
    client: docker.DockerClient, volume: Volume, tmp_path: Path
) -> None:
    """PAX format, members before their folder, a member replaced by a later one, a folder
    listed twice, a hardlink to a symlink: the volume ends up as extract.py leaves a folder."""
    archive = tar_of(
        member("top/sub/file", data=b"first", mode=0o640, uid=5, gid=6),
        member("top/sub", tarfile.DIRTYPE, mode=0o700, mtime=1_500_000_000),
        member("top", tarfile.DIRTYPE, mode=0o755, mtime=1_400_000_000),
        member("top/link", tarfile.SYMTYPE, link="sub/file", uid=9, gid=9),
        member("top/sub/file", data=b"second wins", mode=0o600, uid=7, gid=8),
        # Owner and mode as the source's, as tar writes them (the engine applies a hardlink's).
        member("top/hard", tarfile.LNKTYPE, link="top/sub/file", mode=0o600, uid=7, gid=8),
        member("top/hardsym", tarfile.LNKTYPE, link="top/link", uid=9, gid=9),
        member("top/sub", tarfile.DIRTYPE, mode=0o750, mtime=1_500_000_001),
        member("n\u00e4me/" + "y" * 150, data=b"long"),
        member("n\u00e4me", tarfile.DIRTYPE),
        fmt=tarfile.PAX_FORMAT,
    )
    reference = tmp_path / "reference"
    expected = extract_tree(io.BytesIO(archive), reference)
    facts = replace_volume_content(client, str(volume.name), io.BytesIO(archive))
    assert facts == expected
    without_root = {k: v for k, v in snapshot(reference).items() if k != "."}
    assert {k: v for k, v in snapshot(mountpoint(volume)).items() if k != "."} == without_root
    assert (mountpoint(volume) / "top" / "sub" / "file").read_bytes() == b"second wins"


def unsafe(case: str) -> bytes:
    ok = member("./ok.txt", data=b"fine")
    cases: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {
        "absolute": [ok, member("/etc/evil", data=b"x")],
        "dotdot": [ok, member("./a/../../evil", data=b"x")],
        "symlink-escapes": [ok, member("./up", tarfile.SYMTYPE, link="../outside")],
        "symlink-absolute": [ok, member("./abs", tarfile.SYMTYPE, link="/etc/passwd")],
        "symlink-chain": [
            member("./d", tarfile.DIRTYPE),
            member("./d/l", tarfile.SYMTYPE, link=".."),
            member("./y", tarfile.SYMTYPE, link="d/l/.."),
        ],
        "through-symlink": [
            member("./s", tarfile.SYMTYPE, link="."),
            member("./s/x", data=b"written through a symlink"),
        ],
        "hardlink-escapes": [ok, member("./h", tarfile.LNKTYPE, link="../etc/passwd")],
        "hardlink-missing": [ok, member("./h", tarfile.LNKTYPE, link="./nothing")],
        "device": [ok, member("./null", tarfile.CHRTYPE)],
        "fifo": [ok, member("./pipe", tarfile.FIFOTYPE)],
        "replaces-folder": [member("./d/x", data=b"1"), member("./d", data=b"2")],
    }
    return tar_of(*cases[case])


UNSAFE = [
    ("absolute", "absolute path"),
    ("dotdot", "'..'"),
    ("symlink-escapes", "outside the folder"),
    ("symlink-absolute", "absolute path"),
    ("symlink-chain", "resolves outside"),
    ("through-symlink", "goes through the symlink"),
    ("hardlink-escapes", "'..'"),
    ("hardlink-missing", "not an earlier file"),
    ("device", "device node"),
    ("fifo", "fifo"),
    ("replaces-folder", "would replace a folder"),
]


@pytest.mark.parametrize(("case", "why"), UNSAFE)
def test_unsafe_archives_are_refused_and_change_nothing(
    client: docker.DockerClient, image: Image, volume: Volume, case: str, why: str
) -> None:
    root = filled(client, image, volume)
    before = snapshot(root)
    with pytest.raises(IntegrityError, match=why) as caught:
        replace_volume_content(client, str(volume.name), io.BytesIO(unsafe(case)))
    assert "nothing was changed" in str(caught.value.hint)
    assert snapshot(root) == before  # the root's own mtime too: the engine was never asked
    assert helpers(client) == []


def damaged(case: str) -> bytes:
    good = tar_of(member("./", tarfile.DIRTYPE), member("./f", data=os.urandom(5000)))
    if case == "flipped":
        return good[:600] + bytes([good[600] ^ 1]) + good[601:]  # in ./f's header
    if case == "truncated":
        return good[: 512 * 2 + 3000]  # in the middle of ./f's data
    if case == "no-end-marker":
        return good[: 512 * 2 + 5120]  # every member whole, but no end-of-archive blocks
    return {"garbage": os.urandom(20_000), "empty": b""}[case]


@pytest.mark.parametrize("case", ["flipped", "truncated", "no-end-marker", "garbage", "empty"])
def test_damaged_input_is_refused_and_changes_nothing(
    client: docker.DockerClient, image: Image, volume: Volume, case: str
) -> None:
    root = filled(client, image, volume)
    before = snapshot(root)
    with pytest.raises(IntegrityError, match="damaged or not a tar archive"):
        replace_volume_content(client, str(volume.name), io.BytesIO(damaged(case)))
    assert snapshot(root) == before
    assert helpers(client) == []


def test_a_sparse_member_is_refused(
    client: docker.DockerClient, volume: Volume, tmp_path: Path
) -> None:
    """GNU tar's own sparse format stores a map and the data pieces, not the file's bytes."""
    folder = tmp_path / "sparse"
    folder.mkdir()
    with (folder / "holes.img").open("wb") as handle:
        handle.truncate(8 * MiB)
        handle.seek(4 * MiB)
        handle.write(b"data")
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "-cSf", str(archive), "-C", str(folder), "."], check=True)
    (mountpoint(volume) / "keep").write_text("kept")
    before = snapshot(mountpoint(volume))
    with pytest.raises(IntegrityError, match="stored sparse"):
        replace_volume_content(client, str(volume.name), io.BytesIO(archive.read_bytes()))
    assert snapshot(mountpoint(volume)) == before


def test_the_whole_stream_is_read_and_pax_values_are_kept(
    client: docker.DockerClient, volume: Volume
) -> None:
    """A caller hashing the stream must see every byte, the record padding after the end
    marker too; PAX gives uids beyond 7 octal digits and long link targets."""
    target = "t" * 150
    archive = tar_of(
        member("./", tarfile.DIRTYPE, mode=0o755),
        member("./big-owner", data=b"x", uid=3_000_000, gid=4_000_000),
        member("./long-link", tarfile.SYMTYPE, link=target),
        fmt=tarfile.PAX_FORMAT,
    )
    assert len(archive) % 10240 == 0 and archive.endswith(bytes(4096))
    source = io.BytesIO(archive)
    facts = replace_volume_content(client, str(volume.name), source)
    assert source.tell() == len(archive)
    assert (facts.files, facts.symlinks, facts.bytes) == (1, 1, 1)
    root = mountpoint(volume)
    st = (root / "big-owner").lstat()
    assert (st.st_uid, st.st_gid, (root / "big-owner").read_bytes()) == (3_000_000, 4_000_000, b"x")
    assert os.readlink(root / "long-link") == target


def test_before_swap_sees_the_facts_and_its_veto_changes_nothing(
    client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    root = filled(client, image, volume)
    before = snapshot(root)
    seen: list[ExtractFacts] = []

    def veto(facts: ExtractFacts) -> None:
        seen.append(facts)
        raise IntegrityError("checksum mismatch")

    archive = tar_of(member("./", tarfile.DIRTYPE), member("./one", data=b"123"))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        replace_volume_content(client, str(volume.name), io.BytesIO(archive), before_swap=veto)
    assert seen == [ExtractFacts(files=1, dirs=1, bytes=3)]
    assert snapshot(root) == before
    assert helpers(client) == []


def test_an_archive_the_engine_cannot_unpack_leaves_the_content(
    client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    """A name longer than the filesystem allows passes the checks but fails in the engine:
    the helper removes what it staged and the volume keeps its content."""
    root = filled(client, image, volume)
    before = snapshot(root)
    archive = tar_of(member("./ok", data=b"1"), member("./" + "n" * 300, data=b"2"))
    with pytest.raises(RestoreError, match="could not unpack"):
        replace_volume_content(client, str(volume.name), io.BytesIO(archive))
    after = snapshot(root)
    # Staging inside the volume touched the root folder's mtime, and nothing else.
    assert after.pop(".")[:4] == before.pop(".")[:4]
    assert after == before
    assert helpers(client) == []


def test_no_helper_is_left_when_the_sink_fails(
    client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    root = filled(client, image, volume)
    before = snapshot(root)

    class Full:
        written = 0

        def write(self, data: bytes | memoryview) -> int:
            self.written += len(data)
            if self.written > 1 << 20:
                raise OSError(28, "No space left on device")
            return len(data)

    with pytest.raises(OSError, match="No space left"):
        read_volume_tar(client, str(volume.name), Full())
    assert helpers(client) == []
    assert snapshot(root) == before


def test_a_missing_volume_is_a_usage_error_and_is_not_created(
    client: docker.DockerClient,
) -> None:
    name = f"safehold-missing-{secrets.token_hex(4)}"
    with pytest.raises(UsageError, match=f"no Docker volume {name}"):
        read_volume_tar(client, name, Collect())
    with pytest.raises(UsageError, match=f"no Docker volume {name}"):
        replace_volume_content(client, name, io.BytesIO(tar_of(member("./x", data=b"1"))))
    assert name not in [str(v.name) for v in client.volumes.list()]
    assert helpers(client) == []


def test_restore_is_refused_while_a_running_container_uses_the_volume(
    client: docker.DockerClient, image: Image, volume: Volume
) -> None:
    root = filled(client, image, volume)
    before = snapshot(root)
    user = client.containers.run(
        image, ["sleep", "60"], volumes={str(volume.name): {"bind": "/data"}},
        network_mode="none", detach=True,
    )  # fmt: skip
    try:
        with pytest.raises(TargetInUse):
            replace_volume_content(client, str(volume.name), io.BytesIO(tar_of(member("./x"))))
    finally:
        user.remove(force=True)
    assert snapshot(root) == before
    assert helpers(client) == []


def test_memory_stays_bounded_for_a_300_mb_file(
    engine: SandboxDockerd, client: docker.DockerClient, volume: Volume, other: Volume,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Read and restore in a child process, whose own peak RSS (VmHWM) is measured."""
    with (mountpoint(volume) / "big.img").open("wb") as handle:
        handle.truncate(300 * MiB)  # sparse: the engine reads zeros without using the disk
        handle.seek(150 * MiB)
        handle.write(os.urandom(4 * MiB))
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import docker
        from safehold.operations.volumes.api import read_volume_tar, replace_volume_content

        def status_mb(key):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024

        client = docker.DockerClient(base_url=sys.argv[1])
        archive = Path(sys.argv[4])
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on
        base = status_mb("VmRSS")
        with archive.open("wb") as out:
            read = read_volume_tar(client, sys.argv[2], out)
        after_read = status_mb("VmHWM")
        with archive.open("rb") as source:
            restored = replace_volume_content(client, sys.argv[3], source)
        after_restore = status_mb("VmHWM")
        held = bytearray(120 << 20)  # proves the measure sees growth: must exceed the limit
        held[::4096] = b"x" * len(held[::4096])
        print(read.bytes, restored.bytes, after_read - base, after_restore - base,
              status_mb("VmHWM") - base)
        """
    )
    names = [str(volume.name), str(other.name), str(tmp_path / "big.tar")]
    result = subprocess.run(
        [sys.executable, "-c", script, engine.base_url, *names],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    read, restored, read_growth, total_growth, control = result.stdout.split()
    assert int(read) == int(restored) == 300 * MiB
    assert float(read_growth) < 60, result.stdout
    assert float(total_growth) < 60, result.stdout
    assert float(control) > 100, result.stdout
    with (
        (mountpoint(volume) / "big.img").open("rb") as a,
        (mountpoint(other) / "big.img").open("rb") as b,
    ):
        assert (
            hashlib.file_digest(a, "sha256").digest() == hashlib.file_digest(b, "sha256").digest()
        )
    assert helpers(client) == []


# ---- archives built here ----------------------------------------------------------------


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    link: str = "",
    mtime: int = 1_600_000_000,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_of(*entries: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, encoding="utf-8") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()
