"""Settings from defaults < config file < environment < flags, checked and typed.

The seed's env names (``BACKUP_DIR DB_HOST DB_PORT DB_NAME DB_USER``) work as operators know them;
every key also has a ``SAFEHOLD_<SECTION>_<KEY>`` name. An unknown or mistyped key in the file is an
error naming the file, the key and what was expected. There is no global settings object: callers
load one and pass it down.

Relative paths: ``SAFEHOLD_APP_DIR`` (set by ``scripts/backup.sh`` and ``restore.sh`` to the app
folder they live in) makes a run behave as if started there, wherever cron or an operator starts
it: ``safehold.toml`` is looked for there, and the defaults' and the file's relative paths
(``./backups``) mean that folder. What a caller types (an environment variable, a flag) keeps
meaning their working folder, as in any shell. Either way the paths come out absolute, so logs,
alerts and crontab lines name the folder meant.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .schema import (
    _INTERNAL,
    APP_DIR_ENV,
    DEFAULT_FILE,
    SECTIONS,
    AlertSettings,
    BackupSettings,
    DatabaseSettings,
    DockerSettings,
    EncryptionSettings,
    LocationSettings,
    ObjectiveSettings,
    RestoreSettings,
    RetentionSettings,
    ScheduleSettings,
    Settings,
    VolumeSettings,
)

__all__ = [
    "APP_DIR_ENV",
    "AlertSettings",
    "BackupSettings",
    "DatabaseSettings",
    "DockerSettings",
    "EncryptionSettings",
    "LocationSettings",
    "ObjectiveSettings",
    "RestoreSettings",
    "RetentionSettings",
    "ScheduleSettings",
    "Settings",
    "VolumeSettings",
    "all_keys",
    "env_names",
    "load",
]


def load(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    *,
    absolute: bool = False,
) -> Settings:
    """``flags`` uses dotted keys (``database.host``); ``None`` values are ignored.

    ``absolute`` (the CLI) makes every path setting absolute; with ``SAFEHOLD_APP_DIR`` in the
    environment they always are (see the module's note on relative paths)."""
    environ = os.environ if env is None else env
    app_dir = _app_dir(environ)
    path, explicit = _config_path(config_file, environ, app_dir)
    values: dict[str, Any] = {}
    if path is not None and (explicit or path.exists()):
        values = _read_file(path)
    typed: set[str] = set()  # keys the caller gave: their relative paths mean the caller's cwd
    for name, value in _from_env(environ).items():
        values[name] = value
        typed.add(name)
    configured_name = values.get("database.name")  # DB_NAME / name, not --db-name
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
            typed.add(name)
    locations = values.pop("@locations", ((), ""))[0]
    settings = _build(values, str(path.absolute()) if path and path.exists() else "defaults")
    settings = _one_or_many(settings, configured_name, (flags or {}).get("database.name"))
    if absolute or app_dir is not None:
        settings, locations = _absolute(settings, locations, app_dir or Path.cwd(), typed)
    return dataclasses.replace(settings, password=_password(settings, environ), locations=locations)


def _one_or_many(settings: Settings, configured: Any, flag: Any) -> Settings:
    """``database.name`` (DB_NAME) is the single database; ``database.names`` several. Both
    configured is ambiguous; with ``names``, --db-name picks the one a run works on."""
    if not settings.database.names:
        return settings
    if configured is not None:
        origin = configured[1] if isinstance(configured, tuple) else "database.name"
        raise ConfigError(
            f"both database.name ({origin}) and database.names are set",
            hint="keep one: database.names lists every database (put the name there too), "
            "or unset database.names for a single database; --db-name picks one of several "
            "for a run",
        )
    return dataclasses.replace(settings, database_chosen=flag or None)


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


def _app_dir(environ: Mapping[str, str]) -> Path | None:
    value = environ.get(APP_DIR_ENV, "")
    return Path(os.path.expanduser(value)).absolute() if value else None


def _config_path(
    given: Path | None, environ: Mapping[str, str], app_dir: Path | None
) -> tuple[Path | None, bool]:
    if given is not None:
        return given, True
    if environ.get("SAFEHOLD_CONFIG"):
        return Path(environ["SAFEHOLD_CONFIG"]), True
    return (app_dir / DEFAULT_FILE if app_dir else DEFAULT_FILE), False


def _absolute(
    settings: Settings, locations: tuple[LocationSettings, ...], base: Path, typed: set[str]
) -> tuple[Settings, tuple[LocationSettings, ...]]:
    """Relative paths made absolute: the caller's (``typed``) against the cwd, the rest (file,
    defaults) against ``base``."""

    def fix(value: Any, key: str) -> Any:
        if not isinstance(value, Path) or value.is_absolute():
            return value
        return (Path.cwd() if key in typed else base) / value

    def fixed(obj: Any, prefix: str) -> Any:
        changes = {
            f.name: fix(getattr(obj, f.name), prefix + f.name)
            for f in dataclasses.fields(obj)
            if isinstance(getattr(obj, f.name), Path)
        }
        return dataclasses.replace(obj, **changes) if changes else obj

    settings = fixed(settings, "")
    sections = {name: fixed(getattr(settings, name), name + ".") for name in SECTIONS}
    # Locations live in the file only, so their paths always mean the base folder.
    return dataclasses.replace(settings, **sections), tuple(fixed(x, "@") for x in locations)


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
    locations = _locations(raw.pop("locations", {}), path)
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
    found = {key: (value, f"{path}: key '{key}'") for key, value in flat.items()}
    found["@locations"] = (locations, str(path))
    return found


def _locations(raw: Any, path: Path) -> tuple[LocationSettings, ...]:
    """``[locations.NAME]`` tables: named, so they live in the file only (no env names)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: 'locations' must be tables like [locations.offsite]")
    fields = {f.name: f for f in dataclasses.fields(LocationSettings) if f.name != "name"}
    found = []
    for name, table in raw.items():
        where = f"{path}: [locations.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1)
                raise ConfigError(
                    f"{where}: unknown key '{key}'",
                    hint=(f"did you mean '{close[0]}'? " if close else "")
                    + f"expected one of: {', '.join(sorted(fields))}",
                )
            values[key] = _convert(fields[key], value, f"{where} key '{key}'")
        location = LocationSettings(name=name, **values)
        if location.kind != "s3":
            raise ConfigError(f"{where}: kind {location.kind!r} is not known", hint="use 's3'")
        if not location.bucket:
            raise ConfigError(f"{where}: 'bucket' is missing")
        found.append(location)
    return tuple(found)


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
    owners = (Settings, LocationSettings, *SECTIONS.values())
    hints = typing.get_type_hints(next(c for c in owners if field_ in dataclasses.fields(c)))
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
    choices = typing.get_args(base) if typing.get_origin(base) is typing.Literal else ()
    if choices and result not in choices:
        raise ConfigError(
            f"{origin}: {value!r} is not valid", hint=f"expected one of: {', '.join(choices)}"
        )
    check = field_.metadata.get("check")
    refused = check(result) if check is not None else None
    if refused is not None:
        raise ConfigError(f"{origin}: {value!r} is not {refused[0]}", hint=refused[1])
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
