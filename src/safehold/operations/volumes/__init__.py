"""Files: a folder or a Docker volume, backed up as one tar stream and restored all or nothing.

``folder`` reads and writes a tree through the tar engine (``sources.tar``); ``docker`` decides
how a Docker volume is reached -- its host folder when this process can read it, else the
engine's API through a never-started helper container (``api``, whose swap is ``api_swap``).
A restore extracts into a private staging folder and swaps it in (``extract``); containers
that use a volume are stopped around a consistent copy (``downtime``). ``recovery``,
``recovery_api`` and ``recovery_containers`` finish what a killed run left: a half-swapped
folder, a helper's swap, containers still stopped.
"""
