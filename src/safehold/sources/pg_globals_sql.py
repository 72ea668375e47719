"""The globals as SQL: statements (shared by the script and by restore) and the script for
``psql -v ON_ERROR_STOP=1 -f FILE``, whose ``-- safehold-globals: {json}`` line is what safehold
reads back (``parse_script``), so a restore never parses SQL.

The script creates only missing roles (inside one DO block, in one transaction), grants the
memberships of the roles it created, and applies the database-level part only when the
database exists, so it can be run before and again after the database is restored.
"""

from __future__ import annotations

import json
from collections.abc import Container

from ..errors import IntegrityError
from .pg_globals import FLAGS, MARKER, DatabaseGlobals, Globals, Membership, Role

# Settings whose value is a list of quoted elements (pg_dumpall's variable_is_guc_list_quote).
LIST_SETTINGS = {
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
}


# --- statements (shared by the script and the restore) ---------------------------------------


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    # standard_conforming_strings is on (the default since 9.1): only quotes are doubled.
    return "'" + text.replace("'", "''") + "'"


def create_role(role: Role) -> list[str]:
    """CREATE ROLE with every attribute and the password hash, then its comment."""
    words = [FLAGS[flag][0 if getattr(role, flag) else 1] for flag in FLAGS]
    words.append(f"CONNECTION LIMIT {role.connection_limit}")
    if role.valid_until is not None:
        words.append(f"VALID UNTIL {literal(role.valid_until)}")
    if role.password is not None:
        words.append(f"PASSWORD {literal(role.password)}")
    statements = [f"CREATE ROLE {ident(role.name)} WITH {' '.join(words)}"]
    statements += [f"ALTER ROLE {ident(role.name)} SET {set_clause(s)}" for s in role.settings]
    if role.comment is not None:
        statements.append(f"COMMENT ON ROLE {ident(role.name)} IS {literal(role.comment)}")
    return statements


def grant_membership(membership: Membership) -> str:
    admin = " WITH ADMIN OPTION" if membership.admin_option else ""
    return f"GRANT {ident(membership.role)} TO {ident(membership.member)}{admin}"


def set_clause(setting: str) -> str:
    """``name=value`` (as pg_db_role_setting stores it) as ``"name" = 'value'``."""
    name, _, value = setting.partition("=")
    if name.lower() not in LIST_SETTINGS:
        return f"{ident(name)} = {literal(value)}"
    return f"{ident(name)} = {', '.join(literal(v) for v in _split_list(value))}"


def _split_list(value: str) -> list[str]:
    """A flattened list setting (``"$user", public``) back into its elements."""
    items: list[str] = []
    i = 0
    while i <= len(value):
        while i < len(value) and value[i].isspace():
            i += 1
        if i < len(value) and value[i] == '"':
            end, item = i + 1, ""
            while end < len(value):
                if value[end] == '"':
                    if value[end + 1 : end + 2] == '"':
                        item, end = item + '"', end + 2
                        continue
                    break
                item, end = item + value[end], end + 1
            items.append(item)
            i = value.find(",", end)
        else:
            comma = value.find(",", i)
            items.append(value[i : comma if comma >= 0 else len(value)].strip())
            i = comma
        if i < 0:
            break
        i += 1
    return items


def database_statements(
    db: DatabaseGlobals,
    roles: tuple[Role, ...],
    name: str,
    *,
    privileges: bool = True,
    present: Container[str] | None = None,
) -> list[str]:
    """Settings, comment, connection limit (and owner and grants unless ``privileges`` is off)
    applied to database ``name`` (the staging database in a restore). With ``present``, the
    statements naming a role not in it are left out."""

    def there(role: str | None) -> bool:
        return role is None or present is None or role in present

    target = ident(name)
    out = []
    if privileges and there(db.owner):
        out.append(f"ALTER DATABASE {target} OWNER TO {ident(db.owner)}")
    if db.connection_limit != -1:
        out.append(f"ALTER DATABASE {target} CONNECTION LIMIT {db.connection_limit}")
    out += [f"ALTER DATABASE {target} SET {set_clause(s)}" for s in db.settings]
    for role in roles:
        out += [
            f"ALTER ROLE {ident(role.name)} IN DATABASE {target} SET {set_clause(s)}"
            for s in role.db_settings
            if there(role.name)
        ]
    if db.comment is not None:
        out.append(f"COMMENT ON DATABASE {target} IS {literal(db.comment)}")
    if privileges and db.acl_set:
        out.append(f"REVOKE ALL ON DATABASE {target} FROM PUBLIC")
        for grantee, privilege, grantable in db.grants:
            if there(grantee):
                who = "PUBLIC" if grantee is None else ident(grantee)
                option = " WITH GRANT OPTION" if grantable else ""
                out.append(f"GRANT {privilege} ON DATABASE {target} TO {who}{option}")
    return out


