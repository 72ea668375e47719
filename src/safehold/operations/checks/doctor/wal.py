"""Doctor's checks of WAL archiving: whether the server's archiver is failing now
(``pg_stat_archiver``), and whether the archive_command can work at all when the server runs it,
as the server's OS user: the program, the repository, and the config, log, key and credential
files. Every unreachable item is named at once, each with its fix, because finding them one
failed segment at a time in the server log is what this check replaces.

The checks run as that user (``setpriv`` to its uid, gid and groups, as root; directly when
doctor already runs as it) with the server's own PATH and Python variables: a program that
works for root but not for ``postgres`` is the usual failure, and only running it can tell.
"""

from __future__ import annotations

import grp
import os
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from .... import _proc, naming
from ....errors import SafeholdError
from ....sources.postgres import PgTarget, connect
from .check import Check, ServerProcess, State

Access = Literal["read", "append", "folder", "run"]
ARCHIVER, ACCESS = "wal archiver", "archive_command access"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# What of the server's environment decides whether the program starts; nothing else is passed
# on (its environment may hold secrets, and argv is visible to every user).
_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
_AHEAD = re.compile(r"^if rm (?P<markers>\S+)/%f 2>/dev/null; then exit 0; else (?P<push>.+); fi$")
# Tests each "-r:/path" argument, printing one yes/no line each: one process for all of them.
_TESTS = 'for spec; do if test "${spec%%:*}" "${spec#*:}"; then echo yes; else echo no; fi; done'


@dataclass(frozen=True)
class Need:
    """A path wal-push uses, and how: the CLI lists these from the config the server's
    archive_command names (``DoctorSetup.archive_needs``)."""

    what: str
    path: Path
    access: Access


NeedsOf = Callable[[Path | None], list[Need]]


@dataclass(frozen=True)
class Pushes:
    """A safehold archive_command taken apart."""

    launcher: list[str]  # the words before "wal-push": how the server starts safehold
    backup_dir: Path | None
    config: Path | None


def parse(command: str) -> Pushes | None:
    """None when the command does not run ``safehold wal-push`` (another tool's, or a shell
    construct this does not read)."""
    ahead = _AHEAD.match(command.strip())
    try:
        words = shlex.split(ahead["push"] if ahead else command)
    except ValueError:
        return None
    if "wal-push" not in words:
        return None
    at = words.index("wal-push")
    options = words[at + 1 :]

    def option(flag: str) -> Path | None:
        for i, word in enumerate(options):
            if word == flag and i + 1 < len(options):
                return Path(options[i + 1])
            if word.startswith(flag + "="):
                return Path(word.split("=", 1)[1])
        return None

    return Pushes(words[:at], option("--backup-dir"), option("--config"))


def checks(
    target: PgTarget, state: State, backup_dir: Path, needs_of: NeedsOf | None
) -> list[Check]:
    if not state.reached:
        skip = "not checked: the server was not reached"
        return [Check(ARCHIVER, "SKIP", skip), Check(ACCESS, "SKIP", skip)]
    with connect(target, target.maintenance_db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('archive_mode'),"
            " CASE WHEN pg_has_role('pg_read_all_settings', 'MEMBER')"
            " THEN current_setting('archive_command') END,"
            " failed_count, last_failed_wal, last_failed_time, last_archived_wal,"
            " last_archived_time, archived_count FROM pg_stat_archiver"
        ).fetchone()
    assert row is not None  # pg_stat_archiver always has its one row
    mode, command, stats = str(row[0]), row[1], row[2:]
    if mode == "off":
        return _off(backup_dir)
    archiver = _archiver(*stats)
    if command is None:
        why = f"user {target.user!r} may not read archive_command (superusers may)"
        return [archiver, Check(ACCESS, "SKIP", f"not checked: {why}")]
    if not command.strip():
        detail = f"archive_mode is {mode} but archive_command is empty: WAL piles up in pg_wal"
        fix = "run 'safehold pitr setup --apply', or set archive_mode = off"
        return [archiver, Check(ACCESS, "FAIL", detail, fix)]
    pushes = parse(command)
    if pushes is None:
        detail = f"archive_command does not run safehold wal-push ({command!r}): not checked"
        return [archiver, Check(ACCESS, "SKIP", detail)]
    return [archiver, _access(state, pushes, backup_dir, needs_of)]


