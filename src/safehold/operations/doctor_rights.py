"""Doctor's checks of what a restore onto this server needs: the right to create and rename
databases, and the roles the newest backup's globals name (present, or creatable by this role).

A restore runs the same checks before step 1; doctor runs them ahead of the day they matter, so a
new host learns that its restoring role lacks CREATEROLE before the disaster, not during it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import catalog
from ..crypto import DecryptionKey
from ..errors import SafeholdError
from ..sources import pg_admin
from ..sources.postgres import PgTarget
from ..storage import LocalStorage
from .globals import plan_roles, refusal

if TYPE_CHECKING:
    from .doctor import Check


def rights(target: PgTarget, reached: bool) -> Check:
    from .doctor import Check

    if not reached:
        return Check("restore rights", "SKIP", "not checked: the server was not reached")
    ok, detail, fix = pg_admin.restore_rights_report(target)
    return Check("restore rights", "OK" if ok else "FAIL", detail, fix)


def roles(target: PgTarget, backup_dir: Path, key: DecryptionKey | None, reached: bool) -> Check:
    """Whether the roles the newest database backup needs exist here or can be created."""
    from .doctor import Check

    name = "roles"
    if not reached:
        return Check(name, "SKIP", "not checked: the server was not reached")
    storage = LocalStorage(backup_dir)
    newest = catalog.latest(catalog.scan(storage), "database", target.dbname)
    if newest is None or not catalog.companions(newest.manifest):
        return Check(name, "SKIP", f"no backup of {target.dbname!r} with its globals here")
    if newest.name.endswith(".age") and key is None:
        return Check(name, "SKIP", f"{newest.name} is encrypted and no key is configured")
    try:
        with pg_admin.admin(target) as conn:
            plan = plan_roles(conn, storage, newest.manifest, "create", key)
    except SafeholdError as exc:
        return Check(name, "FAIL", f"{newest.name}: {exc.message}", exc.hint or "")
    if plan is None:
        return Check(name, "SKIP", f"{newest.name} carries no globals")
    if plan.blocked:
        error = refusal(plan, target)
        return Check(name, "FAIL", error.message, error.hint or "")
    if plan.missing:
        detail = f"{len(plan.missing)} role(s) {newest.name} needs are missing here"
        return Check(name, "WARN", f"{detail}: {', '.join(plan.missing)}", "a restore creates them")
    return Check(name, "OK", f"all {len(plan.globals.roles)} role(s) {newest.name} needs exist")
