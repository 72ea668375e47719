"""Proving the backups good, before the day they are needed.

``verify`` checks a backup against its manifest -- quick: size and checksums; full: the
content read end to end (``content``) -- and ``records`` keeps the last result of each.
``drill`` really restores backups into scratch space and times them; ``rehearsal`` is the
full-system DR rehearsal (with copies of the application's containers, ``rehearsal_docker``),
and ``recovery`` removes what a killed drill left. ``doctor`` runs the troubleshooting list.
"""
