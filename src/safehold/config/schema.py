"""The settings schema: one frozen dataclass per config-file section; field metadata names the
environment variables and documents each key (``safehold config --keys`` and the README)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .. import naming
from ..crypto import DecryptionKey, EncryptionKey, load_decryption_key, load_encryption_key
from ..model import Objectives
from ..naming import Compression, VolumeAccess, volume_compression
from ..sources.postgres import PgTarget
from .databases import NAMES_DOC, DatabaseChoice, database_names_check

if TYPE_CHECKING:  # the docker SDK and psycopg are slow to import; wal-push needs neither
    from ..operations.database.backup import BackupOptions
    from ..operations.database.globals import RolesMode
    from ..operations.database.restore import RestoreOptions
    from ..operations.system.backup import SetOptions
    from ..operations.system.restore import SystemRestoreOptions
    from ..operations.volumes.options import VolumeOptions

DEFAULT_FILE = Path("safehold.toml")
# The app folder (scripts/ set it): where safehold.toml and the relative paths of defaults and
# file are, whatever the working folder. See config's module note.
APP_DIR_ENV = "SAFEHOLD_APP_DIR"


# A key's own rule beyond its type: None when the value is good, else (what it is not, hint).
Check = Callable[[Any], "tuple[str, str] | None"]


def _key(*env: str, doc: str = "", check: Check | None = None) -> dict[str, Any]:
    """A key's environment names, its documentation (a Literal type says its choices) and its
    own rule, checked by ``config.load`` however the value is given."""
    return {"env": env, "doc": doc, "check": check}


def _port(value: int) -> tuple[str, str] | None:
    return None if 0 < value < 65536 else ("a port", "expected 1-65535")


def _http_url(value: str) -> tuple[str, str] | None:
    good = not value or value.startswith(("http://", "https://"))
    return None if good else ("an http(s) URL", "e.g. http://localhost:8080/health")


@dataclass(frozen=True)
class DatabaseSettings:
    host: str = field(default="localhost", metadata=_key("DB_HOST", doc="server host"))
    port: int = field(default=5432, metadata=_key("DB_PORT", doc="server port", check=_port))
    name: str = field(default="container_app", metadata=_key("DB_NAME", doc="database"))
    names: tuple[str, ...] = field(
        default=(),
        metadata=_key("SAFEHOLD_DB_NAMES", doc=NAMES_DOC, check=database_names_check),
    )
    user: str = field(default="postgres", metadata=_key("DB_USER", doc="login role"))
    password_file: Path | None = field(
        default=None, metadata=_key("DB_PASSWORD_FILE", doc="file holding the password")
    )
    maintenance_db: str = field(default="postgres", metadata=_key(doc="db for CREATE/DROP"))
    pg_bin_dir: Path | None = field(default=None, metadata=_key(doc="folder of pg_dump etc."))
    connect_timeout: int = field(default=10, metadata=_key(doc="seconds"))


@dataclass(frozen=True)
class BackupSettings:
    compress: Compression = field(
        default="gzip", metadata=_key("SAFEHOLD_COMPRESS", doc="gzip (pg_dump's) or zstd")
    )
    zstd_level: int = field(default=3, metadata=_key(doc="1-19"))
    zstd_threads: int = field(default=0, metadata=_key(doc="0 = one per core"))
    concurrency: int = field(
        default=4, metadata=_key(doc="members of a --all backup written at once")
    )
    volume_access: VolumeAccess = field(
        default="auto",
        metadata=_key(
            doc="volumes: the host folder (direct), a helper container (api), or auto",
        ),
    )
    format: Literal["files", "chunked"] = field(
        default="files",
        metadata=_key("SAFEHOLD_FORMAT", doc="files (the seed's) or chunked (deduplicated)"),
    )
    chunked_targets: tuple[str, ...] = field(
        default=(),
        metadata=_key(doc="'database' and volume names/patterns kept chunked anyway"),
    )
    id_key_file: Path | None = field(
        default=None, metadata=_key(doc="chunk store id key (.safehold/keys/chunk-id.key)")
    )
    chunk_location: str = field(
        default="", metadata=_key(doc="location holding the chunk store ('': BACKUP_DIR)")
    )


@dataclass(frozen=True)
class RestoreSettings:
    jobs: int = field(default=0, metadata=_key(doc="pg_restore --jobs; 0 = one per core"))
    project: str = field(
        default="", metadata=_key(doc="compose project whose containers restore --all stops")
    )
    post_restore_cmds: tuple[str, ...] = field(
        default=(), metadata=_key(doc="commands run (sh -c) after restore --all restored data")
    )
    health_url: str = field(
        default="", metadata=_key(doc="URL that must answer 200 afterwards", check=_http_url)
    )
    health_timeout: float = field(default=120.0, metadata=_key(doc="seconds to wait for it"))
    roles: Literal["create", "skip"] = field(
        default="create",
        metadata=_key(
            doc="roles a dump's globals name that the server lacks: create them, or skip",
        ),
    )


@dataclass(frozen=True)
class VolumeSettings:
    include: tuple[str, ...] = field(
        default=(),
        metadata=_key(doc="volume names or patterns (user-*) that backup --all takes"),
    )
    labels: tuple[str, ...] = field(
        default=(), metadata=_key(doc="volumes with these labels (key or key=value) too")
    )
    exclude: tuple[str, ...] = field(default=(), metadata=_key(doc="names or patterns to skip"))

    def names(self) -> tuple[str, ...]:
        """The volumes named outright (not patterns): they must have backups."""
        return tuple(v for v in self.include if not naming.is_pattern(v))


@dataclass(frozen=True)
class DockerSettings:
    stop_timeout: int = field(
        default=10,
        metadata=_key(
            doc="seconds a stopped container gets before it is killed (docker-compose's "
            "default; its org.safehold.stop-timeout label or its own stop timeout wins)"
        ),
    )


@dataclass(frozen=True)
class AlertSettings:
    apprise_urls: tuple[str, ...] = field(
        default=(), metadata=_key(doc="Apprise URLs notified on failures (slack://, mailto://...)")
    )
    webhook_url: str = field(default="", metadata=_key(doc="URL that gets a JSON POST on failures"))
    heartbeat_url: str = field(
        default="", metadata=_key(doc="pinged at start, success (/fail: failure): Healthchecks.io")
    )
    timeout: float = field(default=10.0, metadata=_key(doc="seconds per alert target"))


@dataclass(frozen=True)
class RetentionSettings:
    daily: int = field(default=30, metadata=_key(doc="days with a kept daily backup"))
    weekly: int = field(default=12, metadata=_key(doc="ISO weeks with a kept weekly backup"))
    monthly: int = field(default=12, metadata=_key(doc="months with a kept monthly backup"))
    yearly: int = field(default=7, metadata=_key(doc="years with a kept yearly backup"))
    keep_last: int = field(default=1, metadata=_key(doc="newest backups always kept"))
    safety_days: int = field(
        default=7, metadata=_key(doc="days a volume's pre-restore safety copy is kept")
    )
    prune_after_backup: bool = field(
        default=True, metadata=_key(doc="prune after each scheduled run")
    )


@dataclass(frozen=True)
class ScheduleSettings:
    database: str = field(default="0 2 * * *", metadata=_key(doc="cron: database backup"))
    full: str = field(default="0 3 * * 0", metadata=_key(doc="cron: full-system backup (--all)"))
    archive: str = field(default="0 4 1 * *", metadata=_key(doc="cron: monthly archive copy"))
    drill: str = field(default="0 5 2 * *", metadata=_key(doc="cron: restore drill"))
    quarterly_drill: str = field(
        default="0 6 3 1,4,7,10 *", metadata=_key(doc="cron: full-system DR rehearsal")
    )
    annual_drill: str = field(
        default="0 6 10 1 *", metadata=_key(doc="cron: annual full recovery test (--sandbox)")
    )
    hourly: bool = field(default=False, metadata=_key(doc="also back up the database hourly"))
    archive_location: str = field(default="", metadata=_key(doc="location the archive goes to"))


@dataclass(frozen=True)
class EncryptionSettings:
    recipients: tuple[str, ...] = field(
        default=(), metadata=_key(doc="age X25519 public keys (age1...) backups are encrypted to")
    )
    recipients_file: Path | None = field(default=None, metadata=_key(doc="file of age1... keys"))
    identity_file: Path | None = field(
        default=None, metadata=_key(doc="age identity (secret key) file, for restore/verify")
    )
    passphrase_file: Path | None = field(default=None, metadata=_key(doc="passphrase file"))
    passphrase_env: str = field(default="", metadata=_key(doc="env var holding the passphrase"))
    passphrase_command: str = field(default="", metadata=_key(doc="command printing it"))


@dataclass(frozen=True)
class LocationSettings:
    """One named copy location (``[locations.NAME]`` in the config file)."""

    name: str
    kind: str = "s3"
    endpoint: str = ""
    bucket: str = ""
    prefix: str = ""
    region: str = ""
    profile: str = ""
    credentials_file: Path | None = None
    ca_bundle: Path | None = None
    copy_after_backup: bool = True  # copy every new backup here right after it is made
    archive: bool = False  # the monthly long-term archive: only the schedule copies to it
    allow_http: bool = False  # plain http to a non-loopback endpoint (never for real data)
    part_size_mb: int = 8
    concurrency: int = 4
    max_attempts: int = 5
    retry_mode: str = "standard"


@dataclass(frozen=True)
class ObjectiveSettings:
    rpo_hours: float = field(
        default=0.0, metadata=_key(doc="every target's RPO; 0: each follows its schedule")
    )
    rpo_hours_database: float = field(
        default=0.0, metadata=_key(doc="the database's RPO; 0: rpo_hours, else the schedule")
    )
    rpo_hours_volumes: float = field(
        default=0.0, metadata=_key(doc="the volumes' RPO; 0: rpo_hours, else the schedule")
    )
    rpo_hours_targets: tuple[str, ...] = field(
        default=(), metadata=_key(doc="NAME=HOURS per target name or pattern (user-*=168)")
    )
    grace_percent: float = field(default=10.0, metadata=_key(doc="late only past RPO + this %"))
    grace_minutes: float = field(default=30.0, metadata=_key(doc="but at least this grace"))
    rto_database_minutes: float = field(default=30.0, metadata=_key(doc="database restore"))
    rto_volumes_minutes: float = field(default=60.0, metadata=_key(doc="container data"))
    rto_full_minutes: float = field(default=120.0, metadata=_key(doc="whole-system restore"))
    wal_stall_minutes: float = field(
        default=15.0, metadata=_key(doc="PITR: newest archived WAL may be this old")
    )


@dataclass(frozen=True)
class Settings(DatabaseChoice):
    backup_dir: Path = field(default=Path("./backups"), metadata=_key("BACKUP_DIR"))
    log_file: Path | None = field(default=None, metadata=_key("LOG_FILE"))
    lock_timeout: float = field(default=300.0, metadata=_key(doc="seconds to wait for the lock"))
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    restore: RestoreSettings = field(default_factory=RestoreSettings)
    volumes: VolumeSettings = field(default_factory=VolumeSettings)
    docker: DockerSettings = field(default_factory=DockerSettings)
    objectives: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    encryption: EncryptionSettings = field(default_factory=EncryptionSettings)
    locations: tuple[LocationSettings, ...] = ()
    source: str = "defaults"  # where the file part came from, for messages
    password: str | None = field(default=None, repr=False)
    database_chosen: str | None = None  # --db-name with [database] names: this run's one

    def pg_target(self, dbname: str | None = None) -> PgTarget:
        db = self.database
        return PgTarget(
            host=db.host,
            port=db.port,
            dbname=dbname or self.database_name(),
            user=db.user,
            password=self.password,
            bin_dir=db.pg_bin_dir,
            maintenance_db=db.maintenance_db,
            connect_timeout=db.connect_timeout,
        )

    def backup_options(self) -> BackupOptions:
        from ..operations.database.backup import BackupOptions

        b = self.backup
        return BackupOptions(
            b.compress,
            b.zstd_level,
            b.zstd_threads,
            self.lock_timeout,
            encryption=self.encryption_key(),
            named=self.many_databases,
        )

    def encryption_key(self) -> EncryptionKey | None:
        """What new backups are encrypted to; None when encryption is not configured."""
        e = self.encryption
        return load_encryption_key(
            e.recipients,
            e.recipients_file,
            e.passphrase_file,
            e.passphrase_env or None,
            e.passphrase_command or None,
        )

    def decryption_key(self) -> DecryptionKey | None:
        """What opens encrypted backups (restore, verify --level full, drill)."""
        e = self.encryption
        return load_decryption_key(
            e.identity_file,
            e.passphrase_file,
            e.passphrase_env or None,
            e.passphrase_command or None,
        )

    def objectives_s(self) -> Objectives:
        from .cadence import objectives  # croniter: not at import, wal-push must start fast

        return objectives(self.objectives, self.schedule)

    def volume_options(self) -> VolumeOptions:
        """How volumes are backed up and restored: the one place the settings become them."""
        from ..operations.volumes.options import VolumeOptions

        return VolumeOptions(
            compression=volume_compression(self.backup.compress),
            access=self.backup.volume_access,
            stop_timeout=self.docker.stop_timeout,
        )

    def restore_options(
        self,
        *,
        target_db: str | None = None,
        drop_previous: bool = False,
        no_owner: bool = False,
        force: bool = False,
        roles: RolesMode | None = None,
    ) -> RestoreOptions:
        """A database restore's options: the settings, and what one run was asked."""
        from ..operations.database.restore import RestoreOptions

        return RestoreOptions(
            target_db=target_db,
            jobs=self.restore.jobs,
            drop_previous=drop_previous,
            no_owner=no_owner,
            lock_timeout=self.lock_timeout,
            decryption=self.decryption_key(),
            roles=roles or self.restore.roles,
            force=force,
        )

    def set_options(self) -> SetOptions:
        """A full-system backup: its database's and its volumes' options, members at once."""
        from ..operations.system.backup import SetOptions

        return SetOptions(
            database=self.backup_options(),
            volumes=self.volume_options(),
            concurrency=self.backup.concurrency,
        )

    def system_restore_options(
        self, *, roles: RolesMode | None, safety_backup: bool
    ) -> SystemRestoreOptions:
        """A whole-system restore: the database restore's and the volumes' options, the safety
        backup (encrypted like every backup) and the health wait."""
        from ..operations.system.restore import SystemRestoreOptions

        return SystemRestoreOptions(
            database=self.restore_options(roles=roles),
            safety_backup=safety_backup,
            volumes=self.volume_options(),
            encryption=self.encryption_key() if safety_backup else None,
            health_timeout=self.restore.health_timeout,
            lock_timeout=self.lock_timeout,
            objectives=self.objectives_s(),
        )


SECTIONS: dict[str, type] = {
    "database": DatabaseSettings,
    "backup": BackupSettings,
    "restore": RestoreSettings,
    "volumes": VolumeSettings,
    "docker": DockerSettings,
    "objectives": ObjectiveSettings,
    "alerts": AlertSettings,
    "retention": RetentionSettings,
    "schedule": ScheduleSettings,
    "encryption": EncryptionSettings,
}
_INTERNAL = {*SECTIONS, "locations", "source", "password", "database_chosen"}
