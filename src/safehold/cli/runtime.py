"""What every command needs: settings (flags > env > file > defaults), a sink, output helpers."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from .. import config
from .._proc import redact
from ..model import Event, EventSink
from ..sinks import LogSink, ProgressSink, fan_out
from ..sinks.alerts import Alert, RecentLines, send_alert

F = TypeVar("F", bound=Callable[..., Any])

# A failure of these commands is sent to the alert targets (an interrupt is not a failure);
# `status` reports an RPO breach itself through Runtime.alert.
ALERT_ON_FAILURE = frozenset({"backup", "verify", "drill", "prune", "restore"})

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
    recent: RecentLines | None = None  # the last log lines, for an alert's excerpt
    command: str = ""

    def alert(
        self,
        what: str,
        message: str,
        *,
        hint: str | None = None,
        exit_code: int | None = None,
        error_type: str | None = None,
    ) -> list[str]:
        """Notify the configured alert targets; returns the ones that failed. Never raises: a
        failing target, or alerting itself failing, is a warning in the log."""
        targets = self.settings.alerts
        if not (targets.apprise_urls or targets.webhook_url):
            return []
        try:
            alert = Alert(
                what=what,
                command=self.command,
                host=socket.gethostname(),
                repository=str(self.settings.backup_dir.absolute()),
                message=message,
                hint=hint,
                exit_code=exit_code,
                error_type=error_type,
                log_excerpt=self.recent.lines() if self.recent else (),
            ).redacted([self.settings.password])
            t = targets
            return send_alert(alert, t.apprise_urls, t.webhook_url, t.timeout, self.sink)
        except Exception as exc:  # an alert must never change the run's outcome
            why = redact(f"{type(exc).__name__}: {exc}", [self.settings.password])
            self.sink(Event("alert", f"alerting failed: {why}", "warning"))
            return ["alerting"]

    def close(self) -> None:
        for closer in self.closers:
            closer()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        # The failure goes to LOG_FILE too: a cron log must say why a run failed, not only
        # that it started. stderr gets it from main(), the one place that reports errors.
        try:
            if exc is not None:
                message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                hint = getattr(exc, "hint", None)
                line = Event("error", message + (f" (hint: {hint})" if hint else ""), "error")
                for log in (self.file_log, self.recent):
                    if log is not None:
                        log(line)
                if self.command.partition(" ")[0] in ALERT_ON_FAILURE and _is_failure(exc):
                    code = getattr(exc, "exit_code", 1)  # as main() maps it
                    kind = type(exc).__name__
                    self.alert(
                        f"{self.command} failed",
                        message,
                        hint=hint,
                        exit_code=code,
                        error_type=kind,
                    )
        finally:
            self.close()


def _is_failure(exc: BaseException) -> bool:
    # Ctrl-C (KeyboardInterrupt, click.Abort) and ctx.exit(code) are not failures to alert.
    return isinstance(exc, Exception) and not isinstance(exc, click.Abort | click.exceptions.Exit)


def runtime(ctx: click.Context, *, as_json: bool = False) -> Runtime:
    given: dict[str, Any] = ctx.find_root().obj or {}
    given = {**given, **(ctx.obj or {})}
    flags = {k: v for k, v in given.items() if not k.startswith("@")}
    settings = config.load(given.get("@config"), flags=flags, absolute=True)
    err = Console(stderr=True)
    fmt = given.get("@log_format") or "text"
    level = "warning" if given.get("@quiet") else "info"
    interactive = err.is_terminal and fmt == "text"
    file_log = LogSink(None, settings.log_file, fmt=fmt) if settings.log_file else None
    if file_log is not None and file_log.same_file_as(sys.stderr):
        # `>> backup.log 2>&1` with log_file = backup.log: stderr's lines already land there,
        # all of them, as the log file asks for.
        file_log.close()
        file_log, level = None, "info"
    stderr_log = LogSink(sys.stderr, fmt=fmt, level=level, progress_lines=not interactive)
    progress = ProgressSink(err) if interactive and not given.get("@quiet") else None
    closers: list[Callable[[], None]] = [stderr_log.close]
    if file_log:
        closers.append(file_log.close)
    if progress:
        closers.insert(0, progress.close)
    recent = RecentLines(secrets=[settings.password])
    sink = fan_out(progress, stderr_log, file_log, recent)
    out = Console()
    if not out.is_terminal:
        out = Console(width=250)  # piped or in a log: never squeeze or cut columns
    command = ctx.command_path.partition(" ")[2] or ctx.info_name or ""
    rt = Runtime(settings, sink, as_json, out, closers, file_log, recent, command)
    from .recovery import recover_interrupted  # (it imports this module)

    try:
        recover_interrupted(rt)
    except Exception as exc:  # recovery reports; it never stops the command that found it
        why = redact(f"{type(exc).__name__}: {exc}", [settings.password])
        sink(Event("recover", f"finishing interrupted runs failed: {why}", "warning"))
    return rt
