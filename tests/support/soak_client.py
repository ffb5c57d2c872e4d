"""HTTP clients for the soak test, run in processes of their own: client threads in the
gateway's process would hold the GIL the gateway's loop needs, and its watchdog would
rightly report the loop as stalled."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit


def run_calls(url: str, plan: list[tuple[str, dict[str, object]]]) -> list[tuple[str, int]]:
    """POST each ``(method, body)`` of ``plan`` on one keep-alive connection, in order;
    returns ``(method, status)`` for each."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    out = []
    try:
        for method, body in plan:
            conn.request(
                "POST",
                f"/rpc/TextLab/{method}",
                body=json.dumps(body),
                headers={"content-type": "application/json", "x-request-timeout": "2"},
            )
            response = conn.getresponse()
            response.read()
            out.append((method, response.status))
            if response.getheader("connection", "").lower() == "close":
                conn.close()
    finally:
        conn.close()
    return out
