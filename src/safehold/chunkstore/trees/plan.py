"""What a restore will make, checked before anything is made: a tree is refused whole.

The rules are the tar restore's (``sources.tar.names``): no absolute name, no ``..``, no NUL,
no symlink whose target leaves the folder (chains are checked on the finished tree). On top of
those, what a tree written by ``backup_tree`` always is: entries in strict depth-first name
order (so no name twice and every folder before what it holds), each one's parent a folder of
the tree (never a file or a symlink, so nothing is written through a link), each hardlink to an
earlier file. A snapshot body is encrypted to public recipients, so these hold for any tree,
whoever wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...errors import IntegrityError
from ...sources.tar.names import link_target_problem, member_path
from ...sources.tar.unpack import ExtractFacts
from .entries import DIR, FILE, HARDLINK, SYMLINK, Entry, sort_key


class RestoreFacts(ExtractFacts):
    """Counted like the tar restore's ``ExtractFacts``: dirs include the root."""


@dataclass
class Plan:
    dirs: list[Entry] = field(default_factory=list)  # parents first; the root is dirs[0]
    files: list[Entry] = field(default_factory=list)
    symlinks: list[Entry] = field(default_factory=list)
    hardlinks: list[Entry] = field(default_factory=list)  # link = an earlier file's path
    stored: int = 0  # bytes of data to write (holes not counted)
    facts: RestoreFacts = field(default_factory=RestoreFacts)


def make_plan(entries: list[Entry], dest: Path | str) -> Plan:
    """Check ``entries`` (the root first, then in tree order) and sort them by what they are."""
    plan = Plan()
    folders: set[str] = set()
    files: set[str] = set()
    previous: tuple[str, ...] | None = None
    for entry in entries:
        rel = entry.path
        try:
            clean = member_path(rel)
        except ValueError as why:
            raise refused(dest, rel, str(why)) from None
        if clean != rel:
            raise refused(dest, rel, "is not a plain relative name")
        key = sort_key(rel)
        if previous is not None and key <= previous:
            raise refused(dest, rel, "is out of order or repeated in the tree")
        previous = key
        if not rel:
            if entry.type != DIR:
                raise refused(dest, rel, "is the tree's root but not a folder")
        elif rel.rpartition("/")[0] not in folders:
            raise refused(dest, rel, "is not inside a folder of the tree")
        _sort(plan, entry, dest, folders, files)
    if "" not in folders:
        raise refused(dest, "", "is missing: the tree has no root folder")
    return plan


def _sort(plan: Plan, entry: Entry, dest: Path | str, folders: set[str], files: set[str]) -> None:
    rel = entry.path
    if entry.type == DIR:
        folders.add(rel)
        plan.dirs.append(entry)
        plan.facts.dirs += 1
    elif entry.type == FILE:
        files.add(rel)
        plan.files.append(entry)
        plan.facts.files += 1
        plan.facts.bytes += entry.size
        plan.stored += sum(entry.lengths)
    elif entry.type == SYMLINK:
        if (why := link_target_problem(rel, entry.link)) is not None:
            raise refused(dest, rel, why)
        plan.symlinks.append(entry)
        plan.facts.symlinks += 1
    elif entry.type == HARDLINK:
        if entry.link not in files:
            raise refused(dest, rel, f"is a hardlink to {entry.link!r}, not an earlier file")
        plan.hardlinks.append(entry)
        plan.facts.hardlinks += 1


def refused(dest: Path | str, rel: str, why: str) -> IntegrityError:
    """``dest``: the folder restored into, or what else is being made (an export)."""
    doing = f"restore into {dest}" if isinstance(dest, Path) else str(dest)
    return IntegrityError(
        f"refusing to {doing}: the snapshot's entry {'./' + rel!r} {why}",
        hint="this snapshot's tree is not one safehold wrote (or is damaged); nothing was written",
    )
