"""Ray Serve with two replicas of the TextLab handler behind its HTTP proxy: a peer design.

A FastAPI ingress deployment, two replicas (each a Ray actor process with its own handler);
``GET /healthz`` and ``POST /rpc/TextLab/{method}`` as on the gateway. The ``rpc`` endpoint is
a sync ``def``, as a user would write it for CPU work. Starts a local Ray instance limited to
this machine's CPUs, without the dashboard; SIGTERM shuts Serve and Ray down.

    python bench/baselines/ray_serve.py --port 8008 --replicas 2
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from _common import parser, to_json

QUIET = {"enable_access_log": False, "log_level": "WARNING"}
"""No access log, as for every other contender: it would cost each request a log line."""


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--replicas", type=int, default=2)
    opts = p.parse_args()

    import ray
    from fastapi import Body, FastAPI
    from ray import serve

    app = FastAPI()

    @serve.deployment(
        num_replicas=opts.replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=64,
        logging_config=QUIET,
    )
    @serve.ingress(app)
    class TextLab:
        def __init__(self) -> None:
            from offloop.demo.textlab import Handler

            self.handler = Handler()

        @app.get("/healthz")
        async def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/rpc/TextLab/{method}")
        def rpc(self, method: str, args: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
            return {"result": to_json(getattr(self.handler, method)(**args))}

    here = os.path.dirname(os.path.abspath(__file__))
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        logging_level="warning",
        runtime_env={"env_vars": {"PYTHONPATH": here}},
    )
    serve.start(http_options={"host": opts.host, "port": opts.port}, logging_config=QUIET)
    serve.run(TextLab.bind(), route_prefix="/", blocking=False)
    print(f"ray serve on http://{opts.host}:{opts.port}", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    serve.shutdown()
    ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
