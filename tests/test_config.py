"""Settings: flags > env > file > defaults, the seed's names, and loud errors for typos."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehold import config
from safehold.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "safehold.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_seeds(tmp_path: Path) -> None:
    settings = config.load(None, env={})
    db = settings.database
    assert settings.backup_dir == Path("./backups")
    assert (db.host, db.port, db.name, db.user) == ("localhost", 5432, "container_app", "postgres")
    assert settings.backup.compress == "gzip"
    assert settings.password is None


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nhost = "file-host"\nport = 6000\nname = "file-db"\n')
    env = {"DB_HOST": "env-host", "DB_PORT": "7000"}

    settings = config.load(path, env=env, flags={"database.host": "flag-host"})

    assert settings.database.host == "flag-host"
    assert settings.database.port == 7000
    assert settings.database.name == "file-db"
    assert settings.database.user == "postgres"


def test_safehold_env_name_wins_over_seed_alias(tmp_path: Path) -> None:
    env = {"DB_HOST": "seed", "SAFEHOLD_DATABASE_HOST": "specific", "BACKUP_DIR": "/b"}
    settings = config.load(None, env=env)
    assert settings.database.host == "specific"
    assert settings.backup_dir == Path("/b")


def test_config_file_from_env_and_default_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, 'backup_dir = "/srv/b"\n[backup]\ncompress = "zstd"\n')
    assert config.load(None, env={"SAFEHOLD_CONFIG": str(path)}).backup.compress == "zstd"
    monkeypatch.chdir(tmp_path)  # ./safehold.toml is read when present
    settings = config.load(None, env={})
    assert settings.backup_dir == Path("/srv/b")
    assert settings.source.endswith("safehold.toml")


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nhots = "x"\n')
    with pytest.raises(ConfigError) as caught:
        config.load(path, env={})
    assert str(path) in caught.value.message and "database.hots" in caught.value.message
    assert caught.value.hint is not None and "did you mean 'database.host'" in caught.value.hint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[database]\nport = "abc"\n', "a whole number"),
        ("[database]\nport = 70000\n", "1-65535"),
        ('[backup]\ncompress = "lz4"\n', "gzip, zstd, none"),
        ("lock_timeout = true\n", "a number"),
        ("[database\n", "not valid TOML"),
    ],
)
def test_bad_values_are_errors_even_when_overridden(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path, env={"DB_PORT": "5432", "SAFEHOLD_COMPRESS": "gzip"})
    assert expected in str(caught.value)


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(None, env={"DB_PORT": "five"})
    assert "DB_PORT" in caught.value.message


def test_a_health_url_is_checked_however_it_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, '[restore]\nhealth_url = "ftp://app/health"\n')
    with pytest.raises(ConfigError, match=r"restore\.health_url.*not an http"):
        config.load(path, env={})
    with pytest.raises(ConfigError, match="not an http"):
        config.load(None, env={}, flags={"restore.health_url": "localhost:8080"})
    good = config.load(None, env={}, flags={"restore.health_url": "http://127.0.0.1:8/h"})
    assert good.restore.health_url == "http://127.0.0.1:8/h"


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml", env={})


def test_password_sources_in_order(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    env = {"DB_PASSWORD_FILE": str(secret)}
    assert config.load(None, env=env).password == "from-file"
    assert config.load(None, env={**env, "DB_PASSWORD": "db-pw"}).password == "db-pw"
    assert (
        config.load(None, env={**env, "PGPASSWORD": "pg-pw", "DB_PASSWORD": "x"}).password
        == "pg-pw"
    )
    with pytest.raises(ConfigError, match="password file"):
        config.load(None, env={"DB_PASSWORD_FILE": str(tmp_path / "missing")})


def test_password_never_in_repr() -> None:
    settings = config.load(None, env={"PGPASSWORD": "s3cret-value"})
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in repr(settings.pg_target())
    assert "s3cret-value" not in " ".join(settings.pg_target().env().keys())
