"""The deep half of ``safehold verify --level full``: read an artifact end to end as what it is.

The readers take the stream the caller hashes (one pass) and raise ``IntegrityError`` when the
content is damaged or not what its name says. A dump goes to two ``pg_restore`` processes at
once: ``--list`` reads the table of contents at the head; ``--file=/dev/null`` reads (and
inflates) every data block to the end. An archive is read member by member, every file's data,
counted like ``ExtractFacts`` (bytes count each file once, hardlinks not again).
"""

from __future__ import annotations

import contextlib
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, cast

from ... import _proc, naming
from ...compress import ZstdError, open_decompressor, zstd_reader
from ...errors import IntegrityError, SafeholdError, ToolError
from ...model import ByteSource, Kind, Manifest
from ...sources.postgres import PgTarget, require_tool_for
from ..volumes.extract import ExtractFacts

CHUNK = 1 << 20
DUMP_COMPRESSIONS = ("pg_dump-gzip", "none", "zstd")
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
DAMAGED_HINT = "restore an older backup ('safehold list' shows them)"


class Guarded:
    """Reports any failure of a (decompressing) source as a damaged artifact."""

    def __init__(self, inner: ByteSource, name: str) -> None:
        self._inner = inner
        self._name = name

    def read(self, size: int = -1) -> bytes:
        try:
            return self._inner.read(size)
        except SafeholdError:
            raise
        except Exception as exc:
            why = f"it does not decompress: {exc or type(exc).__name__}"
            raise damaged(self._name, why) from exc


class ZstdFrameWatch:
    """Follows zstd frame and block headers in the stored bytes (no decompressing), so a file
    cut inside a frame fails: python-zstandard's stream reader ends quietly there."""

    def __init__(self, inner: ByteSource) -> None:
        self._inner = inner
        self._header = bytearray()
        self._need, self._skip, self._checksum = 4, 0, False
        self._step: Callable[[bytes], tuple[int, int]] = self._magic

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        if not data and (self._step != self._magic or self._header or self._skip):
            raise ZstdError("the stream ends inside a frame: the file was cut short")
        view = memoryview(data)
        while view:
            if self._skip:
                take = min(self._skip, len(view))
                self._skip -= take
                view = view[take:]
                continue
            take = min(self._need - len(self._header), len(view))
            self._header += view[:take]
            view = view[take:]
            if len(self._header) == self._need:
                raw = bytes(self._header)
                self._header.clear()
                self._need, self._skip = self._step(raw)
        return data

    def _magic(self, raw: bytes) -> tuple[int, int]:
        magic = int.from_bytes(raw, "little")
        if magic == 0xFD2FB528:
            self._step = self._descriptor
            return 1, 0
        if magic & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame: its size, then its content
            self._step = self._skippable
            return 4, 0
        raise ZstdError(f"no zstd frame starts here (magic {magic:#010x})")

    def _skippable(self, raw: bytes) -> tuple[int, int]:
        self._step = self._magic
        return 4, int.from_bytes(raw, "little")

    def _descriptor(self, raw: bytes) -> tuple[int, int]:
        single = raw[0] >> 5 & 1
        self._checksum = bool(raw[0] & 4)
        self._step = self._block
        window = 0 if single else 1
        return 3, window + (0, 1, 2, 4)[raw[0] & 3] + (single, 2, 4, 8)[raw[0] >> 6]

    def _block(self, raw: bytes) -> tuple[int, int]:
        header = int.from_bytes(raw, "little")
        kind = header >> 1 & 3
        if kind == 3:
            raise ZstdError("a zstd block of the reserved type")
        size = 1 if kind == 1 else header >> 3  # an RLE block stores its one byte
        if header & 1:  # the frame's last block, then its checksum if it has one
            self._step = self._magic
            return 4, size + 4 * self._checksum
        return 3, size


def damaged(name: str, why: str) -> IntegrityError:
    return IntegrityError(f"backup {name} is damaged: {why}", hint=DAMAGED_HINT)


# --- database dumps ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DumpContent:
    """What pg_restore found: the TABLE DATA entries of the table of contents."""

    toc_entries: int
    table_data: list[str]  # the text after "TABLE DATA ": "schema name owner"

    def names(self) -> list[str]:  # "schema.table" as in the manifest (first space cut)
        return [".".join(entry.split(" ")[:2]) for entry in self.table_data]


