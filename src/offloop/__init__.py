"""offloop: keep HTTP services responsive while they serve CPU-heavy work."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
