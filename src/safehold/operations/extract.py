"""Extract a tar stream into a folder: all or nothing, and nothing outside the folder.

Refused, with an IntegrityError naming the member (the target is left as it was):

- names that are absolute or have a ``..`` component;
- device nodes, fifos, any type but file, folder, symlink and hardlink;
- symlinks whose target is absolute or climbs above the root. Absolute targets are refused
  although GNU tar extracts them and they can make sense inside a container
  (``/data/current -> /data/v2``): on the host that restores the volume they name the host's
  files, and any later tool that follows them (a backup, a ``chown -R``) would act there.
  Such an archive can still be unpacked by hand with GNU tar;
- hardlinks to anything but an earlier file of the archive;
- members that go through a symlink (``link -> sub``, then ``link/x``) or replace a folder.

Links chain: a link harmless when made can escape once a later member changes what its path
resolves to. So besides the per-member lexical checks, every symlink of the finished tree is
resolved again (``realpath``) before anything is swapped in.

All or nothing: members go into a staging folder (0700) on the target's filesystem, beside the
target, or hidden inside it when the target is a mount point (a volume). Only when the whole
stream passed, and the caller's ``before_swap`` agreed (the place to compare a sha256 or the
facts with the manifest), are the target's entries moved aside and the staged ones renamed
in. The target folder keeps its inode, so a container mounting it sees the new content, and
ends up holding exactly the archive. Owners are restored numerically (as root only); modes
and mtimes always, folders after their content.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, cast

from ..errors import IntegrityError, RestoreError, SafeholdError, UsageError
from ..model import ByteSource, Event, EventSink, null_sink

CHUNK = 1 << 20
IMPLICIT_DIR_MODE = 0o777  # folders the archive does not list: like GNU tar, umask decides
_SPECIAL = {
    tarfile.CHRTYPE: "device node",
    tarfile.BLKTYPE: "device node",
    tarfile.FIFOTYPE: "fifo",
}


def member_path(name: str) -> str:
    """A member's path relative to the root (``./a//b`` -> ``a/b``); ValueError saying why
    when it would leave the root."""
    if name.startswith("/"):
        raise ValueError("has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("climbs out of the folder with '..'")
    return "/".join(parts)


@dataclass
class ExtractFacts:
    """Counted like ``TreeFacts``: dirs include ``./``, bytes count each file once."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def extract_tree(
    stream: ByteSource,
    target: Path,
    *,
    events: EventSink = null_sink,
    before_swap: Callable[[ExtractFacts], None] | None = None,
) -> ExtractFacts:
    """Replace the content of ``target`` with the tar stream (already decompressed)."""
    target = Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UsageError(f"{target} is not a folder", hint="give the folder to restore into")
    exists = target.exists()
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    home = _scratch_home(target) if exists else target.parent
    if not exists:
        home.mkdir(parents=True, exist_ok=True)
    prefix = "." if home == target else f".{target.name}."
    staging = home / f"{prefix}safehold-extract-{token}"
    trash = home / f"{prefix}safehold-old-{token}"
    os.mkdir(staging, 0o700)
    swapped = False
    try:
        unpacker = _Unpacker(staging, target)
        unpacker.run(_Source(stream))
        unpacker.check_symlinks()
        if before_swap is not None:
            before_swap(unpacker.facts)
        unpacker.apply_dir_meta()
        if exists:
            os.mkdir(trash, 0o700)
            _swap(staging, target, trash, skip={staging.name, trash.name})
        else:
            os.rename(staging, target)
        swapped = True
        unpacker.apply_root_meta(target)
    except OSError as exc:
        hint = (
            "the content is restored, but not the folder's own owner, mode or mtime"
            if swapped
            else "free space or fix permissions; the folder was left as it was"
        )
        raise RestoreError(f"cannot restore into {target}: {exc.strerror or exc}", hint) from exc
    finally:
        for scratch in (staging, trash):
            if not _remove_tree(scratch):
                events(Event("restore", f"could not remove {scratch}; delete it", "warning"))
    events(Event("restore", f"restored {unpacker.facts.files} files into {target}"))
    return unpacker.facts


class _StreamTar(tarfile.TarFile):
    members: list[tarfile.TarInfo]  # set by TarFile; declared here to bound it (see run)


