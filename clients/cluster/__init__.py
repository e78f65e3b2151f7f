"""Distributed ``voxloc localize`` on Dask: many stacks, chunked, resumable (docs/cluster.md).

Dask is imported only when a run starts, so the command's options register without it.
"""

from typing import Any

__all__ = [
    "ClusterOptions",
    "ClusterSummary",
    "InputOutcome",
    "add_cluster_options",
    "cluster_requested",
    "localize_on_cluster",
    "run_cluster_command",
]


def __getattr__(name: str) -> Any:
    """Import on first use: building the CLI parser must not import the engine (torch)."""
    import importlib

    module = "command" if name in __all__[3:5] + ["run_cluster_command"] else "run"
    if name not in __all__:
        raise AttributeError(f"module 'clients.cluster' has no attribute {name!r}")
    return getattr(importlib.import_module(f"clients.cluster.{module}"), name)
