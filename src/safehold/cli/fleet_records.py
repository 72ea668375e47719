"""What a fleet reader (``status --fleet`` on another machine) needs from this host, written
where it reads: this host's repository in its locations. Backups and manifests get there by
the copies (which also write this host's objectives, ``locations.copy_to``); the records of
drills, failed ones too, are put beside them here. Each is one small object under a key of its
own, written whole or not at all, so no bucket lock is taken for it; a location that cannot
take one is a warning, never a failure of the drill that made it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import SafeholdError
from ..operations.checks.drill import DRILLS_DIR
from ..storage import LocalStorage
from .locations import automatic, locations
from .runtime import Runtime


@contextlib.contextmanager
def drills_shared(rt: Runtime) -> Iterator[None]:
    """The drill records the block writes into the local repository are copied to every
    location that takes each backup, as the block ends (also when the drill failed)."""
    storage = LocalStorage(rt.settings.backup_dir)
    before = set(_drill_keys(storage))
    try:
        yield
    except Exception:
        share_drills(rt, storage, [k for k in _drill_keys(storage) if k not in before])
        raise
    share_drills(rt, storage, [k for k in _drill_keys(storage) if k not in before])


def share_drills(rt: Runtime, storage: LocalStorage, keys: list[str]) -> None:
    if not keys or not rt.settings.locations:
        return
    try:
        places = automatic(locations(rt.settings))
    except SafeholdError as exc:
        rt.sink_warning(f"drill records not copied to the locations: {exc.message}")
        return
    for place in places:
        try:
            for key in keys:
                place.storage.put_bytes(key, storage.read_bytes(key))
        except (SafeholdError, OSError) as exc:
            why = exc.message if isinstance(exc, SafeholdError) else str(exc)
            rt.sink_warning(f"the drill record was not copied to location {place.name}: {why}")
        else:
            rt.sink_info(f"drill record copied to location {place.name}")


def _drill_keys(storage: LocalStorage) -> list[str]:
    try:
        return [k for k in storage.list(DRILLS_DIR) if k.endswith(".json")]
    except (SafeholdError, OSError):
        return []
