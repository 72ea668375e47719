"""A throwaway PostgreSQL cluster with sample data: the demo's, the tests' and the bench's."""

from .cluster import SandboxCluster
from .sample import load_sample

__all__ = ["SandboxCluster", "load_sample"]
