"""Docker volumes read and written through the engine's API, for any engine DOCKER_HOST names,
remote ones too: unlike the direct path (:mod:`.volume`: the host mountpoint, as root), this
host needs no access to the engine's folders.

- Reading: a helper from the empty image mounts the volume read-only and is only created, never
  started; ``GET /containers/ID/archive?path=/v/.`` streams Docker's tar of it (``./...``). Each
  header is re-encoded as :func:`write_tree` writes it and file data passes on as it came, so
  for a volume that does not change meanwhile the bytes equal ``write_tree(mountpoint)``'s.
- Restoring: members are checked with extract.py's rules while they are spooled, re-encoded, to
  an anonymous temp file; only then (and after ``before_swap``) does the engine unpack the
  spool into a hidden staging folder in the volume, and a busybox helper swaps it in by renames
  (:mod:`.helper_swap`). Given a ``SwapJournal``, the swap is journalled in the repository: a
  kill at any instant leaves the volume old or new once the next command has run.
"""

from __future__ import annotations

import math
import os
import secrets
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, closing
from typing import IO, cast

import docker

from ...errors import DockerUnavailable, IntegrityError, RestoreError, SafeholdError
from ...model import ByteSink, ByteSource, Event, EventSink, null_sink
from ...sources.docker.engine import refuse_if_in_use, unavailable, volume_mountpoint
from ...sources.docker.helper_image import (
    DOCKER_ERRORS,
    MOUNT,
    ensure_busybox_image,
    ensure_empty_image,
    helper_container,
)
from ...sources.tar.headers import entries
from ...sources.tar.names import SET_ID, SPECIAL, link_target_problem, member_path
from ...sources.tar.tree import BLOCK, CHUNK, TreeFacts, _TarOut, gnu_header
from ...sources.tar.unpack import ExtractFacts, damaged
from .api_swap import STAGE, root_meta, unpack_and_swap
from .extract import Source, SwapJournal

# The kernel stops following a symlink chain after 40 links; a longer one cannot lead anywhere.
MAX_HOPS = 128
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


def read_volume_tar(
    client: docker.DockerClient, name: str, out: ByteSink, *, events: EventSink = null_sink
) -> TreeFacts:
    """Write the volume's content to ``out`` as an uncompressed tar stream, entries relative
    to its root like ``tar cf - -C ROOT .`` gives (``./``, ``./a/b``), with numeric owners,
    modes, mtimes, symlinks, hardlinks and empty folders; facts counted like write_tree's.

    Unlike write_tree: the engine leaves sockets out silently (fifos and devices are dropped
    here with a warning); a file that grows while read is cut by the engine without notice and
    one that shrinks ends its archive early, which fails here (so ``changed`` stays 0).
    """
    volume_mountpoint(client, name)  # it must exist: a helper would quietly create it
    events(Event("backup", f"reading volume {name} through the Docker engine's API"))
    with ExitStack() as stack:
        try:
            image = ensure_empty_image(client)
            helper = helper_container(client, image, name, ["/never-run"], events, read_only=True)
            h = stack.enter_context(helper)
            chunks, _ = client.api.get_archive(str(h.id), f"{MOUNT}/.", chunk_size=CHUNK)
        except DOCKER_ERRORS as exc:
            raise unavailable(exc) from exc
        # Closing drops the response, so the engine stops sending when the sink failed.
        stack.enter_context(closing(chunks))
        return _rehead(chunks, out, events)


