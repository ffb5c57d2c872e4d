"""What THeader adds to one call, in CPU time: encode and decode, framed vs header.

Run: ``.venv/bin/python -m bench.header_codec [--repeats 7] [--number 20000] [--stat median]``.
Times, per call of ``ping("hello")``, each side's codec work framed and in a THeader frame
carrying offloop's three info headers (request id, deadline, principal): the client encoding
the call and reading the reply, the worker reading the call (with its context) and framing
the reply, each as the client (:class:`~offloop.codec.call.CallCodec`) and the worker
(``offloop.worker.server``) do it. Prints a table of the median of ``--repeats`` runs of
``--number`` calls, in microseconds, and the difference. On a loaded host, ``--stat min
--repeats 300 --number 1000`` (the fastest of many short runs) is the steadier figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from offloop.codec.call import CallCodec
from offloop.codec.framing import encode_frame
from offloop.codec.header import (
    encode_header_reply,
    is_header_frame,
    split_header_frame,
)
from offloop.codec.message import MessageCodec
from offloop.context import REQUEST_ID, CallContext, outgoing_headers
from offloop.idl import load_idl, service_info

IDL = str(Path(__file__).resolve().parents[1] / "src/offloop/demo/textlab.thrift")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--stat", choices=("median", "min"), default="median")
    opts = parser.parse_args()
    stat: Callable[[list[float]], float] = statistics.median if opts.stat == "median" else min

    number: int = opts.number
    repeats: int = opts.repeats

    def per_call_us(fn: Callable[[], object]) -> float:
        runs = timeit.repeat(fn, number=number, repeat=repeats)
        return stat(runs) / number * 1e6

    service = service_info(load_idl(IDL), "TextLab")
    ping = service.methods["ping"]
    args = ping.args_cls(msg="hello")
    framed = CallCodec("binary", 1 << 24, "bench")
    header = CallCodec("binary", 1 << 24, "bench", header=True)
    REQUEST_ID.set("4bf92f3577b34da6a3ce929d0e0e4736")
    worker = MessageCodec("binary")
    reply_payload = worker.encode_reply("ping", 1, ping.result_cls(success="hello"))

    call_framed = framed.encode_call(ping, 1, args)
    headers = outgoing_headers(30.0, time.monotonic())
    headers["offloop-principal"] = "key:alice"
    call_header = header.encode_call(ping, 1, args, headers)
    parts = split_header_frame(call_header[4:])
    reply_framed = encode_frame(reply_payload)[4:]
    reply_header = encode_header_reply(parts, reply_payload, {"offloop-request-id": "x"})[4:]

    def worker_read_framed() -> object:
        body = call_framed[4:]
        is_header_frame(body)
        return worker.read_header(body)

    def worker_read_header() -> object:
        body = call_header[4:]
        is_header_frame(body)
        _, _, _, _, info, message = split_header_frame(body)
        CallContext.from_headers(info, time.monotonic())
        return worker.read_header(message)

    rows = [
        (
            "client: encode the call",
            lambda: framed.encode_call(ping, 1, args),
            lambda: header.encode_call(ping, 1, args, outgoing_headers(30.0, time.monotonic())),
        ),
        ("worker: read the call", worker_read_framed, worker_read_header),
        (
            "worker: frame the reply",
            lambda: encode_frame(reply_payload),
            lambda: encode_header_reply(parts, reply_payload, {"offloop-request-id": "x"}),
        ),
        (
            "client: read the reply",
            lambda: framed.outcome(framed.read_reply(reply_framed), ping),
            lambda: header.outcome(header.read_reply(reply_header), ping),
        ),
    ]
    title = f"per call, {opts.stat} of {repeats} (us)"
    print(f"{title:32} {'framed':>8} {'header':>8} {'added':>8}")
    total_f = total_h = 0.0
    for name, f_fn, h_fn in rows:
        f_us, h_us = per_call_us(f_fn), per_call_us(h_fn)
        total_f += f_us
        total_h += h_us
        print(f"{name:32} {f_us:8.2f} {h_us:8.2f} {h_us - f_us:8.2f}")
    print(f"{'all four':32} {total_f:8.2f} {total_h:8.2f} {total_h - total_f:8.2f}")


if __name__ == "__main__":
    main()
