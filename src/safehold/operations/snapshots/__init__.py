"""``format = "chunked"``: backups kept as chunk store snapshots instead of seed files.

A target whose format is ``chunked`` (``backup.format``, or ``backup.chunked_targets`` for a
few) is backed up into the repository's chunk store (:mod:`safehold.chunkstore`): a database
as its uncompressed custom-format dump stream (so unchanged tables deduplicate between days),
with the dump's facts and its globals script in the encrypted body; a volume or folder as a
tree. Snapshot targets are ``database:NAME`` and ``volume:NAME`` (:mod:`.targets`).

A restore **materialises** the snapshot first (:mod:`.materialize`): it is exported as the seed's
own files (``db_backup_*.sql.age`` with its globals, or ``volume_*.tar.gz.age``) with their
manifests, then restored by the same code as every other backup, with its staging database,
safety backup, journal and checks. The exported dump is what ``pg_restore`` reads; the archive
what ``tar -xzf`` reads.
"""

from .backup import snapshot_database, snapshot_folder, snapshot_volume
from .describe import info_json, info_line
from .materialize import materialize
from .open import StoreAccess, open_store
from .records import snapshot_records
from .retain import SnapshotPrune, prune_snapshots
from .sets import SnapshotSet, materialize_set, snapshot_set, snapshot_sets
from .targets import database_target, split_target, volume_target

__all__ = [
    "SnapshotPrune",
    "SnapshotSet",
    "StoreAccess",
    "database_target",
    "info_json",
    "info_line",
    "materialize",
    "materialize_set",
    "open_store",
    "prune_snapshots",
    "snapshot_database",
    "snapshot_folder",
    "snapshot_records",
    "snapshot_set",
    "snapshot_sets",
    "snapshot_volume",
    "split_target",
    "volume_target",
]
