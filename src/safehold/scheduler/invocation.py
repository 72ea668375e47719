"""How a scheduled job calls safehold: which program, from which folder, with which config file,
and the settings that did not come from that file (flags, environment) passed on as
``SAFEHOLD_<KEY>`` variables, so a job sees exactly the settings its installer saw.

The password is never passed on: cron gets ``database.password_file`` or ``~/.pgpass``; the
daemon hands its own ``PGPASSWORD`` to its jobs in their environment, never in a crontab. Every
other secret a job would read from the environment (a passphrase variable, S3 keys) is a warning
at install naming the file or command that replaces it: cron starts jobs with almost no
environment (HOME, LOGNAME, SHELL, PATH=/usr/bin:/bin).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config
from ..config import Settings

CRON_PATH = "/usr/bin:/bin"  # what cron gives a job
# Not settings, but needed by jobs and harmless in a crontab (no secrets).
PASSED_ENV = (
    *("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"),
    *("PGPASSFILE", "PGSERVICEFILE", "PGSSLMODE", "PGSSLROOTCERT"),
)
# The same, needed only when there are S3 locations.
PASSED_S3_ENV = ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE")
# Secrets a job could take from the installer's environment, which cron does not pass on.
S3_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# Values that may hold tokens: a crontab gets them only from the config file.
SECRET_KEYS = ("alerts.apprise_urls", "alerts.webhook_url")


@dataclass(frozen=True)
class Invocation:
    program: tuple[str, ...]  # the safehold executable (or python -m safehold)
    workdir: Path  # jobs run here, so relative paths mean what they meant at install
    config_file: Path | None  # absolute
    env: tuple[tuple[str, str], ...]  # settings not from the file, as SAFEHOLD_* variables

    def argv(self, step: tuple[str, ...]) -> list[str]:
        given = ("--config", str(self.config_file)) if self.config_file else ()
        return [*self.program, *step, *given]


def invocation(
    settings: Settings,
    *,
    for_crontab: bool,
    environ: Mapping[str, str] | None = None,
    program: tuple[str, ...] | None = None,
) -> tuple[Invocation, list[str]]:
    """The invocation and warnings about what a job will not get."""
    env_in = os.environ if environ is None else environ
    warnings: list[str] = []
    config_file = None if settings.source == "defaults" else Path(settings.source).absolute()
    baseline = config.load(config_file, env={}, absolute=True)
    passed: dict[str, str] = {}
    for key in config.all_keys():
        value, base = _get(settings, key), _get(baseline, key)
        if value == base:
            continue
        where = str(config_file) if config_file else "a config file (--config)"
        if for_crontab and key in SECRET_KEYS:
            warnings.append(
                f"{key} comes from the environment or a flag and may hold a token: it is not "
                f"written into the crontab; put it in {where} (mode 0600)"
            )
            continue
        text = _env_text(value)
        if text is None:
            warnings.append(
                f"{key} differs from the config file in a way an environment variable cannot "
                f"express: put it in {where}"
            )
            continue
        passed[config.env_names(key)[-1]] = text
    program = program or safehold_program()
    if for_crontab:
        names = (*PASSED_ENV, *(PASSED_S3_ENV if settings.locations else ()))
        passed.update({name: env_in[name] for name in names if env_in.get(name)})
        if program[1:] == ("-m", "safehold") and env_in.get("PYTHONPATH"):
            passed["PYTHONPATH"] = env_in["PYTHONPATH"]
        path = _tool_path(settings, warnings)
        if path:
            passed["PATH"] = path
        warnings.extend(_missing_in_cron(settings, env_in))
    workdir = Path.cwd()
    return Invocation(program, workdir, config_file, tuple(sorted(passed.items()))), warnings


def _missing_in_cron(settings: Settings, env_in: Mapping[str, str]) -> list[str]:
    """What the jobs would read from an environment variable that cron does not set."""
    never = "which cron does not have (and safehold never writes into a crontab)"
    found = []
    if (env_in.get("PGPASSWORD") or env_in.get("DB_PASSWORD")) and (
        settings.database.password_file is None
    ):
        found.append(
            f"the password comes from PGPASSWORD/DB_PASSWORD, {never}: set "
            "database.password_file, or put it in ~/.pgpass of the crontab's user"
        )
    if settings.encryption.passphrase_env:
        found.append(
            f"encryption.passphrase_env reads the passphrase from "
            f"${settings.encryption.passphrase_env}, {never}: use encryption.passphrase_file "
            "(a file of mode 0600) or encryption.passphrase_command (a command printing it, "
            "such as a secret manager's CLI) instead"
        )
    keys = [name for name in S3_SECRETS if env_in.get(name)]
    bare = [x.name for x in settings.locations if x.credentials_file is None and not x.profile]
    if keys and bare:
        found.append(
            f"S3 credentials come from {'/'.join(keys)}, {never}: give "
            + ", ".join(f"[locations.{name}]" for name in bare)
            + " a credentials_file (an AWS credentials file of mode 0600) or a profile in "
            "~/.aws/credentials of the crontab's user"
        )
    return found


def safehold_program() -> tuple[str, ...]:
    """This installation's ``safehold``: the script beside this Python (a venv's bin), else the
    one on PATH, else ``python -m safehold``. Absolute, since cron's PATH is minimal."""
    beside = Path(sys.executable).parent / "safehold"
    if beside.is_file() and os.access(beside, os.X_OK):
        return (str(beside.absolute()),)
    found = shutil.which("safehold")
    if found:
        return (str(Path(found).absolute()),)
    return (str(Path(sys.executable).absolute()), "-m", "safehold")


def _tool_path(settings: Settings, warnings: list[str]) -> str | None:
    """PATH for cron when pg_dump is found only outside cron's /usr/bin:/bin."""
    if settings.database.pg_bin_dir is not None:
        return None
    found = shutil.which("pg_dump")
    if found is None:
        warnings.append("pg_dump is not on PATH: jobs will fail; set database.pg_bin_dir")
        return None
    if shutil.which("pg_dump", path=CRON_PATH) is not None:
        return None
    return f"{Path(found).parent}:{CRON_PATH}"


def _get(settings: Settings, key: str) -> Any:
    value: Any = settings
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _env_text(value: Any) -> str | None:
    """As the environment spells it, or ``None`` when it cannot (unset, empty, a list item with
    a comma: the environment's list separator)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        if not value or any("," in item for item in value):
            return None
        return ",".join(value)
    return str(value)
