"""The gateway under /api of a Starlette app: python docs/examples/mount.py [WORKER] [PORT]."""

import sys

import uvicorn
from handlers import IDL
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from offloop import ASGIApp, GatewayConfig, build_gateway

host, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9090").rsplit(":", 1)
gateway = build_gateway(GatewayConfig(idl=IDL, backends={"*": ((host, int(port)),)}))
api = ASGIApp(gateway)


async def home(request):
    return PlainTextResponse("the Echo API is under /api\n")


# A mounted app gets no lifespan events of its own: the host's lifespan starts the gateway,
# and on shutdown drains its calls in flight and closes its connections to the workers.
app = Starlette(routes=[Route("/", home), Mount("/api", app=api)], lifespan=api.lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000)
