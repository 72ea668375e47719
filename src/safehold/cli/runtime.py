"""What every command needs: settings (flags > env > file > defaults), a sink, output helpers."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console

from .. import _proc, config
from .._proc import redact
from ..errors import SafeholdError
from ..model import Event, EventSink
from ..operations import runs
from ..sinks import LogSink, ProgressSink, fan_out, heartbeat
from ..sinks.alerts import Alert, RecentLines, send_alert
from ..storage import LocalStorage
from . import json_output

# A failure of these commands is sent to the alert targets (an interrupt is not a failure);
# `status` reports an RPO breach itself through Runtime.alert.
ALERT_ON_FAILURE = frozenset({"backup", "verify", "drill", "prune", "restore"})
# These leave a run record (operations.runs); all but restore, an operator's act rather than a
# scheduled job, also ping alerts.heartbeat_url.
RECORDED = frozenset(runs.RECORDED)
HEARTBEAT = RECORDED - {"restore"}


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
        click.echo(json_output.dumps(data))

    file_log: LogSink | None = None
    recent: RecentLines | None = None  # the last log lines, for an alert's excerpt
    command: str = ""
    run: runs.RunRecord | None = None  # this run's record, for the commands that keep one
    produced: list[str] = field(default_factory=list)  # artifacts and sets written, from events
    heartbeat_id: str = ""

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
            self._end_run(exc)
        finally:
            self.close()

    def begin_run(self, args: tuple[str, ...]) -> None:
        """Record that this run started, and ping the heartbeat's /start."""
        self.run = runs.start_run(self.command.partition(" ")[0], args)
        self._write_run(self.run)
        self.heartbeat_id = str(uuid.uuid4())
        self._ping("start", None)

    def _end_run(self, exc: BaseException | None) -> None:
        # Inside __exit__: nothing here may replace the run's own error.
        if self.run is None:
            return
        try:
            outcome, code = outcome_of(exc)
            message = None if exc is None else _message(exc)
            hint = getattr(exc, "hint", None) if outcome == "failed" else None
            finished = runs.finish_run(
                self.run,
                outcome=outcome,
                exit_code=code,
                error=None if message is None else redact(message, [self.settings.password]),
                hint=hint,
                error_type=None if exc is None or code == 0 else type(exc).__name__,
                produced=tuple(dict.fromkeys(self.produced)),
            )
            self.run = finished
            self._write_run(finished)
            self._ping("success" if code == 0 else "fail", finished)
        except Exception as failure:
            why = redact(f"{type(failure).__name__}: {failure}", [self.settings.password])
            self.sink(Event("run", f"finishing the run record failed: {why}", "warning"))

    def _write_run(self, record: runs.RunRecord) -> None:
        # Only a backup makes the repository: a prune, verify or restore of a folder that is
        # not there reports that, and must not leave an empty repository behind.
        if record.command != "backup" and not Path(self.settings.backup_dir).is_dir():
            return
        try:
            runs.write_run(LocalStorage(self.settings.backup_dir), record)
        except Exception as exc:  # the run goes on (or fails) for its own reasons
            why = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self.sink(Event("run", f"run record not written: {why}", "warning"))

    def _ping(self, signal_: heartbeat.Signal, record: runs.RunRecord | None) -> None:
        url = self.settings.alerts.heartbeat_url
        if not url or self.command.partition(" ")[0] not in HEARTBEAT:
            return
        code = None if record is None else record.exit_code
        error = None if record is None else record.error
        hint = None if record is None else record.hint
        text = heartbeat.body(code, self.command, error, hint)
        try:
            heartbeat.ping(url, signal_, text, self.settings.alerts.timeout, self.heartbeat_id)
        except Exception as exc:  # a ping never changes the outcome of the run
            where = heartbeat.safe_url(url)
            self.sink(Event("heartbeat", f"heartbeat {where} not pinged: {exc}", "warning"))


def outcome_of(exc: BaseException | None) -> tuple[runs.Outcome, int]:
    """A run's outcome and its exit code, as main() maps the exception."""
    if exc is None:
        return "ok", 0
    if isinstance(exc, click.exceptions.Exit):
        return ("ok" if exc.exit_code == 0 else "failed"), exc.exit_code
    if isinstance(exc, click.Abort | KeyboardInterrupt):
        return "interrupted", 128 + (_proc.caught_signal() or signal.SIGINT)
    if isinstance(exc, SafeholdError | click.ClickException):
        return "failed", exc.exit_code
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else 1
        return ("ok" if code == 0 else "failed"), code
    return "failed", 1


