"""Inference engines: one interface (:class:`~engines.inference.base.Engine`), thin backends,
built by :func:`~engines.inference.factory.create_engine`."""

from engines.inference.base import BackendUnavailableError, Engine
from engines.inference.factory import create_engine

__all__ = ["BackendUnavailableError", "Engine", "create_engine"]
