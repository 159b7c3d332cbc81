"""The catalog: SQL facts about chunks, packs, artifacts, versions, aliases, sessions.

All SQL of chunkyard lives in this package, as named functions over a synchronous
``Connection`` (``sessions``, ``packs``, ``versions``, ``references``); the service
layer runs them inside :meth:`Database.read` / :meth:`Database.write` transactions.
"""

from .db import Database

__all__ = ["Database"]
