"""offloop.runtime."""
