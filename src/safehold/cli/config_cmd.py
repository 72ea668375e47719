from __future__ import annotations

import dataclasses

import click

from .. import config
from . import json_output
from .flags import shared_options
from .runtime import runtime


@click.command("config")
@click.option("--keys", is_flag=True, help="list every config key with its env names and default")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@shared_options
@click.pass_context
def config_cmd(ctx: click.Context, keys: bool, as_json: bool) -> None:
    """Show the effective configuration (the password is never shown)."""
    if keys:
        rows = []
        for key, field_ in config.all_keys().items():
            default = field_.default if field_.default is not dataclasses.MISSING else None
            rows.append(
                {
                    "key": key,
                    "env": list(config.env_names(key)),
                    "default": None if default is None else str(default),
                    "doc": field_.metadata.get("doc", ""),
                }
            )
        if as_json:
            click.echo(json_output.dumps(rows, sort_keys=False))
        else:
            for row in rows:
                click.echo(f"{row['key']:24} {', '.join(row['env']):48} default={row['default']}")
        return
    with runtime(ctx, as_json=as_json) as rt:
        s = rt.settings
        data = {
            "source": s.source,
            "backup_dir": str(s.backup_dir),
            "log_file": str(s.log_file) if s.log_file else None,
            "lock_timeout": s.lock_timeout,
            "database": {
                k: (str(v) if v is not None else None)
                for k, v in dataclasses.asdict(s.database).items()
            },
            "backup": dataclasses.asdict(s.backup),
            "restore": dataclasses.asdict(s.restore),
            "password": "set" if s.password else "not set (libpq may use ~/.pgpass)",
        }
        if as_json:
            rt.emit_json(data)
        else:
            for key, value in data.items():
                click.echo(f"{key}: {value}")
