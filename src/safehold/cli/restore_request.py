"""What ``safehold restore`` was asked, flag by flag, and the combinations it refuses.

The command body is parse -> ``check`` -> call -> print: every refusal of a combination of
flags happens in ``check``, before the runtime starts or anything is read. Flags that are also
config keys (``--jobs``: ``restore.jobs``) travel the config path (``config.load``'s dotted
keys); the ones that only make sense for one run (``--target-db``, ``--drop-previous``, ...)
go into the database restore's options here, typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..config import Settings
    from ..operations.database.globals import RolesMode
    from ..operations.database.restore import RestoreOptions

ROLES: tuple[RolesMode, ...] = ("create", "skip", "only")


def roles_mode(text: str | None) -> RolesMode | None:
    """``--roles`` as the restore takes it."""
    for mode in ROLES:
        if text == mode:
            return mode
    if text is None:
        return None
    raise UsageError(f"--roles takes one of {', '.join(ROLES)}, not {text!r}")


@dataclass(frozen=True)
class RestoreRequest:
    database_ref: str | None
    volume_refs: tuple[str, ...]
    full: bool
    pitr: bool
    dry_run: bool
    target_db: str | None = None
    drop_previous: bool = False
    no_owner: bool = False
    roles: RolesMode | None = None
    force: bool = False  # --force: a backup of another database over this one

    def check(self) -> None:
        if self.pitr:
            if self.full or self.database_ref or self.volume_refs or self.dry_run:
                raise UsageError(
                    "--pitr restores the cluster from a base backup and WAL; it does not mix "
                    "with --all, --database, --volume or --dry-run",
                    hint="run it on its own",
                )
            return
        if self.full and self.roles == "only":
            raise UsageError(
                "--roles only creates a dump's roles and stops; --all restores the whole set",
                hint="use --roles only with --database, or --roles create|skip with --all",
            )
        if self.full and (self.database_ref or self.volume_refs):
            raise UsageError(
                "--all restores a whole set; it does not mix with --database or --volume",
                hint="restore single backups with --database/--volume, or the set with --all",
            )
        if self.database_ref is None and not self.volume_refs and not self.full:
            raise UsageError(
                "nothing to restore",
                hint="use --database FILE|NAME|latest, --volume NAME:FILE, --all, or --list",
            )
        self.volumes()

    def volumes(self) -> list[tuple[str, str]]:
        """``--volume NAME:FILE`` as (name, reference) pairs."""
        return [_volume_ref(text) for text in self.volume_refs]

    def database_options(self, settings: Settings) -> RestoreOptions:
        return settings.restore_options(
            target_db=self.target_db,
            drop_previous=self.drop_previous,
            no_owner=self.no_owner,
            force=self.force,
            roles=self.roles,
        )


def _volume_ref(text: str) -> tuple[str, str]:
    name, sep, ref = text.partition(":")
    if not sep or not name or not ref:
        raise UsageError(
            f"--volume takes NAME:FILE, not {text!r}",
            hint="e.g. --volume user-data:./backups/volume_user-data_20241201_120000.tar.gz "
            "or --volume user-data:latest",
        )
    return name, ref
