"""Globals travel with every database backup; this is their restore side.

(Backup: ``backup.write_globals`` writes the roles and database settings the dump needs as
``db_globals_STAMP.sql[.age]`` beside it, a plain SQL script for ``psql -f``, committed before
the dump's manifest, whose ``facts["globals"]`` names it.)

Restore: the script's structured line is read back (sha256 checked against its manifest,
decrypted with the dump's key), and compared with the server: the missing roles are created in
one transaction with their attributes, memberships, settings and password hashes, or, when the
restoring user may not create them, the restore is refused before anything changes, naming every
missing role and the command that creates them. Existing roles are never altered; differences
are warnings. After pg_restore, the database's settings, comment and grants go to the staging
database before the swap.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ... import catalog, naming
from ...crypto import DecryptionKey, age_reader
from ...errors import IntegrityError, RestoreError, SafeholdError, UsageError
from ...model import Event, EventSink, Manifest
from ...sources import pg_admin, pg_globals, pg_globals_sql
from ...sources.pg_globals import Globals
from ...sources.postgres import PgTarget
from ...storage import LocalStorage
from .._pipeline import check_digest, unlock_key

if TYPE_CHECKING:
    import psycopg

RolesMode = Literal["skip", "create", "only"]
ROLES_MODES: tuple[str, ...] = ("skip", "create", "only")

# --- restore ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolesPlan:
    """What a restore does with a dump's globals. Computed without changing anything."""

    artifact: str
    path: Path
    mode: RolesMode
    missing: tuple[str, ...]  # roles the server lacks (created unless mode is skip)
    differences: tuple[str, ...]  # existing roles that differ from the backup's: warnings
    blocked: str | None  # why the restoring user may not create the missing roles
    globals: Globals = field(repr=False)

    def steps_before(self) -> list[str]:
        steps = [f"verify {self.artifact} (sha256 against its manifest)"]
        if not self.missing:
            steps.append(f"roles: all {len(self.globals.roles)} the backup names exist (unchanged)")
        elif self.mode == "skip":
            steps.append(f"roles: not created (--roles skip); missing: {', '.join(self.missing)}")
        elif self.blocked:
            steps.append(
                f"REFUSED: create roles {', '.join(self.missing)}: {self.blocked} (nothing is "
                "changed)"
            )
        else:
            steps.append(
                f"create {len(self.missing)} missing role(s) in one transaction: "
                f"{', '.join(self.missing)} (existing roles are not altered)"
            )
        return steps

    def step_after(self, staging: str) -> str:
        return (
            f"apply the database's settings, comment and grants from {self.artifact} to {staging!r}"
        )


def plan_roles(
    conn: psycopg.Connection[Any],
    storage: LocalStorage,
    dump: Manifest | None,
    mode: RolesMode,
    key: DecryptionKey | None,
) -> RolesPlan | None:
    """None when the dump has no globals artifact (older backups, foreign files)."""
    if mode not in ROLES_MODES:
        raise UsageError(f"unknown --roles {mode!r}", hint="use skip, create or only")
    names = catalog.companions(dump)
    if not names:
        if mode == "only":
            raise UsageError(
                f"{dump.artifact if dump else 'this dump'} has no globals artifact: there are "
                "no roles to create",
                hint="backups taken before safehold wrote globals carry no roles",
            )
        return None
    name = names[0]
    try:
        captured = read_globals(storage, name, key)
    except SafeholdError:
        if mode == "skip":  # restore as an older backup would
            return None
        raise
    present = _server_roles(conn, [r.name for r in captured.roles])
    missing = tuple(r.name for r in captured.roles if r.name not in present)
    return RolesPlan(
        name,
        storage.path(name),
        mode,
        missing,
        tuple(_differences(conn, captured, present)),
        _blocked(conn, captured, missing) if missing and mode != "skip" else None,
        captured,
    )


