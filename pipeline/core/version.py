"""Versions: the code's, and the format of a dataset root (``info.json`` records both)."""

__version__ = "0.1.0"
# 2: done-markers of the stage contract (fingerprint, config, upstream, output identity) for every stage.
FORMAT_VERSION = 2
