"""Assembly: building and serving the gateway and the worker from config objects.

The layer between the library and the command line: :mod:`offloop.cli` turns flags,
environment and a config file into config objects and calls these functions; users embedding
offloop call them directly. Nothing here reads ``argv``.
"""

from offloop.app.gateway import bind_socket, build_gateway, serve_gateway
from offloop.app.runner import run
from offloop.app.worker import serve_worker

__all__ = ["bind_socket", "build_gateway", "run", "serve_gateway", "serve_worker"]