class _Source:
    """Reports any failure of the (decompressing) source as a damaged archive."""

    def __init__(self, inner: ByteSource) -> None:
        self._inner = inner

    def read(self, size: int = -1) -> bytes:
        try:
            return self._inner.read(size)
        except SafeholdError:
            raise
        except Exception as exc:
            raise _damaged(exc) from exc


class _Unpacker:
    def __init__(self, staging: Path, target: Path) -> None:
        self._staging = staging
        self._target = target
        self._owners = os.geteuid() == 0
        self._dirs: set[str] = {""}  # verified real folders (never symlinks), relative names
        self._dir_meta: dict[str, tarfile.TarInfo] = {}
        self._root_meta: tarfile.TarInfo | None = None
        self.facts = ExtractFacts()

    def run(self, source: _Source) -> None:
        try:
            with _StreamTar.open(
                fileobj=cast(IO[bytes], source),  # tarfile only calls read() in "r|" mode
                mode="r|",
                bufsize=CHUNK,
                encoding="utf-8",
                errors="surrogateescape",
            ) as tar:
                while (member := tar.next()) is not None:
                    self._add(tar, member)
                    # A stream-mode TarFile still keeps every header it read; let them go.
                    tar.members.clear()
        except (tarfile.TarError, EOFError) as exc:
            raise _damaged(exc) from exc
        while source.read(CHUNK):  # the caller may hash the stream: let it see every byte
            pass

    def _add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = self._name(member.name, member)
        if not rel:
            if not member.isdir():
                raise self._refuse(member, "is the archive's root but not a folder")
            self._root_meta = member
            self.facts.dirs += 1
            return
        # A hardlink's source is checked before anything at ``rel`` is replaced.
        source = self._link_source(member) if member.islnk() else ""
        parent = rel.rpartition("/")[0]
        self._ensure_dir(parent, member)
        dest = self._staging / rel
        kept = self._clear(dest, member)  # True: a folder made earlier (implicitly or listed)
        if member.isdir():
            if not kept:
                os.mkdir(dest, 0o700)  # writable while its content arrives; real mode at the end
            if rel not in self._dir_meta:
                self.facts.dirs += 1
            self._dirs.add(rel)
            self._dir_meta[rel] = member
        elif member.isreg():
            self._write_file(tar, member, dest)
        elif member.issym():
            self._check_link_target(rel, member)
            os.symlink(member.linkname, dest)
            if self._owners:
                os.lchown(dest, member.uid, member.gid)
            os.utime(dest, ns=_times(member), follow_symlinks=False)
            self.facts.symlinks += 1
        elif member.islnk():
            os.link(self._staging / source, dest, follow_symlinks=False)
            self.facts.hardlinks += 1
        else:
            kind = _SPECIAL.get(member.type, f"member of tar type {member.type!r}")
            raise self._refuse(member, f"is a {kind}; volumes are restored without them")

    def _name(self, name: str, member: tarfile.TarInfo) -> str:
        try:
            return member_path(name)
        except ValueError as why:
            raise self._refuse(member, str(why)) from None

    def _ensure_dir(self, rel: str, member: tarfile.TarInfo) -> None:
        """Make ``rel`` a real folder inside staging; refuse paths through symlinks or files."""
        if rel in self._dirs:
            return
        done = ""
        for part in rel.split("/"):
            done = f"{done}/{part}" if done else part
            if done in self._dirs:
                continue
            path = self._staging / done
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                os.mkdir(path, IMPLICIT_DIR_MODE)
                mode = stat.S_IFDIR
            if stat.S_ISLNK(mode):
                raise self._refuse(member, f"goes through the symlink ./{done}")
            if not stat.S_ISDIR(mode):
                raise self._refuse(member, f"needs ./{done} to be a folder, but it is a file")
            self._dirs.add(done)

    def _clear(self, dest: Path, member: tarfile.TarInfo) -> bool:
        """Make room at ``dest``; True when it is a folder that the member (a folder) keeps."""
        try:
            mode = os.lstat(dest).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            if member.isdir():
                return True
            raise self._refuse(member, "would replace a folder of the archive")
        os.unlink(dest)  # a later member replaces an earlier one, as with GNU tar
        return False

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
        reader = tar.extractfile(member)
        assert reader is not None, "regular members always have a reader"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(dest, flags, 0o600)
        try:
            while chunk := reader.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            if self._owners:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears set-id bits
            os.utime(fd, ns=_times(member))
        finally:
            os.close(fd)
        self.facts.files += 1
        self.facts.bytes += member.size

    def _check_link_target(self, rel: str, member: tarfile.TarInfo) -> None:
        link = member.linkname
        if link.startswith("/"):
            raise self._refuse(member, f"is a symlink to the absolute path {link}")
        depth = rel.count("/")  # folders between the root and the link
        for part in link.split("/"):
            if part == "..":
                depth -= 1
                if depth < 0:
                    raise self._refuse(member, f"is a symlink to {link}, outside the folder")
            elif part not in ("", "."):
                depth += 1

    def _link_source(self, member: tarfile.TarInfo) -> str:
        source = self._name(member.linkname, member)
        parent, _, _ = source.rpartition("/")
        try:
            mode = os.lstat(self._staging / source).st_mode
        except FileNotFoundError:
            mode = 0
        if not source or mode == 0 or stat.S_ISDIR(mode) or parent not in self._dirs:
            raise self._refuse(member, f"is a hardlink to {member.linkname}, not an earlier file")
        return source

    def check_symlinks(self) -> None:
        """Resolve every symlink of the finished tree: chains must not lead outside either."""
        if not self.facts.symlinks:
            return
        root = os.path.realpath(self._staging)
        folders = [self._staging]
        while folders:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        real = os.path.realpath(entry.path)
                        if real != root and not real.startswith(root + "/"):
                            rel = os.path.relpath(entry.path, self._staging)
                            raise _refused(self._target, f"./{rel}", "resolves outside the folder")
                    elif entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))

    def apply_dir_meta(self) -> None:
        # Deepest first: setting a parent's mtime (or a read-only mode) must come after its
        # content is complete.
        for rel in sorted(self._dir_meta, key=lambda name: name.count("/"), reverse=True):
            self._set_meta(self._staging / rel, self._dir_meta[rel])

    def apply_root_meta(self, target: Path) -> None:
        if self._root_meta is not None:
            self._set_meta(target, self._root_meta)

    def _set_meta(self, path: Path, member: tarfile.TarInfo) -> None:
        if self._owners:
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
        os.chmod(path, member.mode & 0o7777)
        os.utime(path, ns=_times(member))

    def _refuse(self, member: tarfile.TarInfo, why: str) -> IntegrityError:
        return _refused(self._target, member.name, why)