class _Child:
    """One pg_restore fed through its stdin; a child that stops reading is simply left out."""

    def __init__(self, argv: list[str], *, capture: bool) -> None:
        self.out = tempfile.TemporaryFile() if capture else None  # noqa: SIM115
        out = self.out if self.out is not None else subprocess.DEVNULL
        self.proc = _proc.spawn(argv, stdin=subprocess.PIPE, stdout=out)
        assert self.proc.stdin is not None and self.proc.stderr is not None
        _proc.widen_pipe(self.proc.stdin.fileno())
        self.stdin: IO[bytes] | None = self.proc.stdin
        self.tail = _proc.StderrTail(self.proc.stderr)

    def feed(self, data: bytes) -> None:
        try:
            if self.stdin is not None:
                self.stdin.write(data)
        except BrokenPipeError:
            self.stop(kill=False)

    def stop(self, *, kill: bool = True) -> None:
        if self.stdin is not None:
            with contextlib.suppress(OSError):
                self.stdin.close()
            self.stdin = None
        if kill:
            _proc.stop(self.proc)
            if self.out is not None:
                self.out.close()

    def finish(self) -> tuple[int, str, str]:
        self.stop(kill=False)
        code = self.proc.wait()
        stdout = b""
        if self.out is not None:
            with self.out:
                self.out.seek(0)
                stdout = self.out.read()
        return code, stdout.decode("utf-8", "replace"), self.tail.text()


def read_dump(stream: ByteSource, name: str, tool: str) -> DumpContent:
    """Read a whole (decompressed) custom-format dump with pg_restore; return its TOC."""
    source = Guarded(stream, name)
    children = [_Child([tool, "--list"], capture=True)]
    try:
        children.append(_Child([tool, "--file=/dev/null"], capture=False))
        while chunk := source.read(CHUNK):
            for child in children:
                child.feed(chunk)
    except BaseException:
        for child in children:
            child.stop()
        raise
    list_code, listing, list_err = children[0].finish()
    read_code, _, read_err = children[1].finish()
    for code, err in ((list_code, list_err), (read_code, read_err)):
        if code and "unsupported version" in err:
            raise ToolError(
                f"{tool} is too old to read this dump: {_last_line(err)}",
                hint="install the client tools of the server backed up, or set database.pg_bin_dir",
            )
    if list_code != 0 and ("end of file" in list_err or "is too short" in list_err):
        raise damaged(name, f"pg_restore cannot read its table of contents: {_last_line(list_err)}")
    if list_code != 0:
        raise IntegrityError(
            f"{name} is not a PostgreSQL custom-format dump: pg_restore --list says "
            f"{_last_line(list_err)}",
            hint=f"{DAMAGED_HINT}; safehold restores files of safehold backup or pg_dump -Fc",
        )
    if read_code != 0:
        raise damaged(name, f"pg_restore cannot read it to the end: {_last_line(read_err)}")
    entries = [ln for ln in listing.splitlines() if ln and not ln.startswith(";")]
    data = [ln.split(" TABLE DATA ", 1)[1] for ln in entries if " TABLE DATA " in ln]
    return DumpContent(len(entries), data)


def _last_line(text: str) -> str:
    lines = [ln.removeprefix("pg_restore: ").strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["no message"])[-1]


def compare_tables(name: str, expected: list[str], content: DumpContent) -> None:
    """Every table of the manifest has a TABLE DATA entry, and every entry is in the manifest.
    The TOC separates schema, name and owner by unquoted spaces: every cut is tried."""
    wanted = {key.replace("\r", " ").replace("\n", " ") for key in expected}
    seen: set[str] = set()
    extra: list[str] = []
    for entry, simple in zip(content.table_data, content.names(), strict=True):
        keys = _readings(entry) & wanted
        seen |= keys
        if not keys:
            extra.append(simple)
    missing = sorted(wanted - seen)
    parts = [f"tables missing from the dump: {_some(missing)}"] if missing else []
    if extra:
        parts.append(f"tables in the dump but not in the manifest: {_some(sorted(extra))}")
    if not parts:
        return
    raise IntegrityError(
        f"backup {name} does not match its manifest ({'; '.join(parts)})",
        hint="the dump or its manifest was changed; restore an older backup ('safehold list' "
        "shows them)",
    )


def _readings(entry: str) -> set[str]:
    words = entry.split(" ")
    return {
        f"{' '.join(words[:cut])}.{' '.join(words[cut:end])}"
        for cut in range(1, len(words))
        for end in range(cut + 1, len(words) + 1)
    }


