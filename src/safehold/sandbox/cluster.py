"""The sandbox's PostgreSQL cluster: the scratch cluster of ``safehold.sources.pg_cluster``,
under the names the tests, the bench and scripts outside the suite import."""

from ..sources.pg_cluster import SUPERUSER, UNPRIVILEGED_USER, free_port, server_bin_dir
from ..sources.pg_cluster import ScratchCluster as SandboxCluster

__all__ = ["SUPERUSER", "UNPRIVILEGED_USER", "SandboxCluster", "free_port", "server_bin_dir"]
