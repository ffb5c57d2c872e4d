"""The actor suite imports the faulty TextLab handler of ``tests/support``."""

from __future__ import annotations

import sys
from pathlib import Path

SUPPORT_DIR = Path(__file__).resolve().parents[1] / "support"
if str(SUPPORT_DIR) not in sys.path:
    # Before any worker starts: the worker imports its handler as ``faulty:Handler``.
    sys.path.insert(0, str(SUPPORT_DIR))
