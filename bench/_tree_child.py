"""``python -m bench._tree_child restore REPO ARTIFACT TARGET``: safehold's folder restore.

The CLI restores Docker volumes only (``safehold restore --volume``); a plain folder is restored
with the library call ``restore_tree``, run here in a process of its own so that its time
includes Python start-up like the CLI's, and its peak RSS can be measured alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from safehold.operations.volumes.folder import restore_tree
from safehold.storage import LocalStorage


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "restore":
        print(__doc__, file=sys.stderr)
        return 2
    _, repo, artifact, target = argv
    facts = restore_tree(LocalStorage(Path(repo)), artifact, Path(target))
    print(f"{facts.files} {facts.bytes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
