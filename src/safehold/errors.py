"""Every failure safehold reports: a message, a hint, and the exit code the CLI maps it to.

The CLI has exactly one place that turns these into output and exit codes; library users catch
``SafeholdError`` (or a subclass) and read ``message`` and ``hint``.
"""

from __future__ import annotations


class SafeholdError(Exception):
    """Base of every expected failure. ``hint`` tells the operator what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(SafeholdError):
    """Bad configuration file, environment value or flag."""

    exit_code = 2


class DecryptionKeyError(ConfigError):
    """No key was given for an encrypted file, or the key given does not open it."""


class UsageError(SafeholdError):
    """A request that cannot be carried out as asked (unknown backup name, bad target...)."""

    exit_code = 2


class DatabaseError(SafeholdError):
    """The database server could not be used."""

    exit_code = 3


class DatabaseUnreachable(DatabaseError):
    pass


class AuthenticationFailed(DatabaseError):
    pass


class DatabaseMissing(DatabaseError):
    pass


class ToolError(SafeholdError):
    """A required external program is missing, too old, or failed."""

    exit_code = 4


class DockerUnavailable(ToolError):
    """The Docker engine could not be reached or asked about a volume."""


class StorageError(SafeholdError):
    """The backup repository cannot be written or read."""

    exit_code = 5


class StorageFull(StorageError):
    pass


class IntegrityError(SafeholdError):
    """A backup is damaged, is not what it claims to be, or does not match its manifest."""

    exit_code = 6


class RestoreError(SafeholdError):
    """A restore failed; the live state was left as it was."""

    exit_code = 7


class TargetInUse(RestoreError):
    pass


class LockBusy(SafeholdError):
    """Another safehold run holds the repository lock."""

    exit_code = 8


class HookFailed(SafeholdError):
    """A pre/post-backup command inside a container failed."""

    exit_code = 9
