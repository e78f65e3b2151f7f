"""Inference engines: one interface (:class:`~engines.inference.base.Engine`), thin backends."""

from engines.inference.base import Engine, create_engine

__all__ = ["Engine", "create_engine"]
