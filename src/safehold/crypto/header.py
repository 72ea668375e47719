"""Recognising an age file, and reading its header for messages (never for decisions on trust)."""

from __future__ import annotations

MAGIC = b"age-encryption.org/v1\n"
ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
SUFFIX = ".age"
HEAD_BYTES = 64  # enough for is_age()


def is_age(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts an age file, binary or ASCII-armored."""
    return head.startswith(MAGIC) or head.lstrip().startswith(ARMOR_BEGIN)


def stanza_types(header: bytes) -> list[str]:
    """The recipient stanza types in a binary age header ("X25519", "scrypt", ...), in order.

    Only for explaining a failure: the header is not authenticated until its MAC is checked.
    """
    if not header.startswith(MAGIC):
        return []
    types = []
    for line in header[len(MAGIC) :].split(b"\n"):
        if line.startswith(b"---"):
            break
        if line.startswith(b"-> "):
            kind = line[3:].split(b" ")[0].decode("ascii", "replace")
            if not kind.endswith("-grease"):  # rage adds a random decoy stanza
                types.append(kind)
    return types


def describe_stanzas(types: list[str]) -> str:
    if not types:
        return "no readable recipient stanzas"
    counts: dict[str, int] = {}
    for kind in types:
        counts[kind] = counts.get(kind, 0) + 1
    parts = [f"{n} {kind} recipient{'s' if n > 1 else ''}" for kind, n in counts.items()]
    return ", ".join(parts)
