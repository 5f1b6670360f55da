"""vlm3r-data: raw indoor scans -> geometry-token shards, scene graphs, spatial QA, and training shards."""

from pipeline.core.version import FORMAT_VERSION, __version__

__all__ = ["FORMAT_VERSION", "__version__"]
