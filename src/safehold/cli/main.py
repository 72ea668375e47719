"""Entry point and the ONE place that maps errors to messages and exit codes.

Exit codes: 0 success; 1 unexpected failure; 2 usage/config; 3 database; 4 external tool;
5 storage; 6 integrity (damaged or foreign backup); 7 restore failed (live data untouched);
8 repository locked; 9 a pre/post-backup command in a container failed; 130 interrupted.
"""

from __future__ import annotations

import json
import sys
import traceback
from datetime import UTC, datetime

import click

from .._version import __version__
from ..errors import SafeholdError
from .backup_cmd import backup
from .config_cmd import config_cmd
from .copy_cmd import copy_cmd
from .daemon_cmd import daemon_cmd
from .demo_cmd import demo
from .doctor_cmd import doctor
from .drill_cmd import drill_cmd
from .keygen_cmd import keygen_cmd
from .list_cmd import list_cmd
from .pin_cmd import pin_cmd, unpin_cmd
from .pitr_cmd import pitr_cmd
from .prune_cmd import prune_cmd
from .report_cmd import report_cmd
from .restore_cmd import restore
from .schedule_cmd import schedule_cmd
from .status_cmd import status_cmd
from .verify_cmd import verify
from .wal_cmd import wal_fetch_cmd, wal_push_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="safehold")
def cli() -> None:
    """Backup and disaster recovery for PostgreSQL + Docker volume applications.

    Configuration comes from flags, then environment (BACKUP_DIR DB_HOST DB_PORT DB_NAME DB_USER,
    SAFEHOLD_*), then the config file (--config, SAFEHOLD_CONFIG or ./safehold.toml), then defaults.
    """


cli.add_command(backup)
cli.add_command(restore)
cli.add_command(list_cmd)
cli.add_command(report_cmd)
cli.add_command(config_cmd)
cli.add_command(copy_cmd)
cli.add_command(demo)
cli.add_command(doctor)
cli.add_command(drill_cmd)
cli.add_command(keygen_cmd)
cli.add_command(status_cmd)
cli.add_command(verify)
cli.add_command(schedule_cmd)
cli.add_command(daemon_cmd)
cli.add_command(prune_cmd)
cli.add_command(pin_cmd)
cli.add_command(unpin_cmd)
cli.add_command(pitr_cmd)
cli.add_command(wal_push_cmd)
cli.add_command(wal_fetch_cmd)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    wants_json = "--json" in args
    try:
        # Without standalone mode, ctx.exit(N) (status's monitoring exit codes) comes back here.
        code = cli.main(args=args, prog_name="safehold", standalone_mode=False)
    except SafeholdError as exc:
        _report(exc.message, exc.hint, type(exc).__name__, wants_json)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        _report(
            f"unexpected failure: {exc}",
            "please report this with the traceback above",
            type(exc).__name__,
            wants_json,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _report(message: str, hint: str | None, kind: str, wants_json: bool) -> None:
    # Without a terminal (cron, >> backup.log) the lines carry a timestamp like every log line.
    prefix = (
        "" if sys.stderr.isatty() else datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ ERROR   ")
    )
    click.echo(f"{prefix}error: {message}", err=True)
    if hint:
        click.echo(f"{prefix}hint: {hint}", err=True)
    if wants_json:
        click.echo(json.dumps({"error": message, "hint": hint, "type": kind}, indent=2))
