"""What the distributed tests run on: stack sizes and the chunking (shared by conftest)."""

BATCH = 4
CHUNK_FRAMES = 8
# name -> (frames, one TIFF per plane): frame counts that are no multiple of the chunk
STACKS = {"s1": (40, False), "s2": (30, False), "pp": (24, True)}