def _swap(staging: Path, target: Path, trash: Path, skip: set[str]) -> None:
    """Move the target's entries into ``trash`` and the staged ones in; undo on failure."""
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for name in os.listdir(target):
            if name not in skip:
                os.rename(target / name, trash / name)
                moved_out.append(name)
        for name in os.listdir(staging):
            os.rename(staging / name, target / name)
            moved_in.append(name)
    except OSError:
        for name in moved_in:
            with contextlib.suppress(OSError):
                os.rename(target / name, staging / name)
        for name in moved_out:
            with contextlib.suppress(OSError):
                os.rename(trash / name, target / name)
        raise


def _scratch_home(target: Path) -> Path:
    """Beside the target when that is the same filesystem (renames must not cross one)."""
    parent = target.resolve().parent
    same_fs = os.stat(parent).st_dev == os.stat(target).st_dev
    return parent if same_fs and os.access(parent, os.W_OK | os.X_OK) else target


def _remove_tree(path: Path) -> bool:
    """Remove a scratch folder, also when it holds folders without write permission."""
    if not os.path.lexists(path):
        return True
    if os.geteuid() != 0:
        folders = [str(path)]
        while folders:
            folder = folders.pop()
            with contextlib.suppress(OSError):
                os.chmod(folder, 0o700)
                with os.scandir(folder) as entries:
                    folders.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
    try:
        shutil.rmtree(path)
    except OSError:
        return False
    return True


def _times(member: tarfile.TarInfo) -> tuple[int, int]:
    mtime = member.mtime
    ns = mtime * 1_000_000_000 if isinstance(mtime, int) else round(mtime * 1e9)
    return ns, ns


def _refused(target: Path, name: str, why: str) -> IntegrityError:
    return IntegrityError(
        f"refusing to restore into {target}: archive member {name!r} {why}",
        hint="this archive is not a safe volume backup; nothing was changed in the folder "
        "(inspect the archive with 'tar -tvf')",
    )


def _damaged(exc: BaseException) -> IntegrityError:
    return IntegrityError(
        f"the archive is damaged or not a tar archive: {exc or type(exc).__name__}",
        hint="restore an older backup ('safehold list' shows them); the folder was left as it was",
    )
