"""Where every benchmark's results go: ``<out>.json`` (the figures) and ``<out>.md`` (the table quoted in notes)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.atomic import write_json, write_text  # noqa: E402


def write_results(out: str | Path, results: Mapping[str, Any], render: Callable[[Any], str]) -> str:
    """Write ``results`` as JSON and rendered as markdown beside it (both atomically); returns the markdown."""
    out = Path(out)
    markdown = render(results)
    write_json(out.with_suffix(".json"), results)
    write_text(out.with_suffix(".md"), markdown)
    return markdown
