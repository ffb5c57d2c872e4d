"""Flags, environment and config file into config objects: precedence, errors, completeness.

Everything here parses in-process (:func:`offloop.cli.parse`, or :func:`offloop.cli.main` for
the messages and exit statuses); nothing is served. Every test starts with no ``OFFLOOP_*``
variable set, whatever the environment that runs the suite holds.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest

from offloop import __version__
from offloop.app import build_gateway
from offloop.cli import Invocation, main, parse
from offloop.demo.textlab import IDL_PATH
from offloop.gateway.config import GatewayConfig
from offloop.worker.config import WorkerConfig

IDL = str(IDL_PATH)
#: The required settings of each command, as flags.
GATEWAY_BASE = {"--idl": IDL, "--backend": "127.0.0.1:9"}
WORKER_BASE = {"--idl": IDL, "--service": "TextLab", "--handler": "offloop.demo.textlab:Handler"}
GATEWAY = ["gateway", *(arg for pair in GATEWAY_BASE.items() for arg in pair)]
WORKER = ["worker", *(arg for pair in WORKER_BASE.items() for arg in pair)]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OFFLOOP_"):
            monkeypatch.delenv(name)


def toml_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "offloop.toml"
    path.write_text(text)
    return str(path)


def errors_of(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``main(argv)``, expect status 2, a usage line and one error line; return that line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"usage: offloop {argv[0]} ")
    return lines[1]


# -- precedence ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layered:
    """One setting given by more and more sources, each of which must win over the last.

    Attributes:
        argv: the command line before the setting's flag.
        table: its TOML table; key: its key there; file: its TOML value, as TOML text.
        env: its environment variable and value.
        flag: its flag and value, as arguments.
        read: reads it off the invocation.
        expect: what ``read`` gives with the default, then file, file+env, file+env+flag.
    """

    argv: list[str]
    table: str
    key: str
    file: str
    env: tuple[str, str]
    flag: list[str]
    read: Callable[[Invocation], Any]
    expect: tuple[Any, Any, Any, Any]


def _gw(inv: Invocation) -> GatewayConfig:
    assert inv.gateway is not None
    return inv.gateway


def _wk(inv: Invocation) -> WorkerConfig:
    assert inv.worker is not None
    return inv.worker


LAYERED = {
    "gateway --protocol (client)": Layered(
        GATEWAY,
        "gateway.client",
        "protocol",
        '"compact"',
        ("OFFLOOP_PROTOCOL", "binary"),
        ["--protocol", "compact"],
        lambda i: _gw(i).client.protocol,
        ("binary", "compact", "binary", "compact"),
    ),
    "gateway --no-watchdog": Layered(
        GATEWAY,
        "gateway.watchdog",
        "enabled",
        "false",
        ("OFFLOOP_WATCHDOG", "true"),
        ["--no-watchdog"],
        lambda i: _gw(i).watchdog.enabled,
        (True, False, True, False),
    ),
    "gateway --max-body (front)": Layered(
        GATEWAY,
        "gateway.front",
        "max_body",
        "1000",
        ("OFFLOOP_MAX_BODY", "2000"),
        ["--max-body", "3000"],
        lambda i: _gw(i).front.max_body,
        (1024 * 1024, 1000, 2000, 3000),
    ),
    "gateway --port (listen)": Layered(
        GATEWAY,
        "gateway.listen",
        "port",
        "8001",
        ("OFFLOOP_PORT", "8002"),
        ["--port", "8003"],
        lambda i: _gw(i).listen.port,
        (8080, 8001, 8002, 8003),
    ),
    "gateway --health-probe-max (prefix)": Layered(
        GATEWAY,
        "gateway.health",
        "probe_max",
        "2",
        ("OFFLOOP_HEALTH_PROBE_MAX", "3.5"),
        ["--health-probe-max", "4"],
        lambda i: _gw(i).health.probe_max,
        (1.0, 2.0, 3.5, 4.0),
    ),
    "gateway --exception-status (mapping)": Layered(
        GATEWAY,
        "gateway",
        "exception_status",
        '["A=404"]',
        ("OFFLOOP_EXCEPTION_STATUS", "B=409, C=410"),
        ["--exception-status", "D=500"],
        lambda i: dict(_gw(i).exception_status),
        ({}, {"A": 404}, {"B": 409, "C": 410}, {"D": 500}),
    ),
    "worker --admin-port": Layered(
        WORKER,
        "worker.admin",
        "port",
        "9101",
        ("OFFLOOP_ADMIN_PORT", "9102"),
        ["--admin-port", "9103"],
        lambda i: _wk(i).admin.port,
        (None, 9101, 9102, 9103),
    ),
    "worker --pool": Layered(
        WORKER,
        "worker.pool",
        "kind",
        '"thread"',
        ("OFFLOOP_POOL", "process"),
        ["--pool", "thread"],
        lambda i: _wk(i).pool.kind,
        ("process", "thread", "process", "thread"),
    ),
    "worker --port (listen)": Layered(
        WORKER,
        "worker.listen",
        "port",
        "9001",
        ("OFFLOOP_PORT", "9002"),
        ["--port", "9003"],
        lambda i: _wk(i).listen.port,
        (9090, 9001, 9002, 9003),
    ),
    "worker --no-batching": Layered(
        WORKER,
        "worker.pool",
        "batching",
        "false",
        ("OFFLOOP_BATCHING", "yes"),
        ["--no-batching"],
        lambda i: _wk(i).pool.batching,
        (True, False, True, False),
    ),
    "up --worker-port": Layered(
        ["up"],
        "up",
        "worker_port",
        "9191",
        ("OFFLOOP_WORKER_PORT", "9192"),
        ["--worker-port", "9193"],
        lambda i: (_wk(i).listen.port, _gw(i).backends["*"][0][1]),
        ((9090, 9090), (9191, 9191), (9192, 9192), (9193, 9193)),
    ),
    "up --max-body (front)": Layered(
        ["up"],
        "up.front",
        "max_body",
        "1000",
        ("OFFLOOP_MAX_BODY", "2000"),
        ["--max-body", "3000"],
        lambda i: _gw(i).front.max_body,
        (1024 * 1024, 1000, 2000, 3000),
    ),
}


@pytest.mark.parametrize("case", LAYERED.values(), ids=LAYERED.keys())
def test_flag_beats_environment_beats_file_beats_default(case: Layered, tmp_path: Path) -> None:
    path = toml_file(tmp_path, f"[{case.table}]\n{case.key} = {case.file}\n")
    env = dict([case.env])
    assert case.read(parse(case.argv, environ={})) == case.expect[0]
    assert case.read(parse([*case.argv, "--config", path], environ={})) == case.expect[1]
    assert case.read(parse([*case.argv, "--config", path], environ=env)) == case.expect[2]
    argv = [*case.argv, "--config", path, *case.flag]
    assert case.read(parse(argv, environ=env)) == case.expect[3]


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = toml_file(tmp_path, "[gateway.front]\nmax_body = 77\n")
    config = parse(GATEWAY, environ={"OFFLOOP_CONFIG": path}).gateway
    assert config is not None and config.front.max_body == 77


def test_required_settings_may_come_from_the_file(tmp_path: Path) -> None:
    path = toml_file(
        tmp_path,
        f'[gateway]\nidl = "{IDL}"\nbackends = ["TextLab=10.0.0.1:9090", "10.0.0.2:9091"]\n'
        '[worker]\nidl = "x.thrift"\n',
    )
    config = parse(["gateway", "--config", path], environ={}).gateway
    assert config is not None
    assert config.idl == IDL
    assert dict(config.backends) == {"TextLab": (("10.0.0.1", 9090),), "*": (("10.0.0.2", 9091),)}


def test_repeated_flags_and_comma_separated_variables() -> None:
    argv = [*GATEWAY, "--service", "TextLab", "--idempotent", "TextLab.ping"]
    config = _gw(parse([*argv, "--idempotent", "TextLab.sleep"], environ={}))
    assert config.services == ("TextLab",)
    assert config.idempotent == frozenset({"TextLab.ping", "TextLab.sleep"})
    env = {"OFFLOOP_BACKEND": "A=h1:1, h2:2,h3:3"}
    config = _gw(parse(["gateway", "--idl", IDL], environ=env))
    assert dict(config.backends) == {"A": (("h1", 1),), "*": (("h2", 2), ("h3", 3))}


def test_a_section_keeps_the_defaults_of_its_parent() -> None:
    """The gateway's listen section defaults to port 8080, not ListenConfig's 0; setting its
    host alone must keep that port."""
    config = _gw(parse([*GATEWAY, "--host", "0.0.0.0"], environ={}))
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8080)
    worker = _wk(parse([*WORKER, "--port", "7000"], environ={}))
    assert (worker.listen.port, worker.listen.backlog) == (7000, 1024)


def test_the_gateway_built_from_protocol_compact_speaks_compact() -> None:
    gateway = build_gateway(_gw(parse([*GATEWAY, "--protocol", "compact"], environ={})))
    assert gateway.config.client.protocol == "compact"


def test_replacing_the_pool_of_a_parsed_config_changes_the_derived_queue_bound() -> None:
    config = _wk(parse([*WORKER, "--workers", "2"], environ={}))
    assert config.max_queued == 8
    bigger = dataclasses.replace(config, pool=dataclasses.replace(config.pool, workers=5))
    assert (bigger.workers, bigger.max_queued) == (5, 20)
    assert _wk(parse([*WORKER, "--workers", "2", "--max-queued", "3"], environ={})).max_queued == 3


def test_up_fixes_the_idl_and_the_backend_and_shares_the_grace() -> None:
    inv = parse(["up", "--workers", "2", "--grace", "3", "--port", "8123"], environ={})
    gateway, worker = _gw(inv), _wk(inv)
    assert gateway.idl == worker.idl == IDL
    assert dict(gateway.backends) == {"*": (("127.0.0.1", 9090),)}
    assert (gateway.listen.port, worker.listen.port, worker.pool.workers) == (8123, 9090, 2)
    assert gateway.grace == worker.grace == 3.0


# -- every field has a flag -------------------------------------------------------------------

#: Fields whose flag is not named after them by the rule, and how their values are written.
SPECIAL_FLAGS = {"backends": "backend", "services": "service"}


def leaves(
    cls: type[Any], prefix: str = "", path: tuple[str, ...] = (), parent: Any = None
) -> Iterator[tuple[tuple[str, ...], str, Any, Any]]:
    """(path, flag, type, default) of every leaf field of a config tree, walked here, apart
    from the CLI's own walk, by the naming rule of docs/configuration.md."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if parent is not None:
            default: Any = getattr(parent, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if dataclasses.is_dataclass(hints[f.name]):
            inner = prefix + f.metadata.get("prefix", "")
            yield from leaves(hints[f.name], inner, (*path, f.name), default)
        else:
            name = SPECIAL_FLAGS.get(f.name) or f.metadata.get("flag", f.name.replace("_", "-"))
            yield (*path, f.name), prefix + name, hints[f.name], default


def sample(path: tuple[str, ...], flag: str, kind: Any, default: Any) -> tuple[list[str], Any]:
    """Arguments that set the field to a valid value other than its default, and that value."""
    option = f"--{flag}"
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if path == ("backends",):
        return [option, "TextLab=10.0.0.9:9999"], {"TextLab": (("10.0.0.9", 9999),)}
    if path == ("handler",):
        return [option, "pkg.mod:Thing"], "pkg.mod:Thing"
    # Fields whose values have a form of their own, or that need another field set with them.
    if path == ("front", "root_path"):
        return [option, "/api"], "/api"
    jwt_needs = ["--auth-issuer", "https://issuer.example", "--auth-audience", "offloop"]
    if path == ("auth", "jwt_key_file"):
        return [option, "keys.pem", *jwt_needs], "keys.pem"
    if path == ("auth", "jwks_url"):
        url = "https://issuer.example/jwks.json"
        return [option, url, *jwt_needs], url
    if path == ("auth", "algorithms"):
        return [option, "ES256", option, "EdDSA"], ("ES256", "EdDSA")
    if path == ("auth", "scopes"):
        return [option, "read=TextLab.ping"], ("read=TextLab.ping",)
    if path == ("cors", "origins"):
        return [option, "https://app.example"], ("https://app.example",)
    if kind is bool:
        return [option if not default else f"--no-{flag}"], not default
    if origin is Literal:
        other = next(a for a in args if a != default)
        return [option, other], other
    if kind == int | None:
        return [option, "1"], 1
    if kind == float | None:
        return [option, "0.01"], 0.01
    if kind == str | None:
        return [option, "value"], "value"
    if kind is int:
        return [option, str(default + 1)], default + 1
    if kind is float:
        return [option, str(default / 2)], default / 2
    if kind is str:
        value = ("value" if default is dataclasses.MISSING else default) + "x"
        return [option, value], value
    if kind == tuple[str, ...]:
        return [option, "TextLab", option, "Other"], ("TextLab", "Other")
    if kind == frozenset[str]:
        return [option, "TextLab.ping"], frozenset({"TextLab.ping"})
    if origin is Mapping and args == (str, int):
        return [option, "Oops=418"], {"Oops": 418}
    if origin is Mapping and args == (str, str):  # the worker's services: --service N=H
        return [option, "TextLab", option, "Other=pkg.mod:Other"], {"Other": "pkg.mod:Other"}
    pytest.fail(f"no sample value for {'.'.join(path)}: {kind!r} (teach the CLI and this test)")


def leaf_cases() -> list[Any]:
    cases = []
    for command, root, base in (
        ("gateway", GatewayConfig, GATEWAY_BASE),
        ("worker", WorkerConfig, WORKER_BASE),
    ):
        for path, flag, kind, default in leaves(root):
            cases.append(pytest.param(command, base, path, flag, kind, default, id=".".join(path)))
    return cases


@pytest.mark.parametrize(("command", "base", "path", "flag", "kind", "default"), leaf_cases())
def test_every_leaf_field_is_reachable_by_a_flag(
    command: str,
    base: dict[str, str],
    path: tuple[str, ...],
    flag: str,
    kind: Any,
    default: Any,
) -> None:
    args, expected = sample(path, flag, kind, default)
    required = [arg for k, v in base.items() if k != f"--{flag}" for arg in (k, v)]
    inv = parse([command, *required, *args], environ={})
    value: Any = inv.gateway if command == "gateway" else inv.worker
    for name in path:
        value = getattr(value, name)
    assert value == expected


# -- errors: one line naming the source and the key ---------------------------------------


def test_bad_flag_value(capsys: pytest.CaptureFixture[str]) -> None:
    line = errors_of(capsys, [*GATEWAY, "--max-body", "x"])
    assert line == "offloop gateway: --max-body: expected an integer, got 'x'"


def test_bad_environment_value(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOOP_MAX_BODY", "x")
    line = errors_of(capsys, GATEWAY)
    assert line == "offloop gateway: environment OFFLOOP_MAX_BODY: expected an integer, got 'x'"


def test_bad_file_value(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[gateway.front]\nmax_body = "x"\n')
    line = errors_of(capsys, [*GATEWAY, "--config", path])
    assert line == f"offloop gateway: {path} [gateway.front] max_body: expected an integer, got 'x'"


def test_a_bad_value_is_an_error_even_where_a_flag_overrides_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOOP_WATCHDOG", "maybe")
    line = errors_of(capsys, [*GATEWAY, "--watchdog"])
    expected = "environment OFFLOOP_WATCHDOG: expected true or false, got 'maybe'"
    assert line == f"offloop gateway: {expected}"


@pytest.mark.parametrize(
    ("argv", "env", "file", "expected"),
    [
        (
            [*GATEWAY, "--max-body", "0"],
            {},
            "",
            "--max-body: max_body must be between 1 byte and 1 GiB",
        ),
        (
            WORKER,
            {"OFFLOOP_NICE": "25"},
            "",
            "environment OFFLOOP_NICE: nice must be between 0 and 19",
        ),
        (
            WORKER,
            {},
            "[worker.pool]\nnice = 25\n",
            "{path} [worker.pool] nice: nice must be between 0 and 19",
        ),
        (
            [*WORKER, "--nice", "3"],
            {"OFFLOOP_WORKERS": "-1"},
            "",
            "environment OFFLOOP_WORKERS: workers must be >= 0 (0: one per core)",
        ),
        (
            [*GATEWAY, "--grace", "-1"],
            {},
            "",
            "--grace: grace must be >= 0",
        ),
        (
            [*GATEWAY, "--health-probe-min", "3"],
            {"OFFLOOP_HEALTH_PROBE_MAX": "2"},
            "",
            "--health-probe-min, environment OFFLOOP_HEALTH_PROBE_MAX: "
            "need 0 < probe_min <= probe_max",
        ),
        (
            ["up", "--worker-port", "0"],
            {},
            "",
            "--worker-port: worker_port must be between 1 and 65535, not 0",
        ),
        (
            [*GATEWAY, "--exception-status", "Oops=200"],
            {},
            "",
            "--exception-status: status for Oops must be a 4xx or 5xx code, not 200",
        ),
        (
            [*GATEWAY, "--actors", "0"],
            {},
            "",
            "--actors: actors must be at least 1",
        ),
        (
            ["gateway", "--idl", IDL],
            {},
            "[gateway]\nbackends = []\n",
            "{path} [gateway] backends: at least one backend is needed (--backend host:port)",
        ),
    ],
    ids=[
        "flag",
        "environment",
        "file",
        "one of two",
        "root",
        "a rule between two",
        "up",
        "mapping",
        "not named by the message",
        "required",
    ],
)
def test_a_dataclass_refusing_a_value_is_blamed_on_its_source(
    argv: list[str],
    env: dict[str, str],
    file: str,
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = toml_file(tmp_path, file)
    line = errors_of(capsys, [*argv, "--config", path])
    assert line == f"offloop {argv[0]}: " + expected.format(path=path)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--protocol", "json"], "--protocol: expected one of binary, compact, got 'json'"),
        (["--backend", "nope"],
         "--backend: backend must look like [Service=]TARGET, got 'nope': 'nope' has no port "
         "(expected host:port)"),
        (["--exception-status", "Oops"], "--exception-status: expected TYPE=STATUS, got 'Oops'"),
        (["--timeout", "soon"], "--timeout: expected a number, got 'soon'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--log-level", "loud"], "--log-level: expected one of DEBUG, INFO, WARNING, ERROR, "
         "CRITICAL, got 'loud'"),
        (["--config", "/nonexistent/offloop.toml"],
         "--config: /nonexistent/offloop.toml: No such file or directory"),
    ],
)  # fmt: skip
def test_bad_gateway_flags(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert errors_of(capsys, [*GATEWAY, *argv]) == f"offloop gateway: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[gateway.front]\nmax_bodyy = 1\n", "{path} [gateway.front] max_bodyy: unknown key"),
        ("[gateway]\ncolour = 1\n", "{path} [gateway] colour: unknown key"),
        ("[gateway]\nfront = 1\n", "{path} [gateway] front: expected a table ([gateway.front])"),
        ("[gatway]\n", "{path} gatway: unknown key"),
        ("[up]\nidl = 'x.thrift'\n", "{path} [up] idl: unknown key"),
        ('[gateway]\nbackends = "h:1"\n', "{path} [gateway] backends: expected a list of strings"),
        ("[gateway\n", "--config: {path}: Expected ']'"),
        ("log_level = 3\n", "{path} log_level: expected one of DEBUG"),
    ],
    ids=["key", "top key", "table", "command", "fixed by up", "list", "syntax", "log level"],
)
def test_bad_config_files(
    text: str, expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = toml_file(tmp_path, text)
    command = "up" if text.startswith("[up]") else "gateway"
    argv = [*(GATEWAY if command == "gateway" else ["up"]), "--config", path]
    line = errors_of(capsys, argv)
    assert line.startswith(f"offloop {command}: " + expected.format(path=path)), line


def test_a_missing_required_setting(capsys: pytest.CaptureFixture[str]) -> None:
    line = errors_of(capsys, ["worker", "--idl", IDL, "--service", "TextLab"])
    assert line == "offloop worker: the following arguments are required: --handler"


def test_a_handler_of_the_wrong_form_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    line = errors_of(capsys, ["worker", "--idl", IDL, "--service", "TextLab", "--handler", "mod"])
    assert line == "offloop worker: --handler: expected package.module:Name, got 'mod'"


def test_a_gateway_config_error_found_when_building_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = errors_of(capsys, ["gateway", "--idl", IDL, "--backend", "Nope=127.0.0.1:9"])
    assert line.startswith("offloop gateway: --backend names no service of")


# -- the command itself -----------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"offloop {__version__}\n"


@pytest.mark.parametrize(
    ("before", "after", "env", "expected"),
    [
        ([], [], {}, "INFO"),
        (["--log-level", "debug"], [], {}, "DEBUG"),
        ([], ["--log-level", "warning"], {}, "WARNING"),
        (["--log-level", "debug"], ["--log-level", "error"], {}, "ERROR"),
        ([], [], {"OFFLOOP_LOG_LEVEL": "critical"}, "CRITICAL"),
        ([], ["--log-level", "debug"], {"OFFLOOP_LOG_LEVEL": "critical"}, "DEBUG"),
    ],
)
def test_log_level_before_or_after_the_command(
    before: list[str], after: list[str], env: dict[str, str], expected: str
) -> None:
    assert parse([*before, *GATEWAY, *after], environ=env).log_level == expected


def test_help_documents_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "OFFLOOP_LOG_LEVEL" in out and "OFFLOOP_CONFIG" in out
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    out = capsys.readouterr().out
    assert "--admin-port" in out and "OFFLOOP_PORT" in out and "[worker.pool]" in out
