"""Moving artifacts in and out: ``import`` (a directory, an MLflow ``mlruns`` tree, a
bucket prefix), ``export`` (to a directory or a bucket prefix) and ``copy`` (between
gateways, sending only the chunks the target lacks).

A layer above the client (``tests/test_layers.py``): it drives gateways through
``chunkyard.Client`` and, for buckets, opens chunkyard's store backends with the
caller's own credentials (:mod:`.buckets`).

    from chunkyard import Client
    from chunkyard.migrate import copy, export, import_source
"""

from .copying import copy
from .exporting import export
from .importing import import_source

__all__ = ["copy", "export", "import_source"]
