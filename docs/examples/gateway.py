"""HTTP/JSON in front of the Echo worker: python docs/examples/gateway.py [WORKER] [PORT]."""

import logging
import sys

from handlers import IDL

from offloop import FrontConfig, GatewayConfig, ListenConfig, build_gateway, run, serve_gateway

host, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9090").rsplit(":", 1)
config = GatewayConfig(
    idl=IDL,
    backends={"Echo": ((host, int(port)),)},
    listen=ListenConfig(host="127.0.0.1", port=int(sys.argv[2]) if len(sys.argv) > 2 else 8080),
    front=FrontConfig(timeout=5.0, max_inflight=256),
)
logging.basicConfig(level=logging.INFO)
run(serve_gateway(build_gateway(config)))  # until Ctrl-C or SIGTERM, then drains
