"""voxloc engines: observation model, network, training, decoding and inference backends."""

from engines.errors import EngineError, FormatError, StreamError, VoxlocError

__all__ = ["VoxlocError", "EngineError", "FormatError", "StreamError"]
