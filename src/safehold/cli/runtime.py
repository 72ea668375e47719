"""What every command needs: settings (flags > env > file > defaults), a sink, output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from .. import config
from ..model import Event, EventSink
from ..sinks import LogSink, ProgressSink, fan_out

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
        if value is not None and value is not False:
            ctx.ensure_object(dict)[key] = value
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


@dataclass
class Runtime:
    settings: config.Settings
    sink: EventSink
    as_json: bool
    out: Console
    closers: list[Callable[[], None]]

    def sink_info(self, message: str) -> None:
        self.sink(Event("info", message))

    def sink_warning(self, message: str) -> None:
        self.sink(Event("warning", message, "warning"))

    def emit_json(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))

    file_log: LogSink | None = None

    def close(self) -> None:
        for closer in self.closers:
            closer()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        # The failure goes to LOG_FILE too: a cron log must say why a run failed, not only
        # that it started. stderr gets it from main(), the one place that reports errors.
        if exc is not None and self.file_log is not None:
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            hint = getattr(exc, "hint", None)
            self.file_log(Event("error", message + (f" (hint: {hint})" if hint else ""), "error"))
        self.close()


def runtime(ctx: click.Context, *, as_json: bool = False) -> Runtime:
    given: dict[str, Any] = ctx.find_root().obj or {}
    given = {**given, **(ctx.obj or {})}
    flags = {k: v for k, v in given.items() if not k.startswith("@")}
    settings = config.load(given.get("@config"), flags=flags)
    err = Console(stderr=True)
    fmt = given.get("@log_format") or "text"
    level = "warning" if given.get("@quiet") else "info"
    interactive = err.is_terminal and fmt == "text"
    stderr_log = LogSink(sys.stderr, fmt=fmt, level=level, progress_lines=not interactive)
    file_log = LogSink(None, settings.log_file, fmt=fmt) if settings.log_file else None
    progress = ProgressSink(err) if interactive and not given.get("@quiet") else None
    closers: list[Callable[[], None]] = [stderr_log.close]
    if file_log:
        closers.append(file_log.close)
    if progress:
        closers.insert(0, progress.close)
    sink = fan_out(progress, stderr_log, file_log)
    out = Console()
    if not out.is_terminal:
        out = Console(width=250)  # piped or in a log: never squeeze or cut columns
    return Runtime(settings, sink, as_json, out, closers, file_log)
