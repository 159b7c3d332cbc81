"""The HTTP gateway (Starlette): routes decode requests into typed models and call
``chunkyard.repository``."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # imported on first use: ``chunkyard push`` loads ``server.cli`` for its command
    # table, and the app (SQLAlchemy, Starlette) cost 0.4 s of every CLI start
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
