"""Call the Echo worker from a script: python docs/examples/client.py [HOST:PORT]."""

import sys

from handlers import IDL

from offloop import Client

address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9090"
with Client(IDL, "Echo", address, timeout=5.0) as client:
    print(client.call("echo", text="hello"))
    print(client.call("add", a=2, b=3))