def replace_volume_content(
    client: docker.DockerClient,
    name: str,
    archive: ByteSource,
    *,
    events: EventSink = null_sink,
    before_swap: Callable[[ExtractFacts], None] | None = None,
    keep_setuid: bool = True,
    journal_to: SwapJournal | None = None,
) -> ExtractFacts:
    """Replace the content of volume ``name`` with the tar stream ``archive`` (decompressed).

    All or nothing: the whole stream is read and checked with extract.py's rules (absolute
    paths, ``..``, paths through symlinks, absolute or escaping symlinks and chains of them,
    hardlinks to anything but an earlier file, devices and fifos: IntegrityError) while it is
    spooled, re-encoded, to a temp file in TMPDIR, which needs room for the archive (memory
    holds only the names of its entries). Then ``before_swap(facts)`` may veto; only after
    that does the engine unpack it beside the current content and swap it in, so the volume
    ends up holding exactly the archive, with owners, modes, mtimes (whole seconds) and
    links. Refused while a running container uses the volume. Headers are read as GNU tar
    reads them (:mod:`.extract_headers`), but sparse members are refused: the engine would
    write their holes as zeros. A file the spool's filesystem has no room for is refused
    before it is spooled, and ``keep_setuid=False`` drops the setuid/setgid bits of files
    (a warning event each), as extract.py does. ``journal_to``: journal the swap, so a kill
    of safehold, of the helper or of the engine is undone or finished by the next command.
    """
    volume_mountpoint(client, name)
    token = secrets.token_hex(6)
    with tempfile.TemporaryFile(prefix="safehold-volume-") as spool:
        stager = _Stager(name, f"{MOUNT[1:]}/{STAGE}{token}", spool, keep_setuid, events)
        try:
            stager.run(Source(archive))
        except OSError as exc:
            raise RestoreError(
                f"cannot spool the archive for volume {name}: {exc.strerror or exc}",
                hint="free space in TMPDIR or point it at a bigger disk; the volume was left "
                "as it was",
            ) from exc
        if before_swap is not None:
            before_swap(stager.facts)
        spool.seek(0)
        try:
            refuse_if_in_use(client, name)
            image = ensure_busybox_image(client)
            upload = iter(lambda: spool.read(CHUNK), b"")
            meta = root_meta(stager.root)
            unpack_and_swap(client, image, upload, name, token, meta, events, journal_to)
        except DOCKER_ERRORS as exc:
            raise unavailable(exc) from exc
    events(Event("restore", f"restored {stager.facts.files} files into volume {name}"))
    return stager.facts


def _stat(mode: int, uid: int, gid: int, size: int, mtime: int) -> os.stat_result:
    """What gnu_header reads of an entry, for one that exists only as a tar header."""
    fields = (mode, 0, 0, 1, uid, gid, size, 0, mtime, 0)
    return os.stat_result(fields, {"st_mtime_ns": mtime * 1_000_000_000})


class _Pull:
    """A stream of chunks read in exact amounts, tar header by header; file data is handed on
    in place, so it is copied once (into _TarOut's buffer)."""

    def __init__(
        self, chunks: Iterable[bytes], broken: Callable[[BaseException | None], SafeholdError]
    ) -> None:
        self._chunks = iter(chunks)
        self._view = memoryview(b"")
        self._broken = broken  # the error for a stream that fails, or (None) ends early

    def take(self, size: int, sink: Callable[[bytes], object] | None = None) -> bytes:
        parts = []
        while size:
            while not self._view:
                try:
                    chunk = next(self._chunks, None)
                except DOCKER_ERRORS as exc:  # the stream's own failures, not the sink's
                    raise self._broken(exc) from exc
                if chunk is None:
                    raise self._broken(None)
                self._view = memoryview(chunk)
            piece, self._view = self._view[:size], self._view[size:]
            size -= len(piece)
            if sink is None:
                parts.append(piece)
            else:
                sink(cast(bytes, piece))  # _TarOut copies it, so a view is fine
        return b"".join(parts)

    def members(self, damaged: Callable[[str], SafeholdError]) -> Iterator[tarfile.TarInfo]:
        """Each member with its extended headers applied as GNU tar applies them
        (:mod:`.extract_headers`). The data of a regular one (size rounded up to whole
        blocks) must be taken before the next; other types have none, whatever their size
        field says (as tarfile and Go's reader do). A sparse member comes as GNUTYPE_SPARSE,
        its map already read."""
        for entry in entries(self.take, damaged):
            if entry.pieces is not None:
                entry.info.type = tarfile.GNUTYPE_SPARSE  # its data is pieces, not the file
            yield entry.info

    def rest(self) -> None:
        for _ in self._chunks:
            pass


