"""Artifact names: the seed's conventions, parsed and produced in one place.

``db_backup_YYYYMMDD_HHMMSS.sql[.zst]`` and ``volume_NAME_YYYYMMDD_HHMMSS.tar.gz|.tar.zst``,
timestamps in UTC. Beside them: ``db_globals_YYYYMMDD_HHMMSS.sql`` (the roles and database
settings a dump needs, plain SQL for ``psql``, same stamp as its dump) and
``safety_volume_NAME_YYYYMMDD_HHMMSS.tar.gz|.tar.zst`` (a volume's content taken before a
restore replaced it). ``.age`` is appended to an encrypted one. Anything else in a repository
folder is not a backup artifact.
"""

from __future__ import annotations

import re
import typing
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
    CHUNKS_LOCKS, CHUNKS_PINS, CHUNKS_HOST_KEY, CHUNKS_CACHE,
)  # fmt: skip

# Links the seed's commands rely on; they always point at the newest good backup.
DB_LATEST_LINKS = ("db_backup_latest.sql", "latest_db_backup.sql")

_DB = re.compile(r"^db_backup_(?P<stamp>\d{8}_\d{6})\.sql(?P<ext>\.zst)?(?P<age>\.age)?$")
_VOLUME = re.compile(
    r"^volume_(?P<target>.+)_(?P<stamp>\d{8}_\d{6})\.tar\.(?P<ext>gz|zst)(?P<age>\.age)?$"
)
_GLOBALS = re.compile(r"^db_globals_(?P<stamp>\d{8}_\d{6})\.sql(?P<age>\.age)?$")
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
    target: str | None  # volume name; database names are not part of the seed's file names
    zstd: bool
    encrypted: bool = False


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP_FORMAT)


def database_artifact(moment: datetime, compression: str, encrypted: bool = False) -> str:
    return f"db_backup_{stamp(moment)}{DB_EXTENSIONS[compression]}" + (
        AGE_SUFFIX if encrypted else ""
    )


def globals_artifact(dump: str) -> str:
    """The globals artifact written beside database dump ``dump`` (same stamp)."""
    parsed = parse(dump)
    if parsed is None or parsed.kind != "database":
        raise ValueError(f"{dump} is not a database artifact name")
    return f"db_globals_{stamp(parsed.created)}.sql" + (AGE_SUFFIX if parsed.encrypted else "")


def safety_artifact(volume_artifact: str) -> str:
    """The name a volume artifact gets when it is a pre-restore safety copy."""
    return f"safety_{volume_artifact}"


def parse(name: str) -> ArtifactName | None:
    """Recognise an artifact name; ``None`` for anything that is not one (links, temp files...)."""
    if match := _GLOBALS.match(name):
        return ArtifactName(
            name, "globals", _created(match["stamp"]), None, False, bool(match["age"])
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
            None,
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
    that format, so a suffix never lies about the content."""
    seed: tuple[str, ...]
    if artifact.kind == "database":
        own = f"db_backup_latest.sql{'.zst' if artifact.zstd else ''}"
        seed = DB_LATEST_LINKS
    elif artifact.kind == "volume":
        own = f"volume_{artifact.target}_latest.tar.{'zst' if artifact.zstd else 'gz'}"
        seed = (f"volume_{artifact.target}_latest.tar.gz",)
    else:
        return ()  # globals and safety copies are never what a fixed name means
    own += AGE_SUFFIX if artifact.encrypted else ""
    return seed if own in seed else (*seed, own)


_LATEST_LINK = re.compile(
    r"^(?:(?P<db>db_backup_latest\.sql(?:\.zst)?(?:\.age)?|latest_db_backup\.sql)"
    r"|volume_(?P<target>.+)_latest\.tar\.(?:gz|zst)(?:\.age)?)$"
)


def latest_link_of(name: str) -> tuple[Kind, str | None] | None:
    """What a fixed ``latest`` name stands for: (kind, volume name), or ``None``."""
    match = _LATEST_LINK.match(name)
    if match is None:
        return None
    return ("database", None) if match["db"] else ("volume", match["target"])


def _created(text: str) -> datetime:
    return datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=UTC)
