"""The HTTP gateway (Starlette). Routes parse requests and call ``chunkyard.gateway``."""

from .app import create_app

__all__ = ["create_app"]
