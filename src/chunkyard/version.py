"""The package version and the repository format version, in a module of their own so
that every layer can name them."""

__version__ = "0.1.0"

#: the repository format (FORMAT.md) this code writes; it reads this one and older ones
FORMAT_VERSION = 4
