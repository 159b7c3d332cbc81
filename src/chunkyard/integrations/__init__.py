"""Adapters that let ML tools store through chunkyard without code of their own: an
MLflow artifact repository and an fsspec filesystem, both on ``chunkyard://`` URLs.

They build on the public client (:class:`chunkyard.Client`) only; the packages they
adapt to are optional (``pip install 'chunkyard[mlflow]'`` / ``'chunkyard[fsspec]'``).
"""
