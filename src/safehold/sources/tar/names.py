"""The rules for a tar member's name and link, written once: every reader of an archive (the
extraction into a folder, the engine-API path into a volume, the base backup's unpacking)
applies these."""

from __future__ import annotations

import stat
import tarfile

# Set-user/group-id bits: dropped from a foreign archive's files unless asked to keep them.
SET_ID = stat.S_ISUID | stat.S_ISGID
# Member types a restore never creates, by what they are called in its refusal.
SPECIAL = {
    tarfile.CHRTYPE: "device node",
    tarfile.BLKTYPE: "device node",
    tarfile.FIFOTYPE: "fifo",
}


def member_path(name: str) -> str:
    """A member's path relative to the root (``./a//b`` -> ``a/b``); ValueError saying why
    when it would leave the root."""
    if "\0" in name:
        raise ValueError("has a NUL byte in its name")
    if name.startswith("/"):
        raise ValueError("has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("climbs out of the folder with '..'")
    return "/".join(parts)


def link_target_problem(rel: str, link: str) -> str | None:
    """Why the symlink ``rel`` -> ``link`` would point outside the root, or None. (Chains of
    links are followed once the tree is complete.)"""
    if "\0" in link:
        return "is a symlink with a NUL byte in its target"
    if link.startswith("/"):
        return f"is a symlink to the absolute path {link}"
    depth = rel.count("/")  # folders between the root and the link
    for part in link.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return f"is a symlink to {link}, outside the folder"
        elif part not in ("", "."):
            depth += 1
    return None
