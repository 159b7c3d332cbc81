"""chunkyard: content-addressed storage for large ML artifacts, on your own buckets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ChunkyardError
from .version import __version__

if TYPE_CHECKING:
    from .client.api import Client

__all__ = ["Client", "ChunkyardError", "__version__"]


def __getattr__(name: str) -> Any:
    """``Client`` is imported when first asked for: the ``chunkyard`` program sets up
    its process (:mod:`chunkyard.cli`) before numpy and the client load."""
    if name == "Client":
        from .client.api import Client

        return Client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
