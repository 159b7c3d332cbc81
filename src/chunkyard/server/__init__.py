"""The HTTP gateway (Starlette): routes decode requests into typed models and call
``chunkyard.repository``."""

from .app import create_app

__all__ = ["create_app"]
