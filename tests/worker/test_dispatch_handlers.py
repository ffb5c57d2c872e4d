"""How the worker finds, builds and understands a handler (issue 12, items 2 and 4).

- Declared exceptions from another copy of the IDL (a handler that called ``thriftpy2.load``
  itself, under another module name, or on a copy of the file at another path) are answered
  as the declared exception, not ``internal error``; ``offloop.load_idl`` gives the handler
  the worker's very module.
- Handlers are imported from the app directory (the current one by default), in the worker
  and in every child of a process pool.
- A handler that cannot be loaded raises one ``HandlerError`` line saying why and where.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from harness import ServerThread, worker_config
from thriftpy2.thrift import TApplicationException

import offloop
from offloop.codec.message import MessageCodec
from offloop.idl import load_idl, service_info
from offloop.worker.dispatch import Dispatcher, DispatcherFactory
from offloop.worker.handler_loading import HandlerError, load_handler

SHOP_IDL = """\
struct Item {
  1: required string sku,
  2: optional i32 count,
}

exception OutOfStock {
  1: string sku,
  2: i32 available,
}

exception Refused {
  1: string reason,
  2: Item item,
}

service Shop {
  Item take(1: string sku, 2: i32 count) throws (1: OutOfStock out, 2: Refused refused),
  void drop(1: string sku) throws (1: Refused refused),
  oneway void note(1: string text),
}
"""

#: A handler whose exceptions come from a copy of the IDL it loaded itself, the way a new user
#: would write it: ``thriftpy2.load`` on a file of its own, under a module name of its own.
FOREIGN_HANDLER = """\
import thriftpy2

mine = thriftpy2.load({path!r}, module_name="my_own_shop_thrift")


class Handler:
    def take(self, sku, count):
        if sku == "refuse":
            raise mine.Refused(reason="no", item=mine.Item(sku=sku, count=count))
        raise mine.OutOfStock(sku=sku, available=count - 1)

    def drop(self, sku):
        raise mine.Refused(reason="sticky")

    def note(self, text):
        pass
"""

#: The same handler, the documented way: the worker's own module.
SHARED_HANDLER = """\
import offloop

shop = offloop.load_idl({path!r})


class Handler:
    def take(self, sku, count):
        raise shop.OutOfStock(sku=sku, available=count - 1)

    def drop(self, sku):
        raise shop.Refused(reason="sticky")

    def note(self, text):
        pass
"""


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """The worker's IDL file, and a copy of it at another path (``copy/shop.thrift``)."""
    path = tmp_path / "shop.thrift"
    path.write_text(SHOP_IDL)
    (tmp_path / "copy").mkdir()
    shutil.copy(path, tmp_path / "copy" / "shop.thrift")
    return path


def _write_module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


def _call(dispatcher: Dispatcher, info: Any, method: str, **args: Any) -> tuple[str, Any]:
    """One call through ``dispatcher``: its outcome tag and its decoded reply body."""
    codec = MessageCodec("binary")
    m = info.methods[method]
    frame = codec.encode_call(m, 7, m.args_cls(**args))
    outcome, reply = dispatcher.call_one(frame)
    if reply is None:
        return outcome, None
    _, body = codec.decode_reply(reply, m)
    return outcome, body


def _dispatcher(shop: Path, handler: Any) -> tuple[Dispatcher, Any]:
    info = service_info(load_idl(shop), "Shop")
    return Dispatcher(info, handler, "binary"), info