def _rehead(chunks: Iterable[bytes], out: ByteSink, events: EventSink) -> TreeFacts:
    """Docker's tar of a volume, each header re-encoded as write_tree writes it."""
    source, tar, facts = _Pull(chunks, _engine_broken), _TarOut(out), TreeFacts()
    dropped: set[str] = set()  # special files left out, and so hardlinks to them
    for info in source.members(_engine_error):
        name, link, kind, size = info.name.rstrip("/") or "/", info.linkname, info.type, info.size
        if name != "." and not name.startswith("./"):
            raise _engine_error(f"the member {name!r}")
        st = _stat(info.mode, info.uid, info.gid, size, int(info.mtime))
        if kind in _REGULAR:
            tar.put(gnu_header(name, tarfile.REGTYPE, st))
            source.take(size + -size % BLOCK, tar.put)
            facts.files += 1
            facts.bytes += size
        elif kind == tarfile.DIRTYPE:
            tar.put(gnu_header(name, kind, st))
            facts.dirs += 1
        elif kind == tarfile.SYMTYPE or (kind == tarfile.LNKTYPE and link not in dropped):
            tar.put(gnu_header(name, kind, st, link))
            facts.symlinks += kind == tarfile.SYMTYPE
            facts.hardlinks += kind == tarfile.LNKTYPE
        elif kind in SPECIAL or kind == tarfile.LNKTYPE:
            dropped.add(name)
            facts.skipped += 1
            what = SPECIAL.get(kind, "hardlink to a special file")
            message = f"skipped {what} {name}: tar archives of volumes hold no special files"
            events(Event("tree", message, "warning", {"path": name, "reason": "special"}))
        else:
            raise _engine_error(f"the member {name!r} of tar type {kind!r}")
    tar.close()  # the rest of the engine's stream is the end marker and padding: not read
    return facts


def _engine_error(what: str) -> DockerUnavailable:
    return DockerUnavailable(
        f"the Docker engine's archive of the volume holds {what}, which safehold cannot read",
        hint="report this with the engine's version ('docker version'); the backup is void",
    )


def _engine_broken(exc: BaseException | None) -> SafeholdError:
    if exc is not None:
        return unavailable(exc)
    return DockerUnavailable(
        "the Docker engine's archive of the volume ended early",
        hint="a file that shrinks while the engine reads it ends its archive: stop the "
        "containers writing to the volume (label safehold.stop-during-backup=true) and retry",
    )


