"""One database or several: ``[database] name`` (DB_NAME, the seed's single database) or
``[database] names`` (names and patterns, expanded against the server when a backup runs;
``operations.database.names``). The settings' side: which database a run means."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import naming

if TYPE_CHECKING:
    from .schema import DatabaseSettings


NAMES_DOC = (
    "several databases (names or patterns like tenant_*) backed up in one run; file names "
    "then carry the database (docs/guide/many-databases.md)"
)


def database_names_check(value: tuple[str, ...]) -> tuple[str, str] | None:
    """``database.names``' own rule: every entry can be part of a file name."""
    for name in value:
        if problem := naming.database_name_problem(name):
            return (
                "a list of database names or patterns",
                f"{name!r} cannot be part of a file name: {problem}",
            )
    return None


class DatabaseChoice:
    """``Settings``' methods about its databases (a mixin: the fields live in ``Settings``)."""

    if TYPE_CHECKING:  # not annotations at run time: the settings' type hints are read
        database: DatabaseSettings
        database_chosen: str | None

    @property
    def many_databases(self) -> bool:
        """Several databases configured (more than one name, or a pattern): their files carry
        the database's name and each has its own ``latest`` link (naming.database_artifact)."""
        names = self.database.names
        return len(names) > 1 or any(naming.is_pattern(n) for n in names)

    def database_name(self) -> str:
        """The database a run works on when it works on one: --db-name; else the one
        configured (``name``/DB_NAME, or the only entry of ``names``); with several, the
        first named outright (the server checks and ``status``'s default)."""
        if self.database_chosen:
            return self.database_chosen
        literal = [n for n in self.database.names if not naming.is_pattern(n)]
        return literal[0] if literal else self.database.name

    def database_patterns(self) -> tuple[str, ...]:
        """What a backup takes: --db-name alone, else ``names`` (expanded against the server
        by ``operations.database.names``), else the one database."""
        if self.database_chosen:
            return (self.database_chosen,)
        return self.database.names or (self.database.name,)

    def required_databases(self) -> tuple[str, ...]:
        """The databases that must have backups (status): every name given outright."""
        if not self.database.names:
            return (self.database.name,)
        return tuple(n for n in self.database.names if not naming.is_pattern(n))

    def seed_database(self) -> str | None:
        """The database the seed's ``db_backup_latest.sql`` follows (single-database mode)."""
        return None if self.many_databases else self.database_name()
