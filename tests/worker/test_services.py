"""Several services on one worker (issue 13): names, renaming, and a worker serving
``two_services.thrift``'s ``Calc`` and ``Echo`` over 127.0.0.1, in both pools.

A call names its method ``Service:method`` (Apache's ``TMultiplexedProtocol``) or, when one
service has it, plainly; a plain name two services share is refused with a fault naming the
candidates. Replies carry the plain name. Batching, ``async def`` methods and metrics work
per service.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from configs import override
from gates import Gate
from harness import POOLS, ServerThread, metric, no_leftovers, running_worker, worker_config
from waiting import wait_until

from offloop.cli import parse
from offloop.client.multiplex import wire_method
from offloop.codec.call import CallCodec
from offloop.codec.message import MessageCodec
from offloop.errors import OffloopError, RemoteApplicationError, UnknownMethod
from offloop.idl import MethodInfo, ServiceInfo, load_idl, service_info
from offloop.worker.config import WorkerConfig
from offloop.worker.services import ServiceTable, rename

INTEROP = Path(__file__).resolve().parents[1] / "interop"
IDL = str(INTEROP / "two_services.thrift")
two = load_idl(IDL)
CALC = service_info(two, "Calc")
ECHO = service_info(two, "Echo")


def services_config(pool: str, **overrides: Any) -> WorkerConfig:
    """Calc and Echo on one port, their handlers imported from tests/interop."""
    base = override(
        WorkerConfig(
            idl=IDL,
            service="Calc",
            handler="multi_handlers:Calc",
            services={"Echo": "multi_handlers:Echo"},
            app_dir=str(INTEROP),
        ),
        pool=pool,
        workers=1,
        port=0,
        call_timeout=5.0,
        grace=2.0,
        admin_port=0,
    )
    return override(base, **overrides)


# -- names, without a network ---------------------------------------------------------------


def test_plain_names_only_when_one_service_has_them() -> None:
    table = ServiceTable([CALC, ECHO])
    add = table.resolve("add")
    assert add is not None and (add.service, add.method, add.key) == ("Calc", "add", "Calc:add")
    assert table.resolve("Calc:add") == add
    echo_ping = table.resolve("Echo:ping")
    assert echo_ping is not None and echo_ping.service == "Echo" and echo_ping.method == "ping"
    assert table.resolve("ping") is None
    assert table.unknown("ping") == (
        "'ping' is a method of several services (Calc, Echo): call Calc:ping or Echo:ping"
    )
    assert table.resolve("Echo:add") is None
    assert table.unknown("Echo:add") == "'add' is not a method of service Echo"
    assert table.resolve("Nope:add") is None
    assert "serves no service 'Nope' (services: Calc, Echo)" in table.unknown("Nope:add")
    assert table.unknown("nope") == "'nope' is not a method of services Calc, Echo"
    assert {r.key for r in table.routes()} == {
        "Calc:ping", "Calc:add", "Calc:divide", "Calc:hold",
        "Echo:ping", "Echo:echo", "Echo:upper", "Echo:later", "Echo:shout",
    }  # fmt: skip


def test_one_service_keeps_plain_keys_and_accepts_its_prefix() -> None:
    table = ServiceTable([CALC])
    assert not table.several
    route = table.resolve("Calc:add")
    assert route is not None and route.key == "add" and table.resolve("add") == route
    assert table.resolve("Echo:add") is None
    assert table.unknown("nope") == "'nope' is not a method of service Calc"


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("name", ["a", "Calc:add", "x" * 200])
def test_rename_splices_the_name(protocol: str, name: str) -> None:
    codec = MessageCodec(
        protocol,
    )  # type: ignore[arg-type]
    args = CALC.methods["add"].args_cls(a=2, b=40)
    message = codec._encode("Calc:add", 1, 2**31 - 5, args)
    renamed = rename(message, protocol, name)  # type: ignore[arg-type]
    assert renamed == codec._encode(name, 1, 2**31 - 5, args)
    header = codec.read_header(renamed)
    assert (header.name, header.type, header.seqid) == (name, 1, 2**31 - 5)


def test_rename_reads_old_style_binary_headers() -> None:
    body = b"rest of the message"
    old_style = struct.pack("!i", 8) + b"Calc:add" + b"\x01" + struct.pack("!i", 7) + body
    assert rename(old_style, "binary", "add") == (
        struct.pack("!i", 3) + b"add" + b"\x01" + struct.pack("!i", 7) + body
    )


@pytest.mark.parametrize(
    ("protocol", "garbage"),
    [
        ("binary", b""),
        ("binary", b"\x80\x01"),
        ("binary", b"\x80\x01\x00\x01\x00\x00\x01\x00ab"),  # a name longer than the rest
        ("binary", b"\x80\x02\x00\x01\x00\x00\x00\x01a"),  # version 2
        ("compact", b"\x82\x21"),
        ("compact", b"\x82\x21\x01\x05ab"),
        ("compact", b"\x82\x21" + b"\xff" * 8),  # a run-on varint
        ("compact", b"\x81\x21\x01\x01a"),  # not the compact protocol's id
    ],
)
def test_rename_refuses_a_bad_header(protocol: str, garbage: bytes) -> None:
    with pytest.raises(OffloopError):
        rename(garbage, protocol, "add")  # type: ignore[arg-type]


# -- configuration ----------------------------------------------------------------------------


def test_the_command_line_reads_several_services() -> None:
    worker = parse(
        ["worker", "--idl", IDL, "--service", "Calc=multi_handlers:Calc",
         "--service", "Echo=multi_handlers:Echo"],
        environ={},
    ).worker  # fmt: skip
    assert worker is not None
    assert (worker.service, worker.handler) == ("Calc", "multi_handlers:Calc")
    assert worker.services == {"Echo": "multi_handlers:Echo"}
    assert worker.handlers == {"Calc": "multi_handlers:Calc", "Echo": "multi_handlers:Echo"}


def test_a_service_without_its_own_handler_takes_handler() -> None:
    environ = {"OFFLOOP_SERVICE": "Calc,Echo=multi_handlers:Echo"}
    worker = parse(
        ["worker", "--idl", IDL, "--handler", "multi_handlers:Calc"], environ=environ
    ).worker
    assert worker is not None
    assert worker.handlers == {"Calc": "multi_handlers:Calc", "Echo": "multi_handlers:Echo"}


@pytest.mark.parametrize(
    "value",
    ['"Calc=multi_handlers:Calc"', '["Calc=multi_handlers:Calc", "Echo=multi_handlers:Echo"]',
     '{Calc = "multi_handlers:Calc", Echo = "multi_handlers:Echo"}'],
    ids=["string", "list", "table"],
)  # fmt: skip
def test_the_config_file_reads_several_services(value: str, tmp_path: Path) -> None:
    path = tmp_path / "offloop.toml"
    path.write_text(f'[worker]\nidl = "{IDL}"\nservice = {value}\n')
    worker = parse(["worker", "--config", str(path)], environ={}).worker
    assert worker is not None
    assert worker.service == "Calc" and worker.handler == "multi_handlers:Calc"
    assert worker.services == ({"Echo": "multi_handlers:Echo"} if "Echo" in value else {})


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--service", "Calc"], "the following arguments are required: --handler"),
        (["--service", "Calc=oops"], "--service: expected NAME or NAME=package.module:Name"),
        (["--service", "Calc", "--service", "Calc=m:H"], "--service: service Calc is given twice"),
    ],
    ids=["no handler", "bad handler", "twice"],
)
def test_bad_service_settings_are_usage_errors(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["worker", "--idl", IDL, *args], environ={})
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("usage: offloop worker ")
    assert lines[1].startswith(f"offloop worker: {expected}"), lines[1]


@pytest.mark.parametrize(
    "services",
    [["TextLb"], ["Calc=multi_handlers:Calc", "Ecko=multi_handlers:Echo"]],
    ids=["one", "one of two"],
)
def test_a_service_the_idl_lacks_exits_2_in_one_line(services: list[str]) -> None:
    idl = (
        IDL
        if len(services) > 1
        else str(Path(__file__).parents[2] / "src/offloop/demo/textlab.thrift")
    )
    flags = [arg for spec in services for arg in ("--service", spec)]
    result = subprocess.run(
        [sys.executable, "-m", "offloop.cli", "worker", "--idl", idl, *flags,
         "--handler", "offloop.demo.textlab:Handler", "--pool", "thread", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("usage: offloop worker ")
    wrong = services[-1].partition("=")[0]
    assert lines[1].startswith(f"offloop worker: --service: {idl} declares no service '{wrong}'")
    assert len(lines) == 2, result.stderr


# -- a worker serving Calc and Echo -----------------------------------------------------------


class Client:
    """Calls over one blocking socket with any method name (``Service:method`` or plain), by
    offloop's call codec; returns the value, or raises what the reply carries."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.calls = CallCodec("binary", 1 << 20, f"127.0.0.1:{port}")
        self.reply_names: list[str] = []

    def send(self, method: MethodInfo, **args: Any) -> int:
        seqid = self.calls.next_seqid()
        self.sock.sendall(self.calls.encode_call(method, seqid, method.args_cls(**args)))
        return seqid

    def receive(self, method: MethodInfo) -> Any:
        (size,) = struct.unpack("!i", self._read(4))
        reply = self.calls.read_reply(self._read(size))
        self.reply_names.append(reply.name)
        return self.calls.outcome(reply, method)

    def call(self, service: ServiceInfo, name: str, multiplexed: bool, **args: Any) -> Any:
        method = service.methods[name]
        if multiplexed:
            method = wire_method(service.name, method)
        self.send(method, **args)
        return self.receive(method)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the worker closed the connection"
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=POOLS)
def worker(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with no_leftovers(), running_worker(services_config(str(request.param))) as server:
        yield server


@pytest.fixture
def client(worker: ServerThread) -> Iterator[Client]:
    c = Client(worker.port)
    yield c
    c.close()


def test_multiplexed_and_unambiguous_plain_names(worker: ServerThread, client: Client) -> None:
    assert client.call(CALC, "ping", True, msg="x") == "calc:x"
    assert client.call(ECHO, "ping", True, msg="x") == "echo:x"
    assert client.call(CALC, "add", True, a=2, b=3) == 5
    assert client.call(CALC, "add", False, a=2, b=3) == 5  # one service has add
    assert client.call(ECHO, "echo", False, text="hi") == "hi"
    with pytest.raises(two.Refused) as refused:
        client.call(CALC, "divide", True, a=1, b=0)
    assert refused.value.reason == "division by zero"
    assert client.call(ECHO, "later", True, text="a") == "later:a"  # async def, on the loop
    assert client.call(ECHO, "later", False, text="b") == "later:b"
    # @inline: on the worker's loop, in this process whatever the pool.
    assert client.call(ECHO, "shout", True, text="a") == f"A! in {os.getpid()}"
    assert client.call(ECHO, "shout", False, text="b") == f"B! in {os.getpid()}"
    # Replies carry the plain name, as Apache's TMultiplexedProcessor writes them.
    assert set(client.reply_names) == {"ping", "add", "echo", "divide", "later", "shout"}
    metrics = worker.metrics()
    assert metric(metrics, "offloop_worker_calls_total", method="Calc:add", outcome="ok") == 2
    assert metric(metrics, "offloop_worker_calls_total", method="Echo:ping", outcome="ok") == 1
    assert metric(metrics, "offloop_worker_calls_total", method="Echo:later", outcome="ok") == 2
    assert metric(metrics, "offloop_worker_calls_total", method="Echo:shout", outcome="ok") == 2
    assert metric(metrics, "offloop_worker_calls_total", method="add") is None
    assert worker.admin_get("/readyz")[0] == 200


def test_an_ambiguous_plain_name_is_refused_naming_the_candidates(
    worker: ServerThread, client: Client
) -> None:
    with pytest.raises(UnknownMethod, match="call Calc:ping or Echo:ping"):
        client.call(CALC, "ping", False, msg="x")
    echo_add = wire_method("Echo", CALC.methods["add"])
    client.send(echo_add, a=1, b=2)
    with pytest.raises(UnknownMethod, match="'add' is not a method of service Echo"):
        client.receive(echo_add)
    nope = wire_method("Nope", CALC.methods["add"])
    client.send(nope, a=1, b=2)
    with pytest.raises(UnknownMethod, match="serves no service 'Nope'"):
        client.receive(nope)
    assert client.call(CALC, "add", True, a=1, b=1) == 2  # the connection lives on


def test_a_batch_merges_plain_and_multiplexed_calls(worker: ServerThread, tmp_path: Path) -> None:
    """One worker, held by a gated call of Calc: four calls of Echo.upper, two by each name,
    wait in one batch, which leaves full (max_batch 4) and runs once."""
    holder = Client(worker.port)
    clients = [Client(worker.port) for _ in range(4)]
    try:
        with Gate(tmp_path) as gate, ThreadPoolExecutor(5) as threads:
            held = threads.submit(holder.call, CALC, "hold", True, gate=str(gate.path))
            wait_until(lambda: worker.stats().busy == 1, timeout=30)
            calls = [
                threads.submit(c.call, ECHO, "upper", i % 2 == 0, text=f"t{i}")
                for i, c in enumerate(clients)
            ]
            wait_until(lambda: worker.stats().queued == 1, timeout=30)  # the full batch
            gate.open()
            assert [c.result(30) for c in calls] == ["T0/4", "T1/4", "T2/4", "T3/4"]
            assert held.result(30).startswith("opened")
    finally:
        for c in [holder, *clients]:
            c.close()
    text = worker.metrics()
    assert metric(text, "offloop_worker_batch_size_count", method="Echo:upper") == 1
    assert metric(text, "offloop_worker_calls_total", method="Echo:upper", outcome="ok") == 4


def test_a_one_service_worker_accepts_its_multiplexed_names() -> None:
    """An Apache TMultiplexedProtocol client of a one-service worker: ``TextLab:ping``
    works, the reply is named ``ping``, and metrics keep the plain label."""
    with no_leftovers(), running_worker(worker_config("thread")) as server:
        textlab = service_info(load_idl(server.config.idl), "TextLab")
        c = Client(server.port)
        try:
            assert c.call(textlab, "ping", True, msg="hi") == "hi"
            assert c.call(textlab, "ping", False, msg="hi") == "hi"
            with pytest.raises(RemoteApplicationError, match="ValueError: boom"):
                c.call(textlab, "ping", True, msg="raise")
            assert c.reply_names == ["ping", "ping", "ping"]
        finally:
            c.close()
        text = server.metrics()
        assert metric(text, "offloop_worker_calls_total", method="ping", outcome="ok") == 2
        assert metric(text, "offloop_worker_calls_total", method="TextLab:ping") is None
