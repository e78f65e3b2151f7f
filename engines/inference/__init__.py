"""Inference engines: one interface (:class:`~engines.inference.base.Engine`), thin backends."""

from engines.inference.base import (
    BackendUnavailableError,
    Engine,
    create_engine,
    precision_option,
)

__all__ = ["BackendUnavailableError", "Engine", "create_engine", "precision_option"]
