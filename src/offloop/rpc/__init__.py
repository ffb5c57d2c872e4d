"""offloop.rpc."""
