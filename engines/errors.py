"""The voxloc exception hierarchy.

Foreign errors are translated where they enter (``raise ... from``); HTTP errors exist
only in the API layer.
"""


class VoxlocError(Exception):
    """Base class of every error voxloc raises on purpose."""


class EngineError(VoxlocError):
    """A model or inference backend cannot do what was asked (bad model, bad batch)."""


class FormatError(VoxlocError):
    """A file or array does not have the expected format (shape, dtype, planes, content)."""


class NonFiniteError(FormatError):
    """Frames hold NaN/inf pixels; ``frame`` is the first such frame's index in the batch,
    ``count`` its number of NaN/inf pixels, ``total`` the batch's."""

    def __init__(self, message: str, *, frame: int, count: int, total: int) -> None:
        super().__init__(message)
        self.frame, self.count, self.total = frame, count, total


class StreamError(VoxlocError):
    """A wire message or stream is malformed or out of protocol."""


class ModelNotFoundError(EngineError):
    """No model of that name or directory exists."""


class OutputError(VoxlocError):
    """An output file cannot be written where asked."""
