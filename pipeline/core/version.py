"""Versions: the code's, and the format of a dataset root (``info.json`` records both)."""

__version__ = "0.1.0"
FORMAT_VERSION = 1