def _off(backup_dir: Path) -> list[Check]:
    wal = backup_dir / naming.WAL_DIR
    if wal.is_dir() and any(wal.glob("*.sha256")):
        detail = (
            f"archive_mode is off, but {wal} holds archived WAL: point-in-time recovery stopped"
        )
        fix = "run 'safehold pitr setup --apply' and restart the server, or remove the old WAL"
        return [Check(ARCHIVER, "WARN", detail, fix), Check(ACCESS, "SKIP", "archiving is off")]
    skip = "archive_mode is off (continuous archiving not set up: 'safehold pitr setup')"
    return [Check(ARCHIVER, "SKIP", skip), Check(ACCESS, "SKIP", "archiving is off")]


def _archiver(
    failed: int,
    failed_wal: str | None,
    failed_at: datetime | None,
    archived_wal: str | None,
    archived_at: datetime | None,
    archived: int,
) -> Check:
    def when(at: datetime | None) -> str:
        return at.strftime("%Y-%m-%d %H:%M:%S %Z") if at else "never"

    last = f"last archived {archived_wal} at {when(archived_at)}" if archived_wal else ""
    if failed and failed_at and (archived_at is None or failed_at > archived_at):
        detail = (
            f"archiving is failing: {failed} failed attempt(s), the last for {failed_wal} at "
            f"{when(failed_at)}; {last or 'nothing archived since the statistics were reset'}"
        )
        fix = (
            "the server log says why ('archive command failed'); see the archive_command "
            "access check; until it works, WAL piles up in pg_wal"
        )
        return Check(ARCHIVER, "FAIL", detail, fix)
    detail = f"{archived} file(s) archived, {last}" if last else "no WAL archived yet"
    if failed:
        detail += f"; {failed} earlier failure(s), the last at {when(failed_at)}, since healed"
    return Check(ARCHIVER, "OK", detail)


# --- as the server's OS user ------------------------------------------------------------------


def _access(state: State, pushes: Pushes, backup_dir: Path, needs_of: NeedsOf | None) -> Check:
    server = state.server
    if server is None:
        return Check(ACCESS, "SKIP", f"not checked: {state.server_unknown}")
    if os.geteuid() not in (0, server.uid):
        detail = f"not checked: run doctor as root or as {server.user!r} (the server's OS user)"
        return Check(ACCESS, "SKIP", detail)
    env = {k: v for k, v in (server.environ or {}).items() if k in _KEPT}
    env.setdefault("PATH", DEFAULT_PATH)
    repo = pushes.backup_dir or Path(env.get("BACKUP_DIR", str(backup_dir)))
    needs = [*_program_needs(pushes.launcher, env), *_repository_needs(repo)]
    broken: list[tuple[str, str]] = []
    if pushes.config is not None:
        needs.append(Need("config file", pushes.config, "read"))
        if needs_of is not None and os.access(pushes.config, os.R_OK):
            try:
                needs += needs_of(pushes.config)
            except SafeholdError as exc:
                broken.append((f"config file {pushes.config}: {exc.message}", exc.hint or ""))
    problems = broken + [p for need in needs if (p := _problem(server, need))]
    version = _run_as(server, [*pushes.launcher, "--version"], env)
    if version.returncode != 0 and not any(p[0].startswith("program") for p in problems):
        said = (version.stderr or version.stdout).strip().splitlines()[-1:] or ["no output"]
        fix = "run it as that user to see why: setpriv/runuser -u " + server.user
        problems.insert(
            0, (f"program: '{' '.join(pushes.launcher)} --version' fails: {said[0]}", fix)
        )
    who = f"as {server.user!r} (uid {server.uid}, the server's OS user)"
    if problems:
        detail = f"{who}, the archive_command cannot work: " + "; ".join(p[0] for p in problems)
        return Check(ACCESS, "FAIL", detail, "; ".join(dict.fromkeys(p[1] for p in problems)))
    listed = ", ".join(f"{n.what} {n.path}" for n in needs)
    return Check(
        ACCESS, "OK", f"{who}: safehold starts ({version.stdout.strip()}); reachable: {listed}"
    )


