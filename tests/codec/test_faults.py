"""The fault contract: every kind survives the wire as a standard TApplicationException and
comes back as its typed error; foreign exceptions are mapped by their standard type alone."""

from __future__ import annotations

import pytest
from thriftpy2.thrift import TApplicationException

from offloop.codec.faults import FAULT_TYPES, FaultKind, fault_error, fault_exception, fault_kind
from offloop.codec.message import MessageCodec
from offloop.demo.textlab import IDL_PATH
from offloop.errors import (
    BackendCrashed,
    Blame,
    DeadlineExceeded,
    OffloopError,
    Overloaded,
    RemoteApplicationError,
    RemoteBadRequest,
    ShuttingDown,
    UnknownMethod,
)
from offloop.idl import load_idl, service_info

IDL = str(IDL_PATH)
PING = service_info(load_idl(IDL), "TextLab").methods["ping"]

EXPECTED: dict[FaultKind, type[OffloopError]] = {
    FaultKind.OVERLOADED: Overloaded,
    FaultKind.SHUTTING_DOWN: ShuttingDown,
    FaultKind.DEADLINE_EXCEEDED: DeadlineExceeded,
    FaultKind.CRASHED: BackendCrashed,
    FaultKind.UNKNOWN_METHOD: UnknownMethod,
    FaultKind.BAD_REQUEST: RemoteBadRequest,
    FaultKind.INTERNAL: RemoteApplicationError,
}


def test_every_kind_has_a_class_and_a_standard_type() -> None:
    assert set(EXPECTED) == set(FaultKind) == set(FAULT_TYPES)
    standard = {
        TApplicationException.INTERNAL_ERROR,
        TApplicationException.UNKNOWN_METHOD,
        TApplicationException.PROTOCOL_ERROR,
    }
    assert set(FAULT_TYPES.values()) <= standard


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("kind", list(FaultKind))
def test_each_kind_round_trips_over_the_wire(kind: FaultKind, protocol: str) -> None:
    codec = MessageCodec(protocol)  # type: ignore[arg-type]
    data = codec.fault("ping", 7, kind, "the detail")
    _, body = codec.decode_reply(data, PING)
    assert isinstance(body, TApplicationException)
    assert body.type == FAULT_TYPES[kind]
    assert body.message == f"{kind.value}: the detail"  # readable by any Thrift client
    assert fault_kind(body) is kind
    error = fault_error(body, where="ping on w:1")
    assert type(error) is EXPECTED[kind]
    assert "the detail" in str(error) and "w:1" in str(error)
    assert "the detail" not in error.public_message  # the detail is for the log


def test_the_token_alone_is_not_enough_the_type_must_agree() -> None:
    # A foreign server's message that happens to start with a token, under another type.
    foreign = TApplicationException(TApplicationException.UNKNOWN, "overloaded: not really")
    assert fault_kind(foreign) is None
    error = fault_error(foreign, where="x")
    assert type(error) is RemoteApplicationError
    assert error.type == TApplicationException.UNKNOWN


@pytest.mark.parametrize(
    ("type_", "cls"),
    [
        (TApplicationException.UNKNOWN_METHOD, UnknownMethod),
        (TApplicationException.PROTOCOL_ERROR, RemoteBadRequest),
        (TApplicationException.INTERNAL_ERROR, RemoteApplicationError),
        (TApplicationException.MISSING_RESULT, RemoteApplicationError),
    ],
)
def test_foreign_exceptions_map_by_standard_type(type_: int, cls: type[Exception]) -> None:
    error = fault_error(TApplicationException(type_, "Internal error"), where="x")
    assert type(error) is cls


def test_blame_says_who_is_at_fault() -> None:
    assert fault_error(fault_exception(FaultKind.BAD_REQUEST, "x"), where="").blame is (
        Blame.CALLER
    )
    assert fault_error(fault_exception(FaultKind.CRASHED, "x"), where="").blame is (Blame.BACKEND)
