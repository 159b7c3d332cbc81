"""Moving artifacts in and out: ``import`` (a directory, an MLflow ``mlruns`` tree, a
bucket prefix), ``export`` (to a directory or a bucket prefix) and ``copy`` (between
gateways, sending only the chunks the target lacks).

A layer above the client (``tests/test_layers.py``): it drives gateways through
``chunkyard.Client`` and, for buckets, opens chunkyard's store backends with the
caller's own credentials (:mod:`.buckets`)::

    from chunkyard import Client
    from chunkyard.migrate import copy, export, import_source

The functions load on first use, so that the ``chunkyard`` program, which adds this
package's commands, starts without them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["copy", "export", "import_source"]
_HOME = {"copy": ".copying", "export": ".exporting", "import_source": ".importing"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOME[name], __name__), name)
