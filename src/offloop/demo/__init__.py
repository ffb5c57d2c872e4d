"""offloop.demo."""
