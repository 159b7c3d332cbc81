"""The catalog: SQL facts about chunks, packs, artifacts, versions, aliases, sessions."""

from .db import Database

__all__ = ["Database"]
