"""The member-by-member half of :func:`~.extract.extract_tree`: each member checked and
written into the staging folder. The rules are listed in extract.py's docstring. The checks run
here, member after member; the creates and writes they allow run on a few threads
(:mod:`.extract_jobs`), each after what it depends on.

File data is written where the archive says it goes: a sparse member's pieces at their
offsets and the file then cut to its size, so holes stay holes (as GNU tar leaves them).
Before a file's data is written, the bytes it will take are checked against the free space
of the staging folder's filesystem, so an archive that would fill the disk (a decompression
bomb, or a backup too big for it) is refused before it does; the bytes written never exceed
the sizes the headers declared. With the manifest's byte count (``expected_bytes``) the whole
is checked against the free space before the first member, and an archive whose members add
up to more than the manifest records is refused at the member that crosses it.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ...errors import IntegrityError, StorageFull
from ...model import ByteSource, Event, EventSink
from .headers import Entry, Feed, entries
from .jobs import Jobs, Names, create, hardlink, lstat_mode, symlink
from .names import SET_ID, SPECIAL, link_target_problem, member_path

SMALL_FILE = 1 << 20  # bigger files are written as they stream in, not held in memory
IMPLICIT_DIR_MODE = 0o777  # folders the archive does not list: like GNU tar, umask decides


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


class Unpacker:
    def __init__(
        self,
        staging: Path,
        target: Path,
        *,
        keep_setuid: bool,
        events: EventSink,
        expected_bytes: int | None = None,
    ) -> None:
        self._staging = staging
        self._base = str(staging)
        self._expected = expected_bytes
        self._target = target
        self._keep_setuid = keep_setuid
        self._events = events
        self._owners = os.geteuid() == 0
        # The staging folder is new and private (0700): what is in it is what this run made,
        # so these say what is there without asking the disk.
        self._dirs: set[str] = {""}  # real folders (never symlinks), relative names
        self._names = Names()  # files, symlinks and hardlinks
        self._dir_meta: dict[str, Entry] = {}
        self._root_meta: Entry | None = None
        self._room = 0  # bytes known free on the staging filesystem, less those since used
        self._jobs = Jobs()
        self.facts = ExtractFacts()

    def run(self, source: ByteSource) -> None:
        if self._expected is not None:
            self._check_room(self._expected)
        feed = Feed(source, lambda: damaged(EOFError("unexpected end of data")))
        try:
            for entry in entries(feed.take, lambda what: damaged(ValueError(what))):
                self._add(feed, entry)
            self._jobs.wait_all()
        finally:
            self._jobs.close()  # on an error too: no thread may write once the caller cleans up
        feed.drain()

    def _add(self, feed: Feed, entry: Entry) -> None:
        member = entry.info
        rel = self._name(member.name, member)
        if not rel:
            if not member.isdir():
                raise self._refuse(member, "is the archive's root but not a folder")
            self._root_meta = entry
            self.facts.dirs += 1
            return
        # A hardlink's source is checked before anything at ``rel`` is replaced.
        source = self._link_source(member) if member.islnk() else ""
        parent = rel.rpartition("/")[0]
        self._ensure_dir(parent, member)
        kept = self._clear(rel, member)  # True: a folder made earlier (implicitly or listed)
        dest = f"{self._base}/{rel}"
        owner = (member.uid, member.gid) if self._owners else None
        if member.isdir():
            if not kept:  # writable while its content arrives; real mode at the end
                self._jobs.submit(rel, os.mkdir, dest, 0o700, after=(parent,))
            if rel not in self._dir_meta:
                self.facts.dirs += 1
            self._dirs.add(rel)
            self._dir_meta[rel] = entry
            return
        if member.isreg():
            self._write_file(feed, entry, rel, dest, owner)
        elif member.issym():
            self._check_link_target(rel, member)
            self._jobs.submit(
                rel, symlink, member.linkname, dest, owner, entry.mtime_ns, after=(parent,)
            )
            self.facts.symlinks += 1
        elif member.islnk():
            origin = f"{self._base}/{source}"
            self._jobs.submit(rel, hardlink, origin, dest, after=(parent, source))
            self.facts.hardlinks += 1
        else:
            kind = SPECIAL.get(member.type, f"member of tar type {member.type!r}")
            raise self._refuse(member, f"is a {kind}; volumes are restored without them")
        self._names.add(rel)

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
            above, done = done, f"{done}/{part}" if done else part
            if done in self._dirs:
                continue
            mode = 0
            if done in self._names:  # maybe a file or a link: look, once it is made
                self._jobs.wait_all()
                mode = lstat_mode(f"{self._base}/{done}")
            if stat.S_ISLNK(mode):
                raise self._refuse(member, f"goes through the symlink ./{done}")
            if mode and not stat.S_ISDIR(mode):
                raise self._refuse(member, f"needs ./{done} to be a folder, but it is a file")
            if not mode:
                path = f"{self._base}/{done}"
                self._jobs.submit(done, os.mkdir, path, IMPLICIT_DIR_MODE, after=(above,))
            self._dirs.add(done)

    def _clear(self, rel: str, member: tarfile.TarInfo) -> bool:
        """Make room at ``rel``; True when it is a folder that the member (a folder) keeps."""
        if rel in self._dirs:
            if member.isdir():
                return True
            raise self._refuse(member, "would replace a folder of the archive")
        if rel in self._names:
            # A later member replaces an earlier one, as with GNU tar: after the earlier one
            # and the hardlinks made from it are done.
            self._jobs.wait_all()
            if lstat_mode(f"{self._base}/{rel}"):
                os.unlink(f"{self._base}/{rel}")
        return False

    def _write_file(
        self, feed: Feed, entry: Entry, rel: str, dest: str, owner: tuple[int, int] | None
    ) -> None:
        member = entry.info
        if self._expected is not None and self.facts.bytes + member.size > self._expected:
            raise IntegrityError(
                f"refusing to restore into {self._target}: archive member {member.name!r} "
                f"takes it past the {self._expected} bytes of file data its manifest records",
                hint="the backup was replaced or damaged (or is a decompression bomb): restore "
                "another one ('safehold list' shows them); the folder was left as it was",
            )
        self._reserve(entry.stored, member)
        pieces = entry.pieces if entry.pieces is not None else [(0, entry.stored)]
        size = member.size if entry.pieces is not None else None
        meta = (owner, self._file_mode(member), entry.mtime_ns)
        parent = rel.rpartition("/")[0]
        if entry.padded <= SMALL_FILE:  # whole, to a thread; copied out of the stream's chunk
            data = [memoryview(feed.take(entry.padded))]
            args = (dest, pieces, data, size, *meta)
            self._jobs.submit(rel, create, *args, after=(parent,), held=entry.padded)
        else:  # streamed here: its data never waits in memory
            self._jobs.wait_for(parent)
            create(dest, pieces, feed.views(entry.stored), size, *meta)
            feed.take(entry.padded - entry.stored)
        self.facts.files += 1
        self.facts.bytes += member.size

    def _reserve(self, size: int, member: tarfile.TarInfo) -> None:
        """Refuse a file whose data the filesystem has no room left for; statvfs is asked
        again only when the room counted down since the last answer runs out."""
        if size <= self._room:
            self._room -= size
            return
        self._jobs.wait_all()  # the data of files still being written is not counted yet
        fs = os.statvfs(self._staging)
        self._room = fs.f_bavail * fs.f_frsize
        need = size + -size % fs.f_frsize if fs.f_frsize else size
        if need > self._room:
            raise StorageFull(
                f"cannot restore into {self._target}: archive member {member.name!r} needs "
                f"{need} bytes and only {self._room} are free on its filesystem",
                hint="free space there (or the archive is a decompression bomb); the folder "
                "was left as it was",
            )
        self._room -= need

    def _check_room(self, expected: int) -> None:
        """Before anything is written: the manifest's byte count must fit beside the content
        it replaces (the swap needs both at once)."""
        fs = os.statvfs(self._staging)
        free = fs.f_bavail * fs.f_frsize
        if expected > free:
            raise StorageFull(
                f"cannot restore into {self._target}: the backup holds {expected} bytes of file "
                f"data (its manifest) and only {free} are free on its filesystem",
                hint="free space there; the folder was left as it was (the restore needs room "
                "for the old and the new content at once, until the swap)",
            )

    def _file_mode(self, member: tarfile.TarInfo) -> int:
        mode = member.mode & 0o7777
        if mode & SET_ID and not self._keep_setuid:
            self._events(
                Event(
                    "restore",
                    f"dropped the setuid/setgid bits of {member.name} (mode {mode:04o} -> "
                    f"{mode & ~SET_ID:04o}): the archive has no safehold manifest; restore "
                    "with --keep-setuid to keep them",
                    "warning",
                    {"path": member.name, "reason": "setuid"},
                )
            )
            mode &= ~SET_ID
        return mode

    def _check_link_target(self, rel: str, member: tarfile.TarInfo) -> None:
        if (why := link_target_problem(rel, member.linkname)) is not None:
            raise self._refuse(member, why)

    def _link_source(self, member: tarfile.TarInfo) -> str:
        source = self._name(member.linkname, member)
        parent, _, _ = source.rpartition("/")
        mode = 0
        if source in self._names and parent in self._dirs:  # an earlier file: made by now?
            self._jobs.wait_for(source)
            mode = lstat_mode(f"{self._base}/{source}")
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
            with os.scandir(folders.pop()) as found:
                for entry in found:
                    if entry.is_symlink():
                        real = os.path.realpath(entry.path)
                        if real != root and not real.startswith(root + "/"):
                            rel = os.path.relpath(entry.path, self._staging)
                            raise refused(self._target, f"./{rel}", "resolves outside the folder")
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

    def root_meta(self) -> dict[str, int] | None:
        """The archive root's owner, mode and mtime, for the swap's journal entry: a swap
        finished by the next command must leave the folder as this run would have."""
        if self._root_meta is None:
            return None
        member = self._root_meta.info
        return {
            "uid": member.uid,
            "gid": member.gid,
            "mode": member.mode & 0o7777,
            "mtime_ns": self._root_meta.mtime_ns,
        }

    def _set_meta(self, path: Path, entry: Entry) -> None:
        member = entry.info
        set_meta(path, member.uid, member.gid, member.mode, entry.mtime_ns, owners=self._owners)

    def _refuse(self, member: tarfile.TarInfo, why: str) -> IntegrityError:
        return refused(self._target, member.name, why)


def set_meta(path: Path, uid: int, gid: int, mode: int, mtime_ns: int, *, owners: bool) -> None:
    # A folder's setgid bit is kept: it only makes new entries inherit the group.
    if owners:
        os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, mode & 0o7777)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def refused(target: Path, name: str, why: str) -> IntegrityError:
    return IntegrityError(
        f"refusing to restore into {target}: archive member {name!r} {why}",
        hint="this archive is not a safe volume backup; nothing was changed in the folder "
        "(inspect the archive with 'tar -tvf')",
    )


def damaged(exc: BaseException) -> IntegrityError:
    return IntegrityError(
        f"the archive is damaged or not a tar archive: {exc or type(exc).__name__}",
        hint="restore an older backup ('safehold list' shows them); the folder was left as it was",
    )
