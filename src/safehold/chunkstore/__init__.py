"""The chunk store: deduplicated, encrypted snapshots of folders and dump streams.

A backup is cut into content-defined chunks (FastCDC, about 1 MiB, its gear seeded from a
secret id key so boundaries reveal nothing); each chunk is named by its BLAKE3 hash keyed with
that id key, and a chunk the store already holds is not stored again. New chunks are
compressed (zstd) and gathered into packs of about 16 MiB, age-encrypted to the store's
recipients. An index (sealed with a key derived from the id key) says which pack holds each
chunk; a snapshot object (a sealed header the backup host can read, an age-encrypted body it
cannot) is written last and is the commit point. Nothing is ever overwritten, so a bucket with
Object Lock can hold the store; prune (under an exclusive lock) removes what no snapshot needs.

The backup host holds the id key and the public recipients: it can back up, list snapshots
and prune, but not read any file content or name back. A restore host needs only the bucket
and the age identity (it recovers the id key from ``chunks/keys/id-key.age``). The format,
commit order and threat model are in docs/chunkstore.md. Folder trees and dump streams on top
of this API live in ``chunkstore.trees``.
"""

from .hostkey import HostKey
from .index import Index
from .prune import PruneReport
from .snapshots import SnapshotInfo
from .store import ChunkStore
from .verify import VerifyReport
from .writer import ChunkStoreWriter

__all__ = [
    "ChunkStore",
    "ChunkStoreWriter",
    "HostKey",
    "Index",
    "PruneReport",
    "SnapshotInfo",
    "VerifyReport",
]
