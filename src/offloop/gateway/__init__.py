"""offloop.gateway."""
