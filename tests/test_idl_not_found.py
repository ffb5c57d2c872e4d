"""offloop.load_idl on a missing file: the error says which absolute path it tried.

A relative path is read from the current directory, which is not the handler's folder when
the worker starts elsewhere (``--app-dir``, a service manager): the message must show where
it looked, and what it was given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from offloop import load_idl
from offloop.idl import IdlError


def test_a_relative_path_is_reported_as_the_absolute_path_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IdlError) as raised:
        load_idl("library.thrift")
    assert str(raised.value) == (
        f"IDL file not found: {tmp_path / 'library.thrift'} (given as 'library.thrift')"
    )


def test_an_absolute_path_is_reported_as_it_is(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "shop.thrift"
    with pytest.raises(IdlError) as raised:
        load_idl(missing)
    assert str(raised.value) == f"IDL file not found: {missing}"


def test_a_path_next_to_a_file_loads_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What docs/your-service.md tells a handler to do: ``Path(__file__).with_name(...)``."""
    shop = Path(__file__).resolve().parents[1] / "docs" / "examples" / "shop" / "shop.thrift"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IdlError, match="IDL file not found"):
        load_idl("shop.thrift")  # not in the current directory
    module = load_idl(shop.with_name("shop.thrift"))
    assert module.Storage.FRIDGE == 2
    assert load_idl(str(shop)) is module  # one module per file, whatever the spelling
