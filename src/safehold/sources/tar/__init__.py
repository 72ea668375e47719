"""Tar archives as GNU tar reads them: ``headers`` parses a stream's members (ustar, GNU and
pax extensions) without trusting them, ``unpack`` checks each member (names, links, types,
sizes) in order and hands the filesystem work to ``jobs``, which creates files, folders and
links on a few threads. The journalled, all-or-nothing extraction built on them is
``operations.volumes.extract``; ``tree`` writes a folder as a tar stream.
"""