def _program_needs(launcher: list[str], env: dict[str, str]) -> list[Need]:
    """The program (after ``env`` and its NAME=VALUE words) and the PYTHONPATH folders."""
    words = list(launcher)
    assigned: dict[str, str] = {}
    if words and Path(words[0]).name == "env":
        words.pop(0)
        while words and ("=" in words[0] or words[0].startswith("-")):
            word = words.pop(0)
            if "=" in word and not word.startswith("-"):
                key, value = word.split("=", 1)
                assigned[key] = value
    needs: list[Need] = []
    if words:
        program = words[0]
        found = program if "/" in program else shutil.which(program, path=env["PATH"])
        needs.append(Need("program", Path(found or program), "run"))
    for folder in (assigned.get("PYTHONPATH") or env.get("PYTHONPATH", "")).split(":"):
        if folder:
            needs.append(Need("program's PYTHONPATH", Path(folder), "read"))
    return needs


def _repository_needs(repo: Path) -> list[Need]:
    wal = repo / naming.WAL_DIR
    needs = [Need("repository", repo, "folder")]
    if wal.is_dir():
        needs.append(Need("repository's wal/", wal, "folder"))
        if (wal / ".ahead").is_dir():
            needs.append(Need("repository's wal/.ahead", wal / ".ahead", "folder"))
    return needs


def _problem(server: ServerProcess, need: Need) -> tuple[str, str] | None:
    """What keeps the server's user from ``need`` and the fix, or None when nothing does."""
    path, user = need.path, server.user
    target = path
    if not path.exists():
        if need.access in ("read", "run"):
            return f"{need.what} {path} does not exist", f"create {path} or fix the setting"
        target = _existing_parent(path)  # safehold creates the rest: this one must be writable
    ancestors = list(reversed(target.parents))
    tests = {"read": ["-r"], "run": ["-x"], "folder": ["-w", "-x"], "append": ["-w"]}
    final = tests[need.access] if target == path else ["-w", "-x"]
    specs = [f"-x:{p}" for p in ancestors] + [f"{t}:{target}" for t in final]
    answers = _run_as(server, ["sh", "-c", _TESTS, "sh", *specs], {"PATH": DEFAULT_PATH})
    said = answers.stdout.split()
    for spec, answer in zip(specs, said, strict=False):
        if answer == "yes":
            continue
        test, where = spec.split(":", 1)
        shown = _mode(Path(where))
        if test == "-x" and Path(where).is_dir():
            return (
                f"{need.what} {path}: {user!r} cannot enter {where} ({shown})",
                f"chmod o+x {where} (or give {user!r} a group that may enter it), or keep "
                f"{need.what} where {user!r} can reach it",
            )
        verb = {"-r": "read", "-w": "write", "-x": "run"}[test]
        return f"{need.what} {where}: {user!r} may not {verb} it ({shown})", _fix(
            server, need, Path(where)
        )
    if len(said) < len(specs):
        return f"{need.what} {path}: could not test it as {user!r}: {answers.stderr.strip()}", ""
    return None


def _fix(server: ServerProcess, need: Need, where: Path) -> str:
    group = _group(server.gid)
    if need.access == "read":
        return f"chgrp {group} {where} && chmod g+r {where} (or chown {server.user} {where})"
    if need.access == "run":
        return f"chmod o+x {where}, or install safehold where {server.user!r} may run it"
    if where.is_dir():
        return (
            f"chown -R {server.user} {where}, or chgrp -R {group} {where} && chmod -R g+rwX {where}"
        )
    return f"chown {server.user} {where}, or chgrp {group} {where} && chmod g+w {where}"


def _run_as(server: ServerProcess, argv: list[str], env: dict[str, str]) -> _proc.Completed:
    """``argv`` as the server's user with only ``env`` (no variable of ours leaks in)."""
    clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    if os.geteuid() == server.uid:
        return _proc.run(clean, timeout=60)
    groups = ",".join(str(g) for g in server.groups)
    ids = [f"--reuid={server.uid}", f"--regid={server.gid}"]
    ids.append(f"--groups={groups}" if groups else "--clear-groups")
    return _proc.run(["setpriv", *ids, "--", *clean], timeout=60)


def _existing_parent(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _mode(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "cannot stat"
    owner: Any
    try:
        import pwd

        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = st.st_uid
    return f"{st.st_mode & 0o7777:04o}, {owner}:{_group(st.st_gid)}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
