"""The control plane: a FastAPI app over a running :class:`~service.pipeline.Pipeline`."""

from service.api.app import create_app

__all__ = ["create_app"]
