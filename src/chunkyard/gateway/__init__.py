"""The gateway's behaviour, independent of HTTP: the routes in ``server/`` only parse
requests and call these functions."""

from .core import Gateway

__all__ = ["Gateway"]
