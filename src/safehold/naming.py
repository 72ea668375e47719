"""Artifact names: the seed's conventions, parsed and produced in one place.

``db_backup_YYYYMMDD_HHMMSS.sql[.zst]`` (``db_backup_NAME_YYYYMMDD_HHMMSS.sql[.zst]`` when
several databases are configured: ``[database] names``, see ``database_name_problem``) and
``volume_NAME_YYYYMMDD_HHMMSS.tar.gz|.tar.zst``, timestamps in UTC. Beside them:
``db_globals_[NAME_]YYYYMMDD_HHMMSS.sql`` (the roles and database settings a dump needs,
plain SQL for ``psql``, same stamp and name as its dump) and
``safety_volume_NAME_YYYYMMDD_HHMMSS.tar.gz|.tar.zst`` (a volume's content taken before a
restore replaced it). ``.age`` is appended to an encrypted one. Anything else in a repository
folder is not a backup artifact.
"""

from __future__ import annotations

import re
import typing
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .model import Kind

STAMP_FORMAT = "%Y%m%d_%H%M%S"

# --- the repository's layout: every folder and key safehold writes besides the artifacts, formed
# here and nowhere else, listed in docs/design.md's "Repository layout" (a test holds the two
# together). The same keys on local disk and under an S3 prefix.
META = ".safehold"
MANIFEST_DIR = f"{META}/manifests"  # <artifact>.json: the commit record of each backup
SETS_DIR = f"{META}/sets"  # <set-id>.json: a full-system backup's members
PINS_DIR = f"{META}/pins"  # <artifact>.json: kept from prune (until a date)
VERIFY_DIR = f"{META}/verify"  # <artifact>.json: the last verification
DRILLS_DIR = f"{META}/drills"  # <drill-id>.json: restore drills and DR rehearsals
RUNS_DIR = f"{META}/runs"  # <run-id>.json: one per run of a command that does work
OBJECTIVES_KEY = f"{META}/objectives.json"  # in a location: its host's RPO/RTO (fleet)
JOURNAL_DIR = f"{META}/journal"  # <kind>-<id>.json: what a run may leave, until finished
PRUNING_DIR = f"{META}/pruning"  # prune's intent records
TMP_DIR = f"{META}/tmp"  # noqa: S108 (in the repository) scratch files of a run
LOCKS_DIR = f"{META}/locks"  # per-target lock files
LOCK_FILE = f"{META}/lock"  # the repository lock (flock) and its holder record
REPOSITORY_KEY = f"{META}/keys/repository-key.age"  # passphrase mode: the wrapped identity
WAL_DIR = "wal"  # <segment>.zst[.age] + <segment>.sha256: the WAL archive
WAL_MARKERS_DIR = f"{WAL_DIR}/.ahead"  # segments already pushed ahead of the server
BASE_DIR = "base"  # base_<stamp>.tar.zst[.age] + .json: PITR base backups
PROBE_PREFIX = ".safehold-doctor-probe-"  # + pid and token: doctor's write test of a location
CHUNKS_DIR = "chunks"  # the deduplicating chunk store (format = "chunked"), docs/chunkstore.md
CHUNKS_CONFIG = f"{CHUNKS_DIR}/config"  # written once at init: chunker, recipients, key check
CHUNKS_ID_KEY = f"{CHUNKS_DIR}/keys/id-key.age"  # the id key, encrypted to the recipients
CHUNKS_PACKS = f"{CHUNKS_DIR}/packs"  # <2hex>/<32hex>: age-encrypted packs of chunks
CHUNKS_INDEX = f"{CHUNKS_DIR}/index"  # <32hex>: which pack holds which chunk
CHUNKS_SNAPSHOTS = f"{CHUNKS_DIR}/snapshots"  # <stamp>-<16hex>: the commit record of each
CHUNKS_LOCKS = f"{CHUNKS_DIR}/locks"  # <32hex>: shared (backup) and exclusive (prune) locks
CHUNKS_PINS = f"{CHUNKS_DIR}/pins"  # <snapshot-id>.<16hex>: a pin (kept from prune, until a date)
CHUNKS_HOST_KEY = f"{META}/keys/chunk-id.key"  # the backup host's id key (0600, never copied)
CHUNKS_CACHE = f"{META}/cache/chunks"  # snapshot headers, index and files cache (rebuildable)

