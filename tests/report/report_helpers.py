"""Reading report.md in the report tests."""
from __future__ import annotations

import re

IMAGE_RE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def section(text: str, heading: str) -> str:
    """The body of a ``## heading`` section."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"no section {heading!r}"
    return match.group(1)