def _message(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def _is_failure(exc: BaseException) -> bool:
    # Ctrl-C (KeyboardInterrupt, click.Abort) and ctx.exit(code) are not failures to alert.
    return isinstance(exc, Exception) and not isinstance(exc, click.Abort | click.exceptions.Exit)


def runtime(ctx: click.Context, *, as_json: bool = False) -> Runtime:
    given: dict[str, Any] = ctx.find_root().obj or {}
    given = {**given, **(ctx.obj or {})}
    flags = {k: v for k, v in given.items() if not k.startswith("@")}
    command = ctx.command_path.partition(" ")[2] or ctx.info_name or ""
    recorded = _recorded(ctx, command)
    try:
        settings = config.load(given.get("@config"), flags=flags, absolute=True)
    except Exception as exc:
        if recorded:
            _record_unloaded(command, _arguments(ctx, []), flags, exc)
        raise
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
    produced: list[str] = []

    def products(event: Event) -> None:  # what the run wrote, for its record
        for key in ("artifact", "set_id"):
            if event.kind == "backup" and isinstance(event.data.get(key), str):
                produced.append(event.data[key])

    sink = fan_out(progress, stderr_log, file_log, recent, products if recorded else None)
    out = Console()
    if not out.is_terminal:
        out = Console(width=250)  # piped or in a log: never squeeze or cut columns
    rt = Runtime(settings, sink, as_json, out, closers, file_log, recent, command, None, produced)
    if recorded:
        rt.begin_run(_arguments(ctx, [settings.password]))
    from .recovery import recover_interrupted  # (it imports this module)

    try:
        recover_interrupted(rt)
    except Exception as exc:  # recovery reports; it never stops the command that found it
        why = redact(f"{type(exc).__name__}: {exc}", [settings.password])
        sink(Event("recover", f"finishing interrupted runs failed: {why}", "warning"))
    return rt


def _recorded(ctx: click.Context, command: str) -> bool:
    # `restore --list` and dry runs change nothing: they are not runs to keep a record of.
    if command.partition(" ")[0] not in RECORDED:
        return False
    return not (ctx.params.get("list_only") or ctx.params.get("dry_run"))


def _arguments(ctx: click.Context, secrets: list[str | None]) -> tuple[str, ...]:
    """The command's own arguments as typed (the shared connection options are settings, not
    part of what the run was asked to do), with passwords and URL credentials masked."""
    words: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if not name or not param.expose_value:
            continue
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params.get(name)
        values = value if isinstance(value, tuple | list) else (value,)
        if isinstance(param, click.Argument):
            words += [str(v) for v in values if v is not None]
            continue
        if not isinstance(param, click.Option):
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            if param.secondary_opts and value is False:
                words.append(max(param.secondary_opts, key=len))
            elif value == param.flag_value:
                words.append(flag)
            continue
        for v in values:
            if v is not None:
                words += [flag, str(v)]
    return tuple(_URL_SECRET.sub(r"\1***@", redact(word, secrets)) for word in words)


_URL_SECRET = re.compile(r"(://[^/@:\s]*:)[^@/\s]*@")


def _record_unloaded(
    command: str, args: tuple[str, ...], flags: dict[str, Any], exc: BaseException
) -> None:
    """A run that failed before its settings loaded (a bad config). Its record goes to the
    BACKUP_DIR given by flag or environment when that folder exists (the file that would name
    it is what failed; a failed run never creates a repository), and the heartbeat URL from
    the environment gets /fail. Nothing here may hide the original error."""
    outcome, code = outcome_of(exc)
    record = runs.finish_run(
        runs.start_run(command.partition(" ")[0], args),
        outcome=outcome,
        exit_code=code,
        error=_message(exc),
        hint=getattr(exc, "hint", None),
        error_type=type(exc).__name__,
    )
    folder = flags.get("backup_dir") or _from_env("backup_dir")
    if folder and Path(folder).is_dir():
        try:
            runs.write_run(LocalStorage(Path(folder).absolute()), record, create=False)
        except Exception as failure:
            _warn(f"run record not written: {getattr(failure, 'message', None) or failure}")
    url = _from_env("alerts.heartbeat_url")
    if url and record.command in HEARTBEAT:
        text = heartbeat.body(code, command, record.error, record.hint)
        try:
            heartbeat.ping(url, "fail", text, heartbeat.TIMEOUT_S, str(uuid.uuid4()))
        except Exception as failure:
            _warn(f"heartbeat {heartbeat.safe_url(url)} not pinged: {failure}")


def _warn(text: str) -> None:
    # No sink exists yet (the settings did not load): a plain line before main()'s error.
    click.echo(f"warning: {text}", err=True)


def _from_env(key: str) -> str:
    return next((os.environ[n] for n in config.env_names(key) if os.environ.get(n)), "")
