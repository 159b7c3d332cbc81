"""The client: a sync Python API (``chunkyard.Client``) and the ``chunkyard`` CLI."""
