"""A thread-per-request HTTP server with a blocking Thrift client: the classic design.

``http.server.ThreadingHTTPServer`` (HTTP/1.1 keep-alive, so one thread per connection) in
front of the same Thrift worker as the gateway. Each thread has its own blocking thriftpy2
client (framed, binary), opened on its first call. ``POST /rpc/TextLab/{method}`` forwards the
JSON arguments; ``GET /healthz`` answers at once.

    python bench/baselines/threading_http.py --port 8007 --backend 127.0.0.1:9090
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from _common import HEALTHZ, RPC_PREFIX, parser, to_json
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.transport import TCyFramedTransportFactory

from offloop.demo.textlab import textlab_idl

_local = threading.local()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend: tuple[str, int] = ("127.0.0.1", 9090)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _client(self) -> Any:
        client = getattr(_local, "client", None)
        if client is None:
            host, port = self.backend
            client = make_client(
                textlab_idl().TextLab,
                host,
                port,
                proto_factory=TCyBinaryProtocolFactory(),
                trans_factory=TCyFramedTransportFactory(),
                timeout=60_000,
            )
            _local.client = client
        return client

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(200, HEALTHZ) if self.path == "/healthz" else self._answer(404, b"{}")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if not self.path.startswith(RPC_PREFIX):
            self._answer(404, b"{}")
            return
        method = self.path[len(RPC_PREFIX) :]
        try:
            result = getattr(self._client(), method)(**json.loads(body or b"{}"))
        except Exception as exc:  # a failed call is a 502 for the client, not a dead thread
            _local.client = None
            self._answer(502, json.dumps({"error": str(exc)}).encode())
            return
        self._answer(200, json.dumps({"result": to_json(result)}).encode())


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--backend", required=True, help="host:port of the Thrift worker")
    opts = p.parse_args()
    host, _, port = opts.backend.rpartition(":")
    Handler.backend = (host, int(port))
    with Server((opts.host, opts.port), Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