@pytest.mark.parametrize("where", ["same file", "copy at another path"])
def test_declared_exceptions_of_another_copy_of_the_idl_are_answered_as_declared(
    shop: Path, where: str
) -> None:
    path = shop if where == "same file" else shop.parent / "copy" / "shop.thrift"
    mine = thriftpy2.load(str(path), module_name=f"foreign_{where.replace(' ', '_')}_thrift")
    assert mine.OutOfStock is not load_idl(shop).OutOfStock

    class Handler:
        def take(self, sku: str, count: int) -> Any:
            if sku == "refuse":
                raise mine.Refused(reason="no", item=mine.Item(sku=sku, count=count))
            raise mine.OutOfStock(sku=sku, available=count - 1)

        def drop(self, sku: str) -> None:
            raise mine.Refused(reason="sticky")

        def note(self, text: str) -> None:
            pass

    dispatcher, info = _dispatcher(shop, Handler())
    outcome, body = _call(dispatcher, info, "take", sku="tea", count=3)
    assert outcome == "exception"
    assert isinstance(body.out, load_idl(shop).OutOfStock)
    assert (body.out.sku, body.out.available) == ("tea", 2)
    # A nested struct of the foreign module goes out whole.
    outcome, body = _call(dispatcher, info, "take", sku="refuse", count=5)
    assert outcome == "exception"
    assert (body.refused.reason, body.refused.item.sku, body.refused.item.count) == (
        "no",
        "refuse",
        5,
    )
    outcome, body = _call(dispatcher, info, "drop", sku="x")
    assert (outcome, body.refused.reason) == ("exception", "sticky")


