"""voxloc service: the live pipeline (ingest, aligner, batcher, inference, publisher) and
its FastAPI control plane."""
