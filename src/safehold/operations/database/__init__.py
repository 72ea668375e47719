"""A database's state: ``pg_dump`` custom-format backups and their restore.

A backup streams pg_dump's output into the repository with its checksums and a manifest
(``backup``; the roles and settings it needs ride along as a globals script, ``globals``). A
restore is planned without touching anything (``plan``), reads the file only once it is the one
its manifest names (``archive``, unpacking a wrapped dump with ``unpack``; what a foreign file
is comes from ``dump_input``), restores into a staging database, checks the rows, and swaps it
in by renaming (``restore``). Every step that leaves something behind is journalled first, and
``recovery`` finishes what a killed restore left.
"""
