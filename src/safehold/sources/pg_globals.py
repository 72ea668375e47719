"""The cluster objects a database needs that pg_dump does not write: roles, memberships, role and
database settings, the database's comment and grants, and the tablespaces its objects use.

``capture`` reads them from the live server (connected to the database itself, since owners,
ACLs and policies live in per-database catalogs) into frozen records; ``pg_globals_sql`` turns
them into SQL (a script for ``psql`` with these records as one JSON line, read back on restore).

Password hashes are in the script (like ``pg_dumpall --globals-only``), never in a manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


FORMAT = 1
# VALID UNTIL in UTC, so servers in other time zones compare equal ("infinity" stays as is).
VALID_UNTIL = (
    "CASE WHEN isfinite(rolvaliduntil) THEN to_char(rolvaliduntil AT TIME ZONE 'UTC',"
    " 'YYYY-MM-DD HH24:MI:SS.US') || '+00' ELSE rolvaliduntil::text END"
)
MARKER = "-- safehold-globals: "
# CREATE ROLE keyword per pg_roles column (True -> first word, False -> second).
FLAGS = {
    "superuser": ("SUPERUSER", "NOSUPERUSER"),
    "createdb": ("CREATEDB", "NOCREATEDB"),
    "createrole": ("CREATEROLE", "NOCREATEROLE"),
    "inherit": ("INHERIT", "NOINHERIT"),
    "login": ("LOGIN", "NOLOGIN"),
    "replication": ("REPLICATION", "NOREPLICATION"),
    "bypassrls": ("BYPASSRLS", "NOBYPASSRLS"),
}
# Only a superuser may give these (PostgreSQL 15: also REPLICATION and BYPASSRLS).
SUPERUSER_ONLY = ("superuser", "replication", "bypassrls")


@dataclass(frozen=True)
class Role:
    name: str
    superuser: bool = False
    createdb: bool = False
    createrole: bool = False
    inherit: bool = True
    login: bool = False
    replication: bool = False
    bypassrls: bool = False
    connection_limit: int = -1
    valid_until: str | None = None
    password: str | None = field(default=None, repr=False)  # the stored hash, never logged
    settings: tuple[str, ...] = ()  # ALTER ROLE ... SET (every database), "name=value"
    db_settings: tuple[str, ...] = ()  # ALTER ROLE ... IN DATABASE <this one> SET
    comment: str | None = None
    uses: tuple[str, ...] = ()  # why the database needs it: owner, acl, policy, member...

    def attributes(self) -> dict[str, Any]:
        """What a server can compare (no password, no settings)."""
        return {
            **{flag: getattr(self, flag) for flag in FLAGS},
            "connection_limit": self.connection_limit,
            "valid_until": self.valid_until,
        }


@dataclass(frozen=True)
class Membership:
    role: str  # the group
    member: str
    admin_option: bool = False


@dataclass(frozen=True)
class DatabaseGlobals:
    name: str
    owner: str
    comment: str | None = None
    connection_limit: int = -1
    settings: tuple[str, ...] = ()  # ALTER DATABASE ... SET, "name=value"
    acl_set: bool = False  # datacl is not the default: PUBLIC's defaults are revoked first
    grants: tuple[tuple[str | None, str, bool], ...] = ()  # (grantee or None=PUBLIC, priv, grant)
    tablespaces: tuple[tuple[str, str, str], ...] = ()  # (name, location, owner)


@dataclass(frozen=True)
class Globals:
    database: DatabaseGlobals
    roles: tuple[Role, ...]
    memberships: tuple[Membership, ...]
    passwords_readable: bool
    server_version_num: int
    format: int = FORMAT

    def role(self, name: str) -> Role | None:
        return next((r for r in self.roles if r.name == name), None)

    def facts(self) -> dict[str, Any]:
        """For the artifact's manifest (stored in the clear): names and counts, no secrets."""
        return {
            "database": self.database.name,
            "roles": [r.name for r in self.roles],
            "memberships": len(self.memberships),
            "password_hashes": "captured" if self.passwords_readable else "not readable",
            "tablespaces": [t[0] for t in self.database.tablespaces],
            "format": "sql",
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Globals:
        db = data["database"]
        return cls(
            database=DatabaseGlobals(
                name=db["name"],
                owner=db["owner"],
                comment=db.get("comment"),
                connection_limit=int(db.get("connection_limit", -1)),
                settings=tuple(db.get("settings", ())),
                acl_set=bool(db.get("acl_set")),
                grants=tuple((g[0], g[1], bool(g[2])) for g in db.get("grants", ())),
                tablespaces=tuple((t[0], t[1], t[2]) for t in db.get("tablespaces", ())),
            ),
            roles=tuple(
                Role(**{**r, **{k: tuple(r.get(k, ())) for k in _LISTS}}) for r in data["roles"]
            ),
            memberships=tuple(Membership(**m) for m in data["memberships"]),
            passwords_readable=bool(data["passwords_readable"]),
            server_version_num=int(data["server_version_num"]),
            format=int(data.get("format", FORMAT)),
        )


_LISTS = ("settings", "db_settings", "uses")

# --- capture --------------------------------------------------------------------------------

_ACL_HOLDERS = [  # (catalog, owner column, acl column): every object kind with an owner/ACL
    ("pg_namespace", "nspowner", "nspacl"),
    ("pg_class", "relowner", "relacl"),
    ("pg_proc", "proowner", "proacl"),
    ("pg_type", "typowner", "typacl"),
    ("pg_language", "lanowner", "lanacl"),
    ("pg_largeobject_metadata", "lomowner", "lomacl"),
    ("pg_foreign_data_wrapper", "fdwowner", "fdwacl"),
    ("pg_foreign_server", "srvowner", "srvacl"),
]


def _references_sql() -> str:
    parts = [
        "SELECT datdba AS oid, 'owner' AS use FROM pg_database WHERE oid = (SELECT db FROM me)",
        "SELECT a.who, 'acl' FROM pg_database d, aclexplode(d.datacl) x,"
        " unnest(array[x.grantee, x.grantor]) a(who) WHERE d.oid = (SELECT db FROM me)",
        "SELECT a.oid, 'acl' FROM pg_attribute t, aclexplode(t.attacl) x,"
        " unnest(array[x.grantee, x.grantor]) a(oid)",
        "SELECT defaclrole, 'default_acl' FROM pg_default_acl",
        "SELECT a.oid, 'default_acl' FROM pg_default_acl d, aclexplode(d.defaclacl) x,"
        " unnest(array[x.grantee, x.grantor]) a(oid)",
        "SELECT unnest(polroles), 'policy' FROM pg_policy",
        # Catch-all: every shared dependency recorded for this database's objects.
        "SELECT refobjid, CASE deptype WHEN 'o' THEN 'owner' WHEN 'a' THEN 'acl'"
        " WHEN 'r' THEN 'policy' ELSE 'other' END FROM pg_shdepend"
        " WHERE dbid = (SELECT db FROM me) AND refclassid = 'pg_authid'::regclass",
        "SELECT setrole, 'setting' FROM pg_db_role_setting"
        " WHERE setdatabase = (SELECT db FROM me) AND setrole <> 0",
        "SELECT spcowner, 'tablespace' FROM pg_tablespace WHERE oid IN (SELECT ts FROM spaces)",
    ]
    for catalog, owner, acl in _ACL_HOLDERS:
        parts.append(f"SELECT {owner}, 'owner' FROM {catalog}")
        parts.append(
            f"SELECT a.oid, 'acl' FROM {catalog} c, aclexplode(c.{acl}) x,"
            " unnest(array[x.grantee, x.grantor]) a(oid)"
        )
    return "\n UNION ALL ".join(parts)


_SPACES = """
    SELECT reltablespace AS ts FROM pg_class WHERE reltablespace <> 0
    UNION SELECT dattablespace FROM pg_database WHERE oid = (SELECT db FROM me)
"""
# Roles the database references, then (downwards) their members: a login role that only gets
# this database's privileges through a group is what the application connects as.
_ROLES_SQL = f"""
WITH RECURSIVE me AS (SELECT oid AS db FROM pg_database WHERE datname = current_database()),
spaces AS ({_SPACES}),
refs(oid, use) AS ({_references_sql()}),
wanted(oid, use) AS (
    SELECT oid, use FROM refs
    UNION SELECT m.member, 'member' FROM pg_auth_members m JOIN wanted w ON m.roleid = w.oid
)
SELECT r.rolname, array_agg(DISTINCT w.use ORDER BY w.use)
FROM wanted w JOIN pg_roles r ON r.oid = w.oid
WHERE r.oid <> 10 AND r.rolname !~ '^pg_'
GROUP BY r.rolname ORDER BY r.rolname
"""


def capture(conn: psycopg.Connection[Any]) -> Globals:
    """Read what the connected database needs from its server (any role may; the password
    hashes only when it may read pg_authid)."""
    uses = {str(n): tuple(u) for n, u in conn.execute(_ROLES_SQL).fetchall()}
    names = list(uses)
    row = conn.execute("SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')").fetchone()
    readable = bool(row and row[0])
    hashes: dict[str, str | None] = {}
    if readable:
        rows = conn.execute(
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)", (names,)
        ).fetchall()
        hashes = {str(n): p for n, p in rows}
    db_row = conn.execute(
        """SELECT d.oid, d.datname, pg_get_userbyid(d.datdba), shobj_description(d.oid,
           'pg_database'), d.datconnlimit, d.datacl IS NOT NULL
           FROM pg_database d WHERE d.datname = current_database()"""
    ).fetchone()
    assert db_row is not None
    db_oid = db_row[0]
    settings: dict[tuple[int, int], tuple[str, ...]] = {
        (int(r), int(d)): tuple(c or ())
        for r, d, c in conn.execute(
            "SELECT setrole, setdatabase, setconfig FROM pg_db_role_setting"
            " WHERE setdatabase IN (0, %s)",
            (db_oid,),
        ).fetchall()
    }
    roles = []
    for r in conn.execute(
        f"""SELECT oid, rolname, rolsuper, rolcreatedb, rolcreaterole, rolinherit, rolcanlogin,
                  rolreplication, rolbypassrls, rolconnlimit, {VALID_UNTIL},
                  shobj_description(oid, 'pg_authid')
           FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname""",
        (names,),
    ).fetchall():
        oid, name = int(r[0]), str(r[1])
        flags = dict(zip(FLAGS, map(bool, (r[2], r[3], r[4], r[5], r[6], r[7], r[8])), strict=True))
        roles.append(
            Role(
                name,
                **flags,
                connection_limit=int(r[9]),
                valid_until=r[10],
                password=hashes.get(name),
                settings=settings.get((oid, 0), ()),
                db_settings=settings.get((oid, db_oid), ()),
                comment=r[11],
                uses=uses[name],
            )
        )
    members = conn.execute(
        """SELECT g.rolname, m.rolname, a.admin_option FROM pg_auth_members a
           JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
           WHERE m.rolname = ANY(%s) AND (g.rolname = ANY(%s) OR g.rolname ~ '^pg_')
           ORDER BY 1, 2""",
        (names, names),
    ).fetchall()
    grants = conn.execute(
        """SELECT CASE WHEN x.grantee = 0 THEN NULL ELSE pg_get_userbyid(x.grantee) END,
                  x.privilege_type, x.is_grantable
           FROM pg_database d, aclexplode(d.datacl) x
           WHERE d.oid = %s AND x.grantee <> d.datdba ORDER BY 1 NULLS FIRST, 2""",
        (db_oid,),
    ).fetchall()
    spaces = conn.execute(
        f"""WITH me AS (SELECT %s::oid AS db) SELECT spcname, pg_tablespace_location(oid),
            pg_get_userbyid(spcowner) FROM pg_tablespace
            WHERE oid IN ({_SPACES}) AND spcname NOT IN ('pg_default', 'pg_global')
            ORDER BY 1""",
        (db_oid,),
    ).fetchall()
    database = DatabaseGlobals(
        name=str(db_row[1]),
        owner=str(db_row[2]),
        comment=db_row[3],
        connection_limit=int(db_row[4]),
        settings=settings.get((0, db_oid), ()),
        acl_set=bool(db_row[5]),
        grants=tuple((g, str(p), bool(o)) for g, p, o in grants),
        tablespaces=tuple((str(n), str(loc), str(o)) for n, loc, o in spaces),
    )
    return Globals(
        database,
        tuple(roles),
        tuple(Membership(str(g), str(m), bool(a)) for g, m, a in members),
        readable,
        conn.info.server_version,
    )