LAYOUT = (
    MANIFEST_DIR, SETS_DIR, PINS_DIR, VERIFY_DIR, DRILLS_DIR, RUNS_DIR, JOURNAL_DIR, PRUNING_DIR,
    TMP_DIR, LOCKS_DIR, LOCK_FILE, REPOSITORY_KEY, WAL_DIR, WAL_MARKERS_DIR, BASE_DIR,
    PROBE_PREFIX, CHUNKS_CONFIG, CHUNKS_ID_KEY, CHUNKS_PACKS, CHUNKS_INDEX, CHUNKS_SNAPSHOTS,
    CHUNKS_LOCKS, CHUNKS_PINS, CHUNKS_HOST_KEY, CHUNKS_CACHE, OBJECTIVES_KEY,
)  # fmt: skip

# Links the seed's commands rely on; they always point at the newest good backup.
DB_LATEST_LINKS = ("db_backup_latest.sql", "latest_db_backup.sql")

# The stamp is anchored at the end and the database name (optional: the seed's names have none)
# takes everything before it, so a database called ``2024`` or ``a_20240101_000000`` parses as
# itself. The manifest's target stays the truth; the name only has to agree with it.
_DB = re.compile(
    r"^db_backup_(?:(?P<target>.+)_)?(?P<stamp>\d{8}_\d{6})\.sql(?P<ext>\.zst)?(?P<age>\.age)?$"
)
_VOLUME = re.compile(
    r"^volume_(?P<target>.+)_(?P<stamp>\d{8}_\d{6})\.tar\.(?P<ext>gz|zst)(?P<age>\.age)?$"
)
_GLOBALS = re.compile(
    r"^db_globals_(?:(?P<target>.+)_)?(?P<stamp>\d{8}_\d{6})\.sql(?P<age>\.age)?$"
)
_SAFETY = re.compile(
    r"^safety_volume_(?P<target>.+)_(?P<stamp>\d{8}_\d{6})\.tar\.(?P<ext>gz|zst)(?P<age>\.age)?$"
)
# How a database dump is compressed (gzip: pg_dump's own), and the one rule for a volume's
# archive, which follows the dump's zstd and is gzip otherwise ("none" is for dumps only).
Compression = Literal["gzip", "zstd", "none"]
VolumeCompression = Literal["gzip", "zstd"]
COMPRESSIONS: tuple[Compression, ...] = typing.get_args(Compression)
VOLUME_COMPRESSIONS: tuple[VolumeCompression, ...] = typing.get_args(VolumeCompression)


# How a Docker volume is read and written: its host folder, a helper container, or either.
VolumeAccess = Literal["auto", "direct", "api"]


def volume_compression(compression: str) -> VolumeCompression:
    """The compression of volume archives taken beside a dump compressed with ``compression``."""
    return "zstd" if compression == "zstd" else "gzip"


AGE_SUFFIX = ".age"  # encrypted artifacts: the plain name + .age

DB_EXTENSIONS = {"gzip": ".sql", "none": ".sql", "zstd": ".sql.zst"}


@dataclass(frozen=True)
class ArtifactName:
    name: str
    kind: Kind
    created: datetime
    target: str | None  # volume name; database name only in the names of several databases
    zstd: bool
    encrypted: bool = False


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP_FORMAT)


def database_artifact(
    moment: datetime, compression: str, encrypted: bool = False, database: str | None = None
) -> str:
    """A dump's name: the seed's ``db_backup_STAMP.sql`` for the one database of a repository,
    ``db_backup_NAME_STAMP.sql`` with ``database`` (several databases are configured)."""
    return f"db_backup_{_named(database)}{stamp(moment)}{DB_EXTENSIONS[compression]}" + (
        AGE_SUFFIX if encrypted else ""
    )


def globals_artifact(dump: str) -> str:
    """The globals artifact written beside database dump ``dump`` (same stamp and name)."""
    parsed = parse(dump)
    if parsed is None or parsed.kind != "database":
        raise ValueError(f"{dump} is not a database artifact name")
    return f"db_globals_{_named(parsed.target)}{stamp(parsed.created)}.sql" + (
        AGE_SUFFIX if parsed.encrypted else ""
    )


def _named(database: str | None) -> str:
    if database is None:
        return ""
    if problem := database_name_problem(database):
        raise ValueError(f"database {database!r} cannot name a file: {problem}")
    return f"{database}_"


# Characters a database name may not bring into a file name. PostgreSQL takes almost anything
# in a quoted name; a file name must not climb folders (/, \, ..), hide in a listing or a
# terminal (control characters, line separators, bidi and other format characters such as
# U+202E), or be empty. Everything else (spaces, quotes, *, non-ASCII letters) is kept as it is:
# escaping would make a name that no longer reads as the database's.
_REFUSED_CATEGORIES = {"Cc": "a control character", "Cf": "a format character (e.g. bidi)"}
_REFUSED_CATEGORIES |= {"Zl": "a line separator", "Zp": "a paragraph separator"}