def test_an_exception_of_the_same_name_but_other_fields_is_not_declared(
    shop: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.thrift"
    other.write_text("exception OutOfStock {\n  1: string sku,\n  2: string available,\n}\n")
    stranger = thriftpy2.load(str(other), module_name="stranger_thrift")

    class Handler:
        def take(self, sku: str, count: int) -> Any:
            raise stranger.OutOfStock(sku=sku, available="none")

        def drop(self, sku: str) -> None:
            pass

        def note(self, text: str) -> None:
            pass

    dispatcher, info = _dispatcher(shop, Handler())
    outcome, body = _call(dispatcher, info, "take", sku="tea", count=3)
    assert outcome == "error"
    assert isinstance(body, TApplicationException)
    assert body.type == TApplicationException.INTERNAL_ERROR
    assert "OutOfStock" in body.message


def test_load_idl_is_one_module_per_file(shop: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.thrift"
    link.symlink_to(shop)
    module = offloop.load_idl(shop)
    assert offloop.load_idl(str(shop)) is module
    assert offloop.load_idl(link) is module
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert offloop.load_idl("shop.thrift") is module
    finally:
        os.chdir(cwd)
    assert offloop.load_idl(tmp_path / "copy" / "shop.thrift") is not module


@pytest.mark.parametrize("pool", ["thread", "process"])
@pytest.mark.parametrize("style", ["foreign", "shared"])
def test_a_handler_module_in_the_app_dir_raises_declared_exceptions(
    shop: Path, tmp_path: Path, pool: str, style: str
) -> None:
    """The whole path, over both pools: a handler module found only through ``app_dir``
    (not on ``sys.path``), raising declared exceptions from its own copy of the IDL or from
    ``offloop.load_idl``; the caller gets the declared exception."""
    app = tmp_path / "app"
    app.mkdir()
    module = f"shop_{style}_{pool}"
    if style == "foreign":
        source = FOREIGN_HANDLER.format(path=str(tmp_path / "copy" / "shop.thrift"))
    else:
        source = SHARED_HANDLER.format(path=str(shop))
    _write_module(app, module, source)
    config = worker_config(
        pool, idl=str(shop), service="Shop", handler=f"{module}:Handler", app_dir=str(app)
    )
    shop_module = load_idl(shop)
    server = ServerThread(config).start()
    try:
        client = thriftpy2.rpc.make_client(
            shop_module.Shop,
            "127.0.0.1",
            server.port,
            trans_factory=thriftpy2.transport.TFramedTransportFactory(),
            timeout=10_000,
        )
        try:
            with pytest.raises(shop_module.OutOfStock) as info:
                client.take("tea", 3)
            assert (info.value.sku, info.value.available) == ("tea", 2)
            with pytest.raises(shop_module.Refused) as refused:
                client.drop("x")
            assert refused.value.reason == "sticky"
        finally:
            client.close()
    finally:
        server.stop()


# -- how a handler is found and built --------------------------------------------------------


def test_load_handler_builds_a_class_and_uses_anything_else_as_is(tmp_path: Path) -> None:
    _write_module(
        tmp_path,
        "kinds_of_handler",
        """\
        class Handler:
            built = 0

            def __init__(self):
                Handler.built += 1

            class Inner:
                pass

        instance = Handler()
        """,
    )
    made = load_handler("kinds_of_handler:Handler", str(tmp_path))
    assert type(made).__name__ == "Handler" and type(made).built == 2
    same = load_handler("kinds_of_handler:instance", str(tmp_path))
    assert type(same).built == 2  # used as it is: not called, not copied
    assert same is load_handler("kinds_of_handler:instance", str(tmp_path))
    inner = load_handler("kinds_of_handler:Handler.Inner", str(tmp_path))
    assert type(inner).__qualname__ == "Handler.Inner"
    with pytest.raises(HandlerError) as info:
        load_handler("kinds_of_handler:Handler.Nope", str(tmp_path))
    assert str(info.value) == (
        "cannot load handler 'kinds_of_handler:Handler.Nope': 'kinds_of_handler:Handler' has "
        "no attribute 'Nope'"
    )


@pytest.mark.parametrize(
    ("source", "attr", "expected"),
    [
        (
            "class Handler:\n    def ping(self):\n        return (\n",
            "Handler",
            "cannot load handler '{m}:Handler': SyntaxError at {m}.py:3: '(' was never closed",
        ),
        (
            "import no_such_module_anywhere\n",
            "Handler",
            "cannot load handler '{m}:Handler': ModuleNotFoundError at {m}.py:1: "
            "No module named 'no_such_module_anywhere'",
        ),
        (
            "class Handler:\n    pass\n",
            "Missing",
            "cannot load handler '{m}:Missing': module '{m}' has no attribute 'Missing'",
        ),
        (
            "class Handler:\n    def __init__(self):\n        raise RuntimeError('no model')\n",
            "Handler",
            "cannot load handler '{m}:Handler': RuntimeError at {m}.py:3 in __init__: no model",
        ),
        (
            "class Handler:\n    def __init__(self, model):\n        pass\n",
            "Handler",
            "cannot load handler '{m}:Handler': TypeError: Handler.__init__() missing 1 "
            "required positional argument: 'model'",
        ),
    ],
    ids=["syntax error", "import error", "missing attribute", "init raises", "init arguments"],
)
def test_a_handler_that_cannot_be_loaded_says_why_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    attr: str,
    expected: str,
) -> None:
    name = f"broken_{abs(hash((source, attr))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)  # paths are shown relative to the current directory
    with pytest.raises(HandlerError) as info:
        load_handler(f"{name}:{attr}", str(tmp_path))
    assert str(info.value) == expected.format(m=name)
    assert isinstance(info.value, ImportError)  # what callers caught before


def test_a_missing_module_names_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(HandlerError) as info:
        load_handler("nowhere_to_be_found:Handler", str(tmp_path))
    assert str(info.value) == (
        "cannot load handler 'nowhere_to_be_found:Handler': ModuleNotFoundError: No module "
        f"named 'nowhere_to_be_found' (not in {tmp_path} nor on the import path; --app-dir "
        "says where to look)"
    )


def test_a_handler_without_the_services_methods_is_a_handler_error(
    shop: Path, tmp_path: Path
) -> None:
    _write_module(tmp_path, "half_a_shop", "class Handler:\n    def take(self, sku, count): ...\n")
    factory = DispatcherFactory(str(shop), "Shop", "half_a_shop:Handler", app_dir=str(tmp_path))
    with pytest.raises(HandlerError, match="lacks methods of service Shop: drop, note"):
        factory()


def test_the_factory_makes_the_app_dir_absolute(tmp_path: Path, shop: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        factory = DispatcherFactory(str(shop), "Shop", "x:Handler", app_dir=".")
    finally:
        os.chdir(cwd)
    assert factory.app_dir == str(tmp_path)
    assert DispatcherFactory(str(shop), "Shop", "x:Handler").app_dir == ""
