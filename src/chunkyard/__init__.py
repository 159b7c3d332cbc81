"""chunkyard: content-addressed storage for large ML artifacts, on your own buckets."""

from .client.api import Client
from .errors import ChunkyardError
from .version import __version__

__all__ = ["Client", "ChunkyardError", "__version__"]
