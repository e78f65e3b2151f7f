"""Distributed ``voxloc localize`` on Dask: many stacks, chunked, resumable (docs/cluster.md).

Dask is imported only when a run starts, so the command's options register without it.
"""

from clients.cluster.command import add_cluster_options, cluster_requested, run_cluster_command
from clients.cluster.run import ClusterOptions, ClusterSummary, InputOutcome, localize_on_cluster

__all__ = [
    "ClusterOptions",
    "ClusterSummary",
    "InputOutcome",
    "add_cluster_options",
    "cluster_requested",
    "localize_on_cluster",
    "run_cluster_command",
]
