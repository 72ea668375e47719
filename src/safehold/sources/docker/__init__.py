"""The Docker engine, as backups of volumes need it (through the docker SDK; never a pull).

``engine``: the client (``DOCKER_HOST``), mountpoints, the containers that use a volume, their
pre/post hooks, stopping and starting them in parallel; ``stops``: the order and timeout of
each stop (compose ``depends_on``, labels); ``helper_image``: the busybox image imported from
the host's static binary, from which helper containers are made.
"""