def read_globals(storage: LocalStorage, name: str, key: DecryptionKey | None) -> Globals:
    manifest = catalog.read_manifest(storage, name)
    hint = "restore with --roles skip (roles and database settings are then not restored)"
    if manifest is None or manifest.kind != "globals":
        raise IntegrityError(f"the globals artifact {name} has no manifest", hint=hint)
    try:
        data = storage.read_bytes(name)
    except FileNotFoundError:
        raise IntegrityError(
            f"the globals artifact {name} is missing from {storage.description}", hint=hint
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    check_digest(name, manifest.sha256, digest, manifest.size, len(data))
    if name.endswith(naming.AGE_SUFFIX):
        with age_reader(io.BytesIO(data), unlock_key(storage, key, name)) as clear:
            data = clear.read()
    return pg_globals_sql.parse_script(data.decode("utf-8"), name)


def _server_roles(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        f"""SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolinherit, rolcanlogin,
                   rolreplication, rolbypassrls, rolconnlimit, {pg_globals.VALID_UNTIL}
            FROM pg_roles WHERE rolname = ANY(%s)""",
        (names,),
    ).fetchall()
    return {
        str(r[0]): {
            **dict(zip(pg_globals.FLAGS, map(bool, r[1:8]), strict=True)),
            "connection_limit": int(r[8]),
            "valid_until": r[9],
        }
        for r in rows
    }


def _differences(
    conn: psycopg.Connection[Any], captured: Globals, present: dict[str, dict[str, Any]]
) -> list[str]:
    found = []
    for role in captured.roles:
        here = present.get(role.name)
        if here is None:
            continue
        wanted = role.attributes()
        changed = [f"{k} {here[k]} (backup: {v})" for k, v in wanted.items() if here[k] != v]
        if changed:
            found.append(f"role {role.name} exists with other attributes: {', '.join(changed)}")
    names = [r.name for r in captured.roles]
    rows = conn.execute(
        """SELECT g.rolname, m.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid
           JOIN pg_roles m ON m.oid = a.member WHERE m.rolname = ANY(%s)""",
        (names,),
    ).fetchall()
    members = {(str(g), str(m)) for g, m in rows}
    for m in captured.memberships:
        if m.member in present and m.role in present and (m.role, m.member) not in members:
            found.append(f"role {m.member} exists but is not a member of {m.role} as in the backup")
    return found


def _blocked(
    conn: psycopg.Connection[Any], captured: Globals, missing: tuple[str, ...]
) -> str | None:
    row = conn.execute(
        "SELECT current_user, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    user, superuser, createrole = str(row[0]), bool(row[1]), bool(row[2])
    if superuser:
        return None
    if not createrole:
        return f"user {user!r} has neither SUPERUSER nor CREATEROLE"
    special = [
        name
        for name in missing
        if (role := captured.role(name))
        and any(getattr(role, f) for f in pg_globals.SUPERUSER_ONLY)
    ]
    if special:
        return (
            f"only a superuser may create {', '.join(special)} (SUPERUSER, REPLICATION or "
            f"BYPASSRLS) and user {user!r} is not one"
        )
    return None


def refusal(plan: RolesPlan, target: PgTarget) -> RestoreError:
    """The one error for roles that cannot be created here: every role and the way out."""
    apply = (
        f"psql -v ON_ERROR_STOP=1 -h {target.host} -p {target.port} -U <superuser> -d "
        f"{target.maintenance_db}"
    )
    if plan.artifact.endswith(naming.AGE_SUFFIX):
        command = f"age -d -i <identity> {plan.path} | {apply} -f -"
    else:
        command = f"{apply} -f {plan.path}"
    policy = [n for n in plan.missing if "policy" in _uses(plan, n)]
    caveat = (
        f"; that also fails here, since row-level security policies name {', '.join(policy)}"
        if policy
        else ""
    )
    return RestoreError(
        f"the backup needs {len(plan.missing)} role(s) this server lacks and they cannot be "
        f"created: {plan.blocked}; missing: {', '.join(plan.missing)}",
        hint=f"create them as a superuser with: {command}; then run this restore again. Or "
        f"restore with --roles skip --no-owner (ownership and grants are not restored){caveat}",
    )


def _uses(plan: RolesPlan, name: str) -> tuple[str, ...]:
    role = plan.globals.role(name)
    return role.uses if role else ()


def check_skipped(plan: RolesPlan, no_owner: bool) -> None:
    """With --roles skip: refuse before anything changes when pg_restore would fail on a
    missing role (any role without --no-owner; one named by a policy even with it)."""
    needed = [n for n in plan.missing if not no_owner or "policy" in _uses(plan, n)]
    if needed:
        why = "row-level security policies name" if no_owner else "the dump's objects name"
        raise RestoreError(
            f"{why} roles this server lacks: {', '.join(needed)} (--roles skip creates none)",
            hint="restore with --roles create (the default), or create them first with "
            f"psql -v ON_ERROR_STOP=1 -f {plan.path}" + ("" if no_owner else ", or add --no-owner"),
        )


def check_roles(plan: RolesPlan | None, target: PgTarget, no_owner: bool) -> None:
    """The refusals, before the restore reads the dump or changes anything."""
    if plan is None or not plan.missing:
        return
    if plan.mode == "skip":
        check_skipped(plan, no_owner)
    elif plan.blocked:
        raise refusal(plan, target)


def apply_roles(
    conn: psycopg.Connection[Any], plan: RolesPlan | None, target: PgTarget, sink: EventSink
) -> tuple[list[str], list[str]]:
    """Before the staging database exists: create the missing roles (unless --roles skip);
    return the roles created and the warnings (existing roles that differ)."""
    if plan is None:
        return [], []
    for warning in plan.differences:
        sink(Event("restore", f"{warning} (not changed)", "warning"))
    created = create_roles(conn, plan, target, sink) if plan.mode != "skip" else []
    return created, [f"{w} (not changed)" for w in plan.differences]


def create_roles(
    conn: psycopg.Connection[Any], plan: RolesPlan, target: PgTarget, sink: EventSink
) -> list[str]:
    """Create the missing roles (attributes, password hash, settings, comment) and their
    memberships in one transaction; return their names."""
    import psycopg

    if not plan.missing:
        return []
    if plan.blocked:
        raise refusal(plan, target)
    captured = plan.globals
    try:
        with conn.transaction():
            present = _server_roles(conn, [r.name for r in captured.roles])
            todo = [r for r in captured.roles if r.name not in present]
            for role in todo:
                for statement in pg_globals_sql.create_role(role):
                    conn.execute(statement.encode())
            created = {r.name for r in todo}
            groups = set(present) | created
            predefined = [m.role for m in captured.memberships if m.role.startswith("pg_")]
            groups |= set(_server_roles(conn, predefined))
            for m in captured.memberships:
                if (m.role in created or m.member in created) and m.role in groups:
                    conn.execute(pg_globals_sql.grant_membership(m).encode())
    except psycopg.Error as exc:
        raise RestoreError(
            f"creating the roles {', '.join(plan.missing)} failed: "
            f"{exc.diag.message_primary or exc}; none was created (one transaction)",
            hint=f"apply {plan.path} by hand with psql as a superuser to see the statement",
        ) from None
    names = [r.name for r in todo]
    if names:
        sink(
            Event(
                "restore",
                f"created {len(names)} role(s) from {plan.artifact}: {', '.join(names)}",
                data={"roles_created": names},
            )
        )
    return names


def apply_database(
    conn: psycopg.Connection[Any],
    plan: RolesPlan | None,
    staging: str,
    no_owner: bool,
    sink: EventSink,
) -> list[str]:
    """The database-level part onto ``staging``, in one transaction (on failure staging is
    dropped: the live database was not touched); warnings for what names a missing role."""
    import psycopg

    if plan is None:
        return []
    captured = plan.globals
    named = pg_globals_sql.database_roles(captured, privileges=not no_owner)
    present = set(_server_roles(conn, sorted(named)))
    statements = pg_globals_sql.database_statements(
        captured.database, captured.roles, staging, privileges=not no_owner, present=present
    )
    try:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement.encode())
    except psycopg.Error as exc:
        pg_admin.drop(conn, staging)
        raise RestoreError(
            f"applying the database settings from {plan.artifact} failed: "
            f"{exc.diag.message_primary or exc}; the live database was not touched",
            hint="restore as a superuser or the database's owner, or with --no-owner",
        ) from None
    sink(Event("restore", f"applied {len(statements)} database-level statement(s) to {staging!r}"))
    lacking = sorted(named - present)
    if lacking:
        return [f"database settings naming missing roles were not applied: {', '.join(lacking)}"]
    return []


class _Options(Protocol):  # restore.RestoreOptions (which imports this module)
    @property
    def roles(self) -> RolesMode: ...
    @property
    def decryption(self) -> DecryptionKey | None: ...


def plan_for(
    target: PgTarget, storage: LocalStorage, dump: Manifest | None, opts: _Options
) -> RolesPlan | None:
    with pg_admin.admin(target) as conn:
        return plan_roles(conn, storage, dump, opts.roles, opts.decryption)


def roles_first(
    target: PgTarget, plan: RolesPlan | None, no_owner: bool, sink: EventSink
) -> tuple[list[str], list[str]] | None:
    """Before a restore reads its dump: the refusals; with --roles only, the whole work
    (roles created, warnings). None: go on with the database."""
    check_roles(plan, target, no_owner)
    if plan is None or plan.mode != "only":
        return None
    with pg_admin.admin(target) as conn:
        return apply_roles(conn, plan, target, sink)


def with_roles_steps(plan: RolesPlan | None, steps: list[str], staging: str) -> list[str]:
    """A restore plan's steps with the globals' steps spliced in: roles before the staging
    database is created, the database-level part after its check (only the roles: --roles
    only)."""
    if plan is None:
        return steps
    if plan.mode == "only":
        return plan.steps_before()
    at = next((i for i, s in enumerate(steps) if s.startswith("create staging")), len(steps))
    check = next((i for i, s in enumerate(steps) if s.startswith("check ")), len(steps) - 1)
    return [
        *steps[:at],
        *plan.steps_before(),
        *steps[at : check + 1],
        plan.step_after(staging),
        *steps[check + 1 :],
    ]
