"""Serve the Echo service: python docs/examples/worker.py [PORT] (Ctrl-C stops it)."""

import logging
import sys

from handlers import IDL, Echo

from offloop import ListenConfig, PoolConfig, WorkerConfig, run, serve_worker

if __name__ == "__main__":  # the process pool's children import this module
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9090
    config = WorkerConfig(
        idl=IDL,
        service="Echo",
        listen=ListenConfig(host="127.0.0.1", port=port),
        pool=PoolConfig(kind="process", workers=2),
    )
    logging.basicConfig(level=logging.INFO)
    run(serve_worker(config, handler=Echo()))
