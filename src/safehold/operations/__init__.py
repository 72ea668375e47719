"""Backup, restore and their kin as plain functions over sources, storage and the catalog.

The rooms, from the top down (import-linter checks that each imports only those below it):

- ``report``: what ``status``, ``report`` and the metrics file say, gathered from a repository.
- ``prune``, ``copy``, ``cat``: retention applied, copies between locations, a backup's content.
- ``pitr``: point-in-time recovery -- the WAL archive (push, fetch, read-ahead, chains), base
  backups, the server settings, restore to a time, its retention, drill and status line.
- ``checks``: proving backups good -- verify, restore drills and DR rehearsals, doctor.
- ``system``: the application as a whole -- sets of backups, the plan and run of a full restore.
- ``database`` and ``volumes``: the two kinds of state, each backed up and restored on its own.
- ``pins``, ``runs``, ``journal``: records every operation keeps in the repository (what is
  pinned, what ran, and what a killed run left behind for the next one to finish).
- ``_pipeline``: the repository session, hashing on the way through, progress.
"""
