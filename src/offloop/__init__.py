"""offloop: keep HTTP services responsive while they serve CPU-heavy work."""

from __future__ import annotations

from offloop.batching import batched

__all__ = ["__version__", "batched"]

__version__ = "0.1.0"
