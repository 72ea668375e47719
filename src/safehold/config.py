"""Settings from defaults < config file < environment < flags, checked and typed.

The seed's env names (``BACKUP_DIR DB_HOST DB_PORT DB_NAME DB_USER``) work as operators know them;
every key also has a ``SAFEHOLD_<SECTION>_<KEY>`` name. An unknown or mistyped key in the file is an
error naming the file, the key and what was expected. There is no global settings object: callers
load one and pass it down.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .model import Objectives
from .operations.backup import COMPRESSIONS, BackupOptions
from .operations.restore import RestoreOptions
from .sources.postgres import PgTarget

DEFAULT_FILE = Path("safehold.toml")


def _key(*env: str, choices: tuple[str, ...] = (), doc: str = "") -> dict[str, Any]:
    return {"env": env, "choices": choices, "doc": doc}


@dataclass(frozen=True)
class DatabaseSettings:
    host: str = field(default="localhost", metadata=_key("DB_HOST", doc="server host"))
    port: int = field(default=5432, metadata=_key("DB_PORT", doc="server port"))
    name: str = field(default="container_app", metadata=_key("DB_NAME", doc="database"))
    user: str = field(default="postgres", metadata=_key("DB_USER", doc="login role"))
    password_file: Path | None = field(
        default=None, metadata=_key("DB_PASSWORD_FILE", doc="file holding the password")
    )
    maintenance_db: str = field(default="postgres", metadata=_key(doc="db for CREATE/DROP"))
    pg_bin_dir: Path | None = field(default=None, metadata=_key(doc="folder of pg_dump etc."))
    connect_timeout: int = field(default=10, metadata=_key(doc="seconds"))


@dataclass(frozen=True)
class BackupSettings:
    compress: str = field(
        default="gzip",
        metadata=_key("SAFEHOLD_COMPRESS", choices=COMPRESSIONS, doc="gzip (pg_dump's) or zstd"),
    )
    zstd_level: int = field(default=3, metadata=_key(doc="1-19"))
    zstd_threads: int = field(default=0, metadata=_key(doc="0 = one per core"))
    concurrency: int = field(
        default=4, metadata=_key(doc="members of a --all backup written at once")
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
    health_url: str = field(default="", metadata=_key(doc="URL that must answer 200 afterwards"))
    health_timeout: float = field(default=120.0, metadata=_key(doc="seconds to wait for it"))


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


@dataclass(frozen=True)
class AlertSettings:
    apprise_urls: tuple[str, ...] = field(
        default=(), metadata=_key(doc="Apprise URLs notified on failures (slack://, mailto://...)")
    )
    webhook_url: str = field(default="", metadata=_key(doc="URL that gets a JSON POST on failures"))
    timeout: float = field(default=10.0, metadata=_key(doc="seconds per alert target"))


@dataclass(frozen=True)
class RetentionSettings:
    daily: int = field(default=30, metadata=_key(doc="days with a kept daily backup"))
    weekly: int = field(default=12, metadata=_key(doc="ISO weeks with a kept weekly backup"))
    monthly: int = field(default=12, metadata=_key(doc="months with a kept monthly backup"))
    yearly: int = field(default=7, metadata=_key(doc="years with a kept yearly backup"))
    keep_last: int = field(default=1, metadata=_key(doc="newest backups always kept"))
    prune_after_backup: bool = field(
        default=True, metadata=_key(doc="prune after each scheduled run")
    )


@dataclass(frozen=True)
class ScheduleSettings:
    database: str = field(default="0 2 * * *", metadata=_key(doc="cron: database backup"))
    full: str = field(default="0 3 * * 0", metadata=_key(doc="cron: full-system backup (--all)"))
    archive: str = field(default="0 4 1 * *", metadata=_key(doc="cron: monthly archive copy"))
    drill: str = field(default="0 5 2 * *", metadata=_key(doc="cron: restore drill"))
    hourly: bool = field(default=False, metadata=_key(doc="also back up the database hourly"))
    archive_location: str = field(default="", metadata=_key(doc="location the archive goes to"))


@dataclass(frozen=True)
class ObjectiveSettings:
    rpo_hours: float = field(default=24.0, metadata=_key(doc="newest backup may be this old"))
    rto_database_minutes: float = field(default=30.0, metadata=_key(doc="database restore"))
    rto_volumes_minutes: float = field(default=60.0, metadata=_key(doc="container data"))
    rto_full_minutes: float = field(default=120.0, metadata=_key(doc="whole-system restore"))


@dataclass(frozen=True)
class Settings:
    backup_dir: Path = field(default=Path("./backups"), metadata=_key("BACKUP_DIR"))
    log_file: Path | None = field(default=None, metadata=_key("LOG_FILE"))
    lock_timeout: float = field(default=300.0, metadata=_key(doc="seconds to wait for the lock"))
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    restore: RestoreSettings = field(default_factory=RestoreSettings)
    volumes: VolumeSettings = field(default_factory=VolumeSettings)
    objectives: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    source: str = "defaults"  # where the file part came from, for messages
    password: str | None = field(default=None, repr=False)

    def pg_target(self) -> PgTarget:
        db = self.database
        return PgTarget(
            host=db.host,
            port=db.port,
            dbname=db.name,
            user=db.user,
            password=self.password,
            bin_dir=db.pg_bin_dir,
            maintenance_db=db.maintenance_db,
            connect_timeout=db.connect_timeout,
        )

    def backup_options(self) -> BackupOptions:
        b = self.backup
        return BackupOptions(b.compress, b.zstd_level, b.zstd_threads, self.lock_timeout)  # type: ignore[arg-type]

    def objectives_s(self) -> Objectives:
        goals = self.objectives
        return Objectives(
            goals.rpo_hours * 3600,
            goals.rto_database_minutes * 60,
            goals.rto_volumes_minutes * 60,
            goals.rto_full_minutes * 60,
        )

    def restore_options(self, **overrides: Any) -> RestoreOptions:
        return RestoreOptions(jobs=self.restore.jobs, lock_timeout=self.lock_timeout, **overrides)


SECTIONS: dict[str, type] = {
    "database": DatabaseSettings,
    "backup": BackupSettings,
    "restore": RestoreSettings,
    "volumes": VolumeSettings,
    "objectives": ObjectiveSettings,
    "alerts": AlertSettings,
    "retention": RetentionSettings,
    "schedule": ScheduleSettings,
}
_INTERNAL = {*SECTIONS, "source", "password"}


def load(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """``flags`` uses dotted keys (``database.host``); ``None`` values are ignored."""
    environ = os.environ if env is None else env
    path, explicit = _config_path(config_file, environ)
    values: dict[str, Any] = {}
    if path is not None and (explicit or path.exists()):
        values = _read_file(path)
    for name, value in _from_env(environ).items():
        values[name] = value
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
    settings = _build(values, str(path) if path and path.exists() else "defaults")
    return dataclasses.replace(settings, password=_password(settings, environ))


def all_keys() -> dict[str, dataclasses.Field[Any]]:
    """Every dotted key with its field: drives the file check, env names and the docs."""
    keys = {f.name: f for f in dataclasses.fields(Settings) if f.name not in _INTERNAL}
    for section, cls in SECTIONS.items():
        keys.update({f"{section}.{f.name}": f for f in dataclasses.fields(cls)})
    return keys


def env_names(key: str) -> tuple[str, ...]:
    field_ = all_keys()[key]
    generic = "SAFEHOLD_" + key.replace(".", "_").upper()
    return (*field_.metadata.get("env", ()), generic)


def _config_path(given: Path | None, environ: Mapping[str, str]) -> tuple[Path | None, bool]:
    if given is not None:
        return given, True
    if environ.get("SAFEHOLD_CONFIG"):
        return Path(environ["SAFEHOLD_CONFIG"]), True
    return DEFAULT_FILE, False


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist", hint="check --config / SAFEHOLD_CONFIG"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    flat: dict[str, Any] = {}
    known = all_keys()
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            for sub, sub_value in value.items():
                flat[f"{key}.{sub}"] = sub_value
        else:
            flat[key] = value
    for key in flat:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"{path}: unknown key '{key}'",
                hint=f"{hint}expected one of: {', '.join(sorted(known))}",
            )
    # Check every value now, so a bad one fails even when env or a flag overrides it today.
    for key, value in flat.items():
        _convert(known[key], value, f"{path}: key '{key}'")
    return {key: (value, f"{path}: key '{key}'") for key, value in flat.items()}


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key in all_keys():
        # The SAFEHOLD_ name is the more specific one, so it wins over the seed's alias.
        for name in env_names(key):
            if environ.get(name, "") != "":
                found[key] = (environ[name], f"environment variable {name}")
    return found


def _build(values: dict[str, Any], source: str) -> Settings:
    known = all_keys()
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, raw in values.items():
        value, origin = raw if isinstance(raw, tuple) else (raw, f"option for '{key}'")
        converted = _convert(known[key], value, origin)
        if "." in key:
            section, name = key.split(".", 1)
            sections[section][name] = converted
        else:
            top[key] = converted
    built = {name: cls(**sections[name]) for name, cls in SECTIONS.items()}
    return Settings(**top, **built, source=source)


def _convert(field_: dataclasses.Field[Any], value: Any, origin: str) -> Any:
    hints = typing.get_type_hints(
        next(c for c in (Settings, *SECTIONS.values()) if field_ in dataclasses.fields(c))
    )
    wanted = hints[field_.name]
    optional = isinstance(wanted, types.UnionType) and type(None) in typing.get_args(wanted)
    base = next(a for a in typing.get_args(wanted) if a is not type(None)) if optional else wanted
    if optional and value in ("", None):
        return None
    try:
        if base == tuple[str, ...]:
            result: Any = _to_strings(value)
        elif base is bool:
            result = _to_bool(value)
        elif base in (int, float):
            if isinstance(value, bool):
                raise ValueError
            result = base(value)
        elif base is Path:
            result = Path(os.path.expanduser(str(value)))
        else:
            if not isinstance(value, str):
                raise ValueError
            result = value
    except (TypeError, ValueError):
        kind: dict[object, str] = {int: "a whole number", float: "a number", Path: "a path"}
        kind[bool] = "true or false"
        kind[tuple[str, ...]] = "a list of strings (in the environment: comma-separated)"
        raise ConfigError(
            f"{origin}: {value!r} is not valid", hint=f"expected {kind.get(base, 'text')}"
        ) from None
    choices = field_.metadata.get("choices", ())
    if choices and result not in choices:
        raise ConfigError(
            f"{origin}: {value!r} is not valid", hint=f"expected one of: {', '.join(choices)}"
        )
    if base is int and field_.name == "port" and not 0 < result < 65536:
        raise ConfigError(f"{origin}: {value!r} is not a port", hint="expected 1-65535")
    return result


def _to_strings(value: Any) -> tuple[str, ...]:
    # The environment has no lists: "a, b" is two items there.
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError(value)
    return tuple(item.strip() for item in items if item.strip())


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _password(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """PGPASSWORD, then DB_PASSWORD, then the password file; else libpq reads ~/.pgpass."""
    for name in ("PGPASSWORD", "DB_PASSWORD"):
        if environ.get(name):
            return environ[name]
    path = settings.database.password_file
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the password file {path}: {exc.strerror}",
            hint="check database.password_file / DB_PASSWORD_FILE",
        ) from None
    return text.rstrip("\r\n")
