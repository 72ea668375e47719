"""``safehold doctor``: each check says OK, WARN, FAIL or SKIP with a hint (``check``).

``run`` gathers the facts once and runs the checks: the server (``server``), the rights a
restore needs (``rights``), WAL archiving as the server's own user runs it (``wal``), the
locations backups go to (``locations``), the schedule against what it backs up (``schedule``)
and what killed runs left behind (``leftovers``).
"""