def database_roles(globals_: Globals, *, privileges: bool = True) -> set[str]:
    """The roles the database-level statements name."""
    db = globals_.database
    named = {r.name for r in globals_.roles if r.db_settings}
    if privileges:
        named |= {db.owner} | {g for g, _, _ in db.grants if g is not None}
    return named


# --- the script ------------------------------------------------------------------------------


def render_script(globals_: Globals, artifact: str, taken_at: str) -> str:
    db = globals_.database
    lines = [
        f"-- safehold globals of database {db.name}: the roles, memberships and settings it",
        f"-- needs on a new server ({len(globals_.roles)} roles; taken {taken_at}).",
        "-- Apply as a superuser (or a role with CREATEROLE) before restoring the dump:",
        f"--   psql -v ON_ERROR_STOP=1 -d postgres -f {artifact}",
        "-- Only missing roles are created; existing roles are left exactly as they are.",
        "-- The database's settings, comment and grants are applied when it exists (run the",
        "-- file again after creating or restoring it).",
    ]
    if not globals_.passwords_readable:
        lines.append("-- Password hashes were not readable by the backing-up role: set them.")
    for name, location, owner in db.tablespaces:
        lines.append(f"-- Tablespace used: CREATE TABLESPACE {ident(name)} OWNER {ident(owner)}")
        lines.append(f"--   LOCATION {literal(location)};  (create it first when missing)")
    lines.append(MARKER + json.dumps(globals_.to_json(), sort_keys=True))
    body = ["DECLARE", "  created text[] := '{}';", "BEGIN"]
    for role in globals_.roles:
        body.append(f"  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = "
                    f"{literal(role.name)}) THEN")  # fmt: skip
        body += [f"    {s};" for s in create_role(role)]
        body.append(f"    created := created || {literal(role.name)}::text;")
        body.append("  END IF;")
    for m in globals_.memberships:
        body.append(
            f"  IF ({literal(m.role)} = ANY(created) OR {literal(m.member)} = ANY(created)) AND"
            " EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = "
            f"{literal(m.role)}) THEN"
        )
        body += [f"    {grant_membership(m)};", "  END IF;"]
    body.append(
        "  RAISE NOTICE 'safehold: % role(s) created: %', cardinality(created), "
        "array_to_string(created, ', ');"
    )
    body.append("END")
    lines += ["BEGIN;", _do(body), "COMMIT;"]
    statements = database_statements(db, globals_.roles, db.name)
    lines.append(
        _do(
            [
                "BEGIN",
                "  IF EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = "
                f"{literal(db.name)}) THEN",
                *[f"    {s};" for s in statements],
                "  ELSE",
                f"    RAISE NOTICE 'safehold: database % does not exist yet: run this file "
                f"again after restoring it', {literal(db.name)};",
                "  END IF;",
                "END",
            ]
        )
    )
    return "\n".join(lines) + "\n"


def _do(body: list[str]) -> str:
    text = "\n".join(body)
    tag = "$safehold$"
    n = 0
    while tag in text:  # a comment or setting could contain the quote tag
        n += 1
        tag = f"$safehold{n}$"
    return f"DO {tag}\n{text}\n{tag};"


def parse_script(text: str, name: str) -> Globals:
    """The structured form from a globals script (its ``-- safehold-globals:`` line)."""
    for line in text.splitlines():
        if line.startswith(MARKER):
            try:
                return Globals.from_json(json.loads(line[len(MARKER) :]))
            except (ValueError, KeyError, TypeError) as exc:
                raise IntegrityError(
                    f"{name} has an unreadable safehold-globals line: {exc}",
                    hint="the file was edited; restore with --roles skip, or apply it with psql",
                ) from None
    raise IntegrityError(
        f"{name} has no safehold-globals line",
        hint="it was not written by safehold backup; restore with --roles skip",
    )
