"""Point-in-time recovery: base backups plus the archived WAL, replayed up to a moment.

The server's ``archive_command`` runs ``wal-push`` (``archive``: one compressed, checksummed,
committed file per segment; ``ahead`` pushes the segments already waiting, on a pool);
``setup`` prints and applies those settings. ``base`` takes a base backup (pg_basebackup's tar
stream into the repository) and lists them; ``chain`` follows timelines and finds gaps. A
restore (``restore``) unpacks a base backup (``base_extract``, checksummed as written), lets
the server replay WAL fetched ahead of it (``prefetch``) to the target, and promotes it.
``retention`` and ``prune`` decide and remove what no longer serves a restore; ``drill`` and
``status`` are the PITR side of drills and of ``safehold status``.
"""
