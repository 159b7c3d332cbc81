"""chunkyard: content-addressed storage for large ML artifacts, on your own buckets."""

__version__ = "0.1.0"

from .client.api import Client  # noqa: E402
from .errors import ChunkyardError  # noqa: E402

__all__ = ["Client", "ChunkyardError", "__version__"]