def _some(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# --- volume archives --------------------------------------------------------------------------


def read_archive(stream: ByteSource, name: str) -> ExtractFacts:
    """Read every member of a (decompressed) tar stream, then the stream to its end."""
    source = Guarded(stream, name)
    content = ExtractFacts()
    dirs: set[str] = set()
    try:
        with tarfile.open(
            fileobj=cast(IO[bytes], source),  # tarfile only calls read() in "r|" mode
            mode="r|",
            bufsize=CHUNK,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tar:
            while (member := tar.next()) is not None:
                if member.isreg():
                    reader = tar.extractfile(member)
                    assert reader is not None, "regular members always have a reader"
                    while reader.read(CHUNK):
                        pass
                    content.files += 1
                    content.bytes += member.size
                elif member.isdir():
                    rel = "/".join(p for p in member.name.split("/") if p not in ("", "."))
                    if rel not in dirs:  # a folder listed twice is one folder
                        dirs.add(rel)
                        content.dirs += 1
                elif member.issym():
                    content.symlinks += 1
                elif member.islnk():
                    content.hardlinks += 1
                tar.members.clear()  # type: ignore[attr-defined]  # stream mode keeps headers
    except (tarfile.TarError, EOFError) as exc:
        raise damaged(name, f"it is not a complete tar archive: {exc}") from exc
    while source.read(CHUNK):  # the padding and the compressed stream's end (gzip's CRC)
        pass
    return content


def compare_counts(name: str, expected: dict[str, object], content: ExtractFacts) -> None:
    found = asdict(content)
    wrong = [
        f"{key}: {found[key]}, expected {expected[key]}"
        for key in ("files", "bytes")
        if expected.get(key) != found[key]
    ]
    if wrong:
        raise IntegrityError(
            f"backup {name} does not match its manifest ({', '.join(wrong)})",
            hint="the archive or its manifest was changed; restore an older backup "
            "('safehold list' shows them)",
        )


# --- an artifact read as its kind, then compared with its manifest --------------------------


def pg_restore_tool(bin_dir: Path | None, manifest: Manifest | None) -> str:
    """pg_restore, refused (ToolError) when older than the server the dump came from."""
    server = manifest.facts.get("server_version_num", 0) if manifest is not None else 0
    tool, _ = require_tool_for(PgTarget(bin_dir=bin_dir), "pg_restore", int(server or 0))
    return tool


def compression_of(path: Path, kind: Kind, manifest: Manifest | None) -> str:
    """The manifest's word for it, or what the first bytes say for a file without one."""
    if manifest is not None:
        known = DUMP_COMPRESSIONS if kind == "database" else naming.VOLUME_COMPRESSIONS
        if manifest.compression not in known:
            raise IntegrityError(
                f"the manifest of {path.name} names an unknown compression "
                f"{manifest.compression!r}",
                hint=f"{DAMAGED_HINT}; the manifest was edited or not written by safehold backup",
            )
        return manifest.compression
    with path.open("rb") as fh:
        head = fh.read(4)
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), "none")


def read_content(
    name: str, kind: Kind, compression: str, stream: ByteSource, tool: str
) -> DumpContent | ExtractFacts:
    if compression == "zstd":
        with zstd_reader(ZstdFrameWatch(stream)) as plain:
            if kind == "database":
                return read_dump(plain, name, tool)
            return read_archive(plain, name)
    if kind == "database":
        return read_dump(stream, name, tool)  # pg_dump's own gzip is inside the format
    return read_archive(open_decompressor(compression, stream), name)


def describe(content: DumpContent | ExtractFacts) -> dict[str, Any]:
    """What a full read found, for the record."""
    if isinstance(content, DumpContent):
        return {"toc_entries": content.toc_entries, "tables": len(content.table_data)}
    return content.to_json()


def compare_content(name: str, manifest: Manifest, content: DumpContent | ExtractFacts) -> None:
    facts = manifest.facts
    if isinstance(content, DumpContent):
        if not isinstance(facts.get("tables"), dict):
            raise _no_facts(name, "table list")
        compare_tables(name, list(facts["tables"]), content)
        return
    if not all(isinstance(facts.get(key), int) for key in ("files", "bytes")):
        raise _no_facts(name, "file count and bytes")
    compare_counts(name, facts, content)


def _no_facts(name: str, what: str) -> IntegrityError:
    return IntegrityError(
        f"the manifest of {name} records no {what}, so the content cannot be checked",
        hint=f"{DAMAGED_HINT}; the manifest was edited or not written by safehold backup",
    )
