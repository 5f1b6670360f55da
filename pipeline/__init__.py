"""vlm3r-data: raw indoor scans -> geometry-token shards, scene graphs, spatial QA, and training shards."""

__version__ = "0.1.0"
FORMAT_VERSION = 1
