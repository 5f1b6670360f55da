"""Video tests import their factories from this folder (pytest runs in importlib mode, without rootdir on sys.path)."""
from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
