"""Entry point and the ONE place that maps errors to messages and exit codes.

Exit codes: 0 success; 1 unexpected failure; 2 usage/config; 3 database; 4 external tool;
5 storage; 6 integrity (damaged or foreign backup); 7 restore failed (live data untouched);
8 repository locked; 9 a pre/post-backup command in a container failed; 130 interrupted by SIGINT
(Ctrl-C); 143 interrupted by SIGTERM (systemd, ``timeout``, ``docker stop``).

``status`` follows the monitoring plugin convention instead: 0 OK, 1 WARNING, 2 CRITICAL, and 3
UNKNOWN for any error of its own (a config error, a usage error, an unreadable repository, a
crash): a monitoring system must never read "status failed" as "backups WARNING".

An interrupting signal unwinds like Ctrl-C: every ``finally`` runs (unfinished files removed,
stopped containers started again, staging dropped, the lock released), the children still
running are stopped, and one line says so. A second signal during that clean-up is ignored.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
import traceback
from datetime import UTC, datetime
from typing import NoReturn

import click

from .. import _proc
from .._version import __version__
from ..errors import SafeholdError
from .examples import attach as attach_examples

# Command name -> module:attribute, imported only when that command runs: PostgreSQL's
# archive_command starts `safehold wal-push` once per WAL segment, so start-up time counts.
COMMANDS = {
    "backup": "backup_cmd:backup",
    "cat": "cat_cmd:cat_cmd",
    "completion": "completion_cmd:completion_cmd",
    "config": "config_cmd:config_cmd",
    "copy": "copy_cmd:copy_cmd",
    "daemon": "daemon_cmd:daemon_cmd",
    "demo": "demo_cmd:demo",
    "doctor": "doctor_cmd:doctor",
    "drill": "drill_cmd:drill_cmd",
    "init": "init_cmd:init_cmd",
    "keygen": "keygen_cmd:keygen_cmd",
    "list": "list_cmd:list_cmd",
    "pin": "pin_cmd:pin_cmd",
    "pitr": "pitr_cmd:pitr_cmd",
    "prune": "prune_cmd:prune_cmd",
    "report": "report_cmd:report_cmd",
    "restore": "restore_cmd:restore",
    "schedule": "schedule_cmd:schedule_cmd",
    "snapshots": "snapshots_cmd:snapshots_cmd",
    "status": "status_cmd:status_cmd",
    "unpin": "pin_cmd:unpin_cmd",
    "verify": "verify_cmd:verify",
    "wal-fetch": "wal_cmd:wal_fetch_cmd",
    "wal-push": "wal_cmd:wal_push_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
        assert isinstance(command, click.Command)
        attach_examples(command, cmd_name)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="safehold")
def cli() -> None:
    """Backup and disaster recovery for PostgreSQL + Docker volume applications.

    Configuration comes from flags, then environment (BACKUP_DIR DB_HOST DB_PORT DB_NAME DB_USER,
    SAFEHOLD_*), then the config file (--config, SAFEHOLD_CONFIG or ./safehold.toml), then defaults.
    """


attach_examples(cli, "")

UNKNOWN = 3  # status's exit code for its own errors


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    wants_json = "--json" in args
    status = _command_of(args) == "status"
    _proc.handle_interrupts()
    try:
        # Without standalone mode, ctx.exit(N) (status's monitoring exit codes) comes back here.
        code = cli.main(args=args, prog_name="safehold", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _interrupted(None, wants_json)
    except SafeholdError as exc:
        if _proc.caught_signal() is not None:  # the signal's clean-up failed: say both
            _interrupted(exc, wants_json)
        _report(exc.message, exc.hint, type(exc).__name__, wants_json, status)
        sys.exit(UNKNOWN if status else exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        if status and wants_json:
            _report_json(exc.format_message(), None, type(exc).__name__, status)
        sys.exit(UNKNOWN if status else exc.exit_code)
    except Exception as exc:
        if _proc.caught_signal() is not None:
            _interrupted(exc, wants_json)
        traceback.print_exc(file=sys.stderr)
        _report(
            f"unexpected failure: {exc}",
            "please report this with the traceback above",
            type(exc).__name__,
            wants_json,
            status,
        )
        sys.exit(UNKNOWN if status else 1)
    sys.exit(code if isinstance(code, int) else 0)


def _command_of(args: list[str]) -> str | None:
    # The group itself takes no option with a value (only --help, --version): the first word
    # that is not an option is the command.
    return next((a for a in args if not a.startswith("-")), None)


def _interrupted(during_cleanup: BaseException | None, wants_json: bool) -> NoReturn:
    """One line for an interrupted run, and exit 128 + the signal (130 SIGINT, 143 SIGTERM)."""
    signum = _proc.caught_signal() or signal.SIGINT  # a KeyboardInterrupt without our handler
    stopped = _proc.stopped_children() + _proc.stop_children()
    done = "stopped cleanly: unfinished work undone, lock released"
    if stopped:
        done += f", {', '.join(sorted(set(stopped)))} stopped"
    hint = None
    if during_cleanup is not None:  # e.g. a container that would not start again
        done = getattr(during_cleanup, "message", None) or str(during_cleanup)
        hint = getattr(during_cleanup, "hint", None)
    _report(
        f"interrupted by {signal.Signals(signum).name}: {done}", hint, "Interrupted", wants_json
    )
    sys.exit(128 + signum)


def _report(
    message: str, hint: str | None, kind: str, wants_json: bool, status: bool = False
) -> None:
    # Without a terminal (cron, >> backup.log) the lines carry a timestamp like every log line.
    prefix = (
        "" if sys.stderr.isatty() else datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ ERROR   ")
    )
    click.echo(f"{prefix}error: {message}", err=True)
    if hint:
        click.echo(f"{prefix}hint: {hint}", err=True)
    if wants_json:
        _report_json(message, hint, kind, status)


def _report_json(message: str, hint: str | None, kind: str, status: bool) -> None:
    data: dict[str, object] = {"error": message, "hint": hint, "type": kind}
    if status:  # the shape of a status reading: a monitor reads "level" first
        data = {"level": "unknown", **data}
    click.echo(json.dumps(data, indent=2))