class _Stager:
    """Checks each member like extract.py and spools the accepted ones, re-headed, under the
    staging folder. Where extract.py asks its staging tree on disk, this keeps the tree's shape
    in memory: the names of its folders, files and symlinks (with their targets)."""

    def __init__(
        self, volume: str, stage: str, spool: IO[bytes], keep_setuid: bool, events: EventSink
    ) -> None:
        self._volume, self._stage, self._out = volume, stage, _TarOut(spool)
        self._spool, self._keep_setuid, self._events = spool.fileno(), keep_setuid, events
        self._dirs: set[str] = {""}  # real folders, never symlinks (listed or implicit)
        self._listed: set[str] = set()
        self._files: set[str] = set()
        self._links: dict[str, str] = {}
        self.root: tarfile.TarInfo | None = None
        self.facts = ExtractFacts()

    def run(self, archive: ByteSource) -> None:
        self._out.put(gnu_header(self._stage, tarfile.DIRTYPE, _stat(0o700, 0, 0, 0, 0)))
        chunks = iter(lambda: archive.read(CHUNK), b"")
        source = _Pull(chunks, lambda exc: damaged(exc or EOFError("unexpected end of data")))
        for member in source.members(lambda what: damaged(ValueError(what))):
            self._add(source, member)
        source.rest()  # the caller may hash the stream: let it see every byte
        for rel in self._links:
            if self._escapes(rel):
                raise self._refuse(f"./{rel}", "resolves outside the folder")
        self._out.close()

    def _add(self, source: _Pull, member: tarfile.TarInfo) -> None:
        rel = self._name(member.name, member)
        if not rel:
            if not member.isdir():
                raise self._refuse(member.name, "is the archive's root but not a folder")
            self.root = member  # the swap sets it on the volume's root; it is not staged
            self.facts.dirs += 1
            return
        linked = self._link_source(member, rel) if member.islnk() else ""
        self._ensure_dir(rel.rpartition("/")[0], member)
        if rel in self._dirs and not member.isdir():
            raise self._refuse(member.name, "would replace a folder of the archive")
        self._files.discard(rel)  # a later member replaces an earlier one, as with GNU tar
        self._links.pop(rel, None)
        staged = f"{self._stage}/{rel}"
        size = member.size if member.isreg() else 0
        mode = member.mode
        if member.isreg() and mode & SET_ID and not self._keep_setuid:
            mode &= ~SET_ID
            message = f"dropped the setuid/setgid bits of {member.name}: the archive has no "
            message += "safehold manifest; restore with --keep-setuid to keep them"
            data = {"path": member.name, "reason": "setuid"}
            self._events(Event("restore", message, "warning", data))
        st = _stat(mode, member.uid, member.gid, size, math.floor(member.mtime))
        if member.isdir():
            self.facts.dirs += rel not in self._listed
            self._dirs.add(rel)
            self._listed.add(rel)
            self._out.put(gnu_header(staged, tarfile.DIRTYPE, st))
        elif member.type == tarfile.GNUTYPE_SPARSE:
            raise self._refuse(member.name, "is stored sparse; restore it at the volume's folder")
        elif member.isreg():
            self._check_room(member)
            self._out.put(gnu_header(staged, tarfile.REGTYPE, st))
            source.take(size + -size % BLOCK, self._out.put)
            self._files.add(rel)
            self.facts.files += 1
            self.facts.bytes += size
        elif member.issym():
            self._check_link_target(rel, member)
            self._links[rel] = member.linkname
            self._out.put(gnu_header(staged, tarfile.SYMTYPE, st, member.linkname))
            self.facts.symlinks += 1
        elif member.islnk():
            self._out.put(gnu_header(staged, tarfile.LNKTYPE, st, f"{self._stage}/{linked}"))
            self._files.add(rel)
            self.facts.hardlinks += 1
        else:
            kind = SPECIAL.get(member.type, f"member of tar type {member.type!r}")
            raise self._refuse(member.name, f"is a {kind}; volumes are restored without them")

    def _name(self, name: str, member: tarfile.TarInfo) -> str:
        try:
            return member_path(name)
        except ValueError as why:
            raise self._refuse(member.name, str(why)) from None

    def _check_room(self, member: tarfile.TarInfo) -> None:
        fs = os.fstatvfs(self._spool)
        if member.size + CHUNK > fs.f_bavail * fs.f_frsize:  # CHUNK: the spool's own buffer
            raise RestoreError(
                f"cannot spool the archive for volume {self._volume}: member {member.name!r} "
                f"needs {member.size} bytes and TMPDIR has {fs.f_bavail * fs.f_frsize} free",
                hint="free space in TMPDIR or point it at a bigger disk (or the archive is a "
                "decompression bomb); the volume was left as it was",
            )

    def _ensure_dir(self, rel: str, member: tarfile.TarInfo) -> None:
        """Folders the archive does not list are made by the engine (0755, root)."""
        if rel in self._dirs:
            return
        done = ""
        for part in rel.split("/"):
            done = f"{done}/{part}" if done else part
            if done in self._links:
                raise self._refuse(member.name, f"goes through the symlink ./{done}")
            if done in self._files:
                raise self._refuse(member.name, f"needs ./{done} to be a folder, but it is a file")
            self._dirs.add(done)

    def _link_source(self, member: tarfile.TarInfo, rel: str) -> str:
        source = self._name(member.linkname, member)
        known = source in self._files or source in self._links
        if not known or source == rel or source.rpartition("/")[0] not in self._dirs:
            why = f"is a hardlink to {member.linkname}, not an earlier file"
            raise self._refuse(member.name, why)
        return source

    def _check_link_target(self, rel: str, member: tarfile.TarInfo) -> None:
        if (why := link_target_problem(rel, member.linkname)) is not None:
            raise self._refuse(member.name, why)

    def _escapes(self, rel: str) -> bool:
        """Resolve ./rel in the finished tree as the kernel would: True if it leaves the root."""
        done: list[str] = []
        todo = rel.split("/")[::-1]
        hops = 0
        while todo:
            part = todo.pop()
            if part == "..":
                if not done:
                    return True
                done.pop()
            elif part not in ("", "."):
                done.append(part)
                target = self._links.get("/".join(done))
                if target is not None:
                    hops += 1
                    if hops > MAX_HOPS:
                        return False
                    done.pop()
                    todo.extend(target.split("/")[::-1])
        return False

    def _refuse(self, name: str, why: str) -> IntegrityError:
        return IntegrityError(
            f"refusing to restore into volume {self._volume}: archive member {name!r} {why}",
            hint="this archive is not a safe volume backup; nothing was changed in the volume "
            "(inspect the archive with 'tar -tvf')",
        )