def database_name_problem(database: str) -> str | None:
    """Why ``database`` cannot be part of a file name, or ``None``."""
    if not database:
        return "it is empty"
    if "/" in database or "\\" in database:
        return "it holds a slash"
    if ".." in database:
        return "it holds '..'"
    for char in database:
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES:
            return f"it holds {_REFUSED_CATEGORIES[category]} (U+{ord(char):04X})"
    return None


def safety_artifact(volume_artifact: str) -> str:
    """The name a volume artifact gets when it is a pre-restore safety copy."""
    return f"safety_{volume_artifact}"


def parse(name: str) -> ArtifactName | None:
    """Recognise an artifact name; ``None`` for anything that is not one (links, temp files...)."""
    if match := _GLOBALS.match(name):
        return ArtifactName(
            name, "globals", _created(match["stamp"]), match["target"], False, bool(match["age"])
        )
    if match := _SAFETY.match(name):
        return ArtifactName(
            name,
            "safety",
            _created(match["stamp"]),
            match["target"],
            zstd=match["ext"] == "zst",
            encrypted=bool(match["age"]),
        )
    if match := _DB.match(name):
        return ArtifactName(
            name,
            "database",
            _created(match["stamp"]),
            match["target"],
            zstd=bool(match["ext"]),
            encrypted=bool(match["age"]),
        )
    if match := _VOLUME.match(name):
        return ArtifactName(
            name,
            "volume",
            _created(match["stamp"]),
            match["target"],
            zstd=match["ext"] == "zst",
            encrypted=bool(match["age"]),
        )
    return None


def manifest_key(artifact: str) -> str:
    return f"{MANIFEST_DIR}/{artifact}.json"


def artifact_of(record_key: str) -> str:
    """The artifact a per-artifact record (``.safehold/<kind>/<artifact>.json``) is about."""
    return record_key.rsplit("/", 1)[-1].removesuffix(".json")


def is_pattern(text: str) -> bool:
    """A volume selector with glob characters (``user-*``); Docker names never have them."""
    return any(char in text for char in "*?[")


def set_key(set_id: str) -> str:
    return f"{SETS_DIR}/{set_id}.json"


def latest_links(artifact: ArtifactName) -> tuple[str, ...]:
    """The fixed names that point at ``artifact`` when it is the newest good backup of its
    target. The seed's names (``db_backup_latest.sql``, ``latest_db_backup.sql``,
    ``volume_NAME_latest.tar.gz``) always name the newest, whatever its format, so they never
    lag behind a zstd or encrypted backup; the name with the artifact's own suffixes
    (``db_backup_latest.sql.zst.age``...) is added, and exists only while the newest is in
    that format, so a suffix never lies about the content. A dump whose name carries its
    database (several databases) takes that database's ``db_backup_NAME_latest.sql``."""
    seed: tuple[str, ...]
    if artifact.kind == "database" and artifact.target is not None:
        own = f"db_backup_{artifact.target}_latest.sql{'.zst' if artifact.zstd else ''}"
        seed = (database_latest_link(artifact.target),)
    elif artifact.kind == "database":
        own = f"db_backup_latest.sql{'.zst' if artifact.zstd else ''}"
        seed = DB_LATEST_LINKS
    elif artifact.kind == "volume":
        own = f"volume_{artifact.target}_latest.tar.{'zst' if artifact.zstd else 'gz'}"
        seed = (f"volume_{artifact.target}_latest.tar.gz",)
    else:
        return ()  # globals and safety copies are never what a fixed name means
    own += AGE_SUFFIX if artifact.encrypted else ""
    return seed if own in seed else (*seed, own)


def database_latest_link(database: str) -> str:
    """The fixed name of one database's newest backup, beside others in a repository."""
    return f"db_backup_{database}_latest.sql"


_LATEST_LINK = re.compile(
    r"^(?:(?P<db>db_backup_latest\.sql(?:\.zst)?(?:\.age)?|latest_db_backup\.sql)"
    r"|db_backup_(?P<database>.+)_latest\.sql(?:\.zst)?(?:\.age)?"
    r"|volume_(?P<target>.+)_latest\.tar\.(?:gz|zst)(?:\.age)?)$"
)


def latest_link_of(name: str) -> tuple[Kind, str | None] | None:
    """What a fixed ``latest`` name stands for: (kind, volume or database name), or ``None``;
    the seed's database names give no database (the one the configuration names)."""
    match = _LATEST_LINK.match(name)
    if match is None:
        return None
    if match["db"]:
        return ("database", None)
    if match["database"] is not None:
        return ("database", match["database"])
    return ("volume", match["target"])


def _created(text: str) -> datetime:
    return datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=UTC)
