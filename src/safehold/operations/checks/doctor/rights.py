"""Doctor's checks of what a restore onto this server needs: the right to create and rename
databases (CREATEDB, ownership), and the roles the newest backup's globals name (present, or
creatable by this role: CREATEROLE).

A restore runs the same checks before step 1; doctor runs them ahead of the day they matter, so a
new host learns that its restoring role lacks CREATEROLE before the disaster, not during it:
when there is no backup here to compare with, a role without CREATEROLE is a warning.
"""

from __future__ import annotations

from pathlib import Path

from .... import catalog
from ....crypto import DecryptionKey
from ....errors import SafeholdError
from ....sources import pg_admin
from ....sources.postgres import PgTarget
from ....storage import LocalStorage
from ...database.globals import plan_roles, refusal
from .check import Check, sql_name


def rights(target: PgTarget, reached: bool) -> Check:
    if not reached:
        return Check("restore rights", "SKIP", "not checked: the server was not reached")
    ok, detail, fix = pg_admin.restore_rights_report(target)
    return Check("restore rights", "OK" if ok else "FAIL", detail, fix)


def roles(target: PgTarget, backup_dir: Path, key: DecryptionKey | None, reached: bool) -> Check:
    """Whether the roles the newest database backup needs exist here or can be created."""
    name = "roles"
    if not reached:
        return Check(name, "SKIP", "not checked: the server was not reached")
    with pg_admin.admin(target) as conn:
        mine = pg_admin.role_rights(conn)
    creates = mine.superuser or mine.createrole
    storage = LocalStorage(backup_dir)
    newest = catalog.latest(catalog.scan(storage), "database", target.dbname)
    if newest is None or not catalog.companions(newest.manifest):
        return _unknown(name, f"no backup of {target.dbname!r} with its globals here", mine)
    if newest.name.endswith(".age") and key is None:
        return _unknown(name, f"{newest.name} is encrypted and no key is configured", mine)
    try:
        with pg_admin.admin(target) as conn:
            plan = plan_roles(conn, storage, newest.manifest, "create", key)
    except SafeholdError as exc:
        return Check(name, "FAIL", f"{newest.name}: {exc.message}", exc.hint or "")
    if plan is None:
        return _unknown(name, f"{newest.name} carries no globals", mine)
    if plan.blocked:
        error = refusal(plan, target)
        return Check(name, "FAIL", error.message, error.hint or "")
    if plan.missing:
        detail = f"{len(plan.missing)} role(s) {newest.name} needs are missing here"
        return Check(name, "WARN", f"{detail}: {', '.join(plan.missing)}", "a restore creates them")
    detail = f"all {len(plan.globals.roles)} role(s) {newest.name} needs exist"
    if not creates:
        detail += f" (role {mine.role!r} lacks CREATEROLE, which this restore does not need)"
    return Check(name, "OK", detail)


def _unknown(name: str, why: str, mine: pg_admin.RoleRights) -> Check:
    """No backup's globals to compare with: whether this role could create roles at all."""
    if mine.superuser or mine.createrole:
        return Check(name, "SKIP", why)
    detail = (
        f"{why}; role {mine.role!r} lacks CREATEROLE: a restore onto a server that lacks the "
        "backup's roles (a new host) cannot create them"
    )
    fix = f"as a superuser: ALTER ROLE {sql_name(mine.role)} CREATEROLE; or restore as a superuser"
    return Check(name, "WARN", detail, fix)
