from __future__ import annotations

from pathlib import Path

import click

from ..crypto import generate_keypair
from ..model import Event
from .flags import shared_options
from .runtime import runtime

DEFAULT_IDENTITY = Path("safehold-identity.txt")


@click.command("keygen")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_IDENTITY,
    show_default=True,
    help="where to write the identity (the secret key), mode 0600",
)
@click.option("--force", is_flag=True, help="replace an existing identity file")
@click.option("--json", "as_json", is_flag=True, help="print the public key and path as JSON")
@shared_options
@click.pass_context
def keygen_cmd(ctx: click.Context, output: Path, force: bool, as_json: bool) -> None:
    """Create an age key pair for encrypted backups.

    Writes the identity (secret key, age-keygen's format, mode 0600) to --output and prints
    the public key (age1...) on stdout. Give the backup host only the public key
    (encryption.recipients): it can then write backups it cannot read. Keep the identity off
    that host and in a safe place: restore, verify --level full and drills need it, and
    without it the encrypted backups cannot be restored.
    """
    with runtime(ctx, as_json=as_json) as rt:
        public_key = generate_keypair(output, force=force)
        where = output.absolute()
        rt.sink(Event("keygen", f"identity (secret key) written to {where} (mode 0600)"))
        rt.sink(
            Event(
                "keygen",
                f"keep a copy of {where} in a safe place, away from the backup host: without "
                "it the backups encrypted to this key cannot be restored",
                "warning",
            )
        )
        if as_json:
            rt.emit_json({"public_key": public_key, "identity_file": str(where)})
        else:
            click.echo(public_key)
