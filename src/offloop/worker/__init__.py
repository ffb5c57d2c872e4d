"""offloop.worker."""
