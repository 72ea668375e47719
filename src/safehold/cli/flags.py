"""How flags reach the settings: one path for every flag that is also a config key.

A flag that names a config key (``--db-host``: ``database.host``, ``--jobs``: ``restore.jobs``)
is remembered under that dotted key on the click context as it is parsed; ``runtime`` hands
them all to ``config.load`` as its ``flags``, which puts them over the environment, the file
and the defaults, checks them with the same rules as the file, and records where each value
came from. Keys starting with ``@`` are the runtime's own (config file, log format, quiet).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# (option, dotted config key or runtime key, help)
_SHARED: list[tuple[str, str, type | click.ParamType[Any], str]] = [
    ("--config", "@config", click.Path(path_type=Path), "config file (default ./safehold.toml)"),
    ("--backup-dir", "backup_dir", click.Path(path_type=Path), "repository folder [BACKUP_DIR]"),
    ("--db-host", "database.host", str, "PostgreSQL host [DB_HOST]"),
    ("--db-port", "database.port", int, "PostgreSQL port [DB_PORT]"),
    ("--db-name", "database.name", str, "database name [DB_NAME]"),
    ("--db-user", "database.user", str, "login role [DB_USER]"),
    ("--log-file", "log_file", click.Path(path_type=Path), "also append log lines here [LOG_FILE]"),
    ("--lock-timeout", "lock_timeout", float, "seconds to wait for the repository lock"),
]


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if isinstance(value, Path) and str(value) == ".":
            value = ""  # click turns --log-file '' into Path("."): the user means "none"
        if value is not None and value is not False and value != ():
            # A repeatable flag arrives as a tuple; the config path takes lists, as TOML does.
            ctx.ensure_object(dict)[key] = list(value) if isinstance(value, tuple) else value
        return value

    return callback


def shared_options(func: F) -> F:
    """Connection, repository and logging options, accepted by every command."""
    for flag, key, kind, text in reversed(_SHARED):
        param = "opt_" + key.strip("@").replace(".", "_")
        func = click.option(
            flag, param, type=kind, help=text, expose_value=False, callback=_remember(key)
        )(func)
    func = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
        expose_value=False,
        callback=_remember("@log_format"),
        help="log line format on stderr and in the log file",
    )(func)
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_remember("@quiet"),
        help="only warnings and errors",
    )(func)


def config_option(flag: str, key: str, *decls: str, help: str, **attrs: Any) -> Callable[[F], F]:
    """A command's own flag that sets the config key ``key`` for this run (``[key]`` is added
    to its help). Its value still reaches the command, for ``check()`` and messages; what the
    command runs with comes from the settings, so the flag, ``SAFEHOLD_*`` and the file agree."""
    return click.option(flag, *decls, callback=_remember(key), help=f"{help} [{key}]", **attrs)
