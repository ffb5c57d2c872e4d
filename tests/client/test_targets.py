"""Backend targets: parsing and printing, without a network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offloop.client.targets import DnsTarget, StaticTarget, as_target, parse_target
from offloop.gateway.config import parse_backend


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:9090", StaticTarget("10.0.0.1", 9090)),
        ("worker:9090", StaticTarget("worker", 9090)),
        ("[::1]:9090", StaticTarget("::1", 9090)),
        ("dns:///worker:9090", DnsTarget("worker", 9090)),
        ("DNS:///worker.ns.svc:9090", DnsTarget("worker.ns.svc", 9090)),
        ("dns://127.0.0.1:5353/w.test:9090", DnsTarget("w.test", 9090, ("127.0.0.1", 5353))),
        ("dns://10.0.0.53/w.test:9090", DnsTarget("w.test", 9090, ("10.0.0.53", 53))),
        ("dns://[::1]:5353/w:1", DnsTarget("w", 1, ("::1", 5353))),
        ("dns://[::1]/w:1", DnsTarget("w", 1, ("::1", 53))),
        ("dns+srv:///_thrift._tcp.worker", DnsTarget("_thrift._tcp.worker", None, srv=True)),
        (
            "dns+srv://127.0.0.1:5353/_thrift._tcp.w.test",
            DnsTarget("_thrift._tcp.w.test", None, ("127.0.0.1", 5353), srv=True),
        ),
    ],
)
def test_targets_in_grpc_naming_are_parsed(text: str, expected: object) -> None:
    target = parse_target(text)
    assert target == expected
    assert parse_target(str(target)) == target  # printed as it is read


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("worker", "'worker' has no port"),
        ("dns:///worker", "'worker' has no port"),
        ("http://worker:80", "unknown scheme 'http'"),
        ("dns://ns.example/w:1", "DNS server 'ns.example' must be an IP address"),
        ("dns://1.2.3.4", "no name after"),
        ("dns+srv:///_thrift._tcp.w:9090", "a dns+srv name has no port"),
        ("dns:///w:0", "port '0'"),
        ("dns:///w:http", "port 'http'"),
        ("dns:///:9090", "':9090' has no host"),
        ("dns:///a..b:9090", "'a..b' is not a DNS name"),
        ("dns://127.0.0.1:99999/w:1", "port '99999'"),
        ("a/b:1", "a target is host:port"),
    ],
)
def test_a_bad_target_is_refused_naming_the_bad_part(text: str, names: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_target(text)
    assert names in str(info.value)


def test_sources_say_static_or_the_dns_target() -> None:
    assert parse_target("h:1").source == "static"
    assert parse_target("dns:///w:1").source == "dns:///w:1"
    assert parse_target("dns+srv://127.0.0.1:53/_t._tcp.w").source == (
        "dns+srv://127.0.0.1:53/_t._tcp.w"
    )


def test_a_plain_pair_is_a_static_target() -> None:
    assert as_target(("h", 1)) == StaticTarget("h", 1) == ("h", 1)
    assert isinstance(as_target(("h", 1)), StaticTarget)
    dns = DnsTarget("w", 1)
    assert as_target(dns) is dns


def test_a_dns_target_needs_a_port_and_an_srv_target_none() -> None:
    with pytest.raises(ValueError):
        DnsTarget("w", None)
    with pytest.raises(ValueError):
        DnsTarget("w", 1, srv=True)


def test_parse_backend_takes_an_optional_service() -> None:
    assert parse_backend("TextLab=dns:///w:9090") == ("TextLab", DnsTarget("w", 9090))
    assert parse_backend("dns:///w:9090") == (None, DnsTarget("w", 9090))
    assert parse_backend("S=10.0.0.1:1") == ("S", StaticTarget("10.0.0.1", 1))
    with pytest.raises(ValueError, match=r"\[Service=\]TARGET, got 'S=x': 'x' has no port"):
        parse_backend("S=x")


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        target = parse_target(text)
    except ValueError:
        return
    assert parse_target(str(target)) == target


def test_the_backend_flag_and_toml_key_take_targets() -> None:
    from offloop.cli.commands import Backends

    table = Backends().from_items(
        ["10.0.0.1:9090", "TextLab=dns:///w:9090", "dns+srv://127.0.0.1:5353/_thrift._tcp.w"]
    )
    assert table == {
        "*": (
            StaticTarget("10.0.0.1", 9090),
            DnsTarget("_thrift._tcp.w", None, ("127.0.0.1", 5353), srv=True),
        ),
        "TextLab": (DnsTarget("w", 9090),),
    }
    assert Backends().from_toml(["dns:///w:1"]) == {"*": (DnsTarget("w", 1),)}
    with pytest.raises(ValueError, match="unknown scheme 'http'"):
        Backends().from_items(["http://w:1"])
